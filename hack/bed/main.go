// Command bed runs the project's test bed (etcd, kube-apiserver,
// kube-controller-manager, cert-manager controller and webhook, a CA
// ClusterIssuer) on loopback until interrupted, and prints how to reach it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	bed, err := testbed.Start(startCtx, testbed.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("test bed up in %s\n  export KUBECONFIG=%s\n  ClusterIssuer: %s\n  logs: %s/*.log\nCtrl-C stops it.\n",
		time.Since(start).Round(time.Millisecond), bed.AdminKubeconfig, bed.Issuer, bed.Dir)
	<-ctx.Done()
	bed.Stop()
}
