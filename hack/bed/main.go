// Command bed runs the product on the project's test bed until interrupted:
// a control plane (etcd, kube-apiserver, kube-controller-manager,
// cert-manager) and a real node (containerd, kubelet, kube-scheduler) on
// loopback, overlays/example applied on it, and an example app whose pods
// each read their own SVID. It prints what each pod got and how to look for
// oneself; Ctrl-C stops everything and leaves nothing behind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

func main() {
	replicas := flag.Int("replicas", 2, "pods of the example app")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, stop, int32(*replicas)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, stop func(), replicas int32) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("make up runs a kubelet and containerd: run it as root")
	}
	start := time.Now()
	step := func(what string) { fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), what) }
	step("starting etcd, kube-apiserver, kube-controller-manager, cert-manager, containerd, the kubelet and kube-scheduler on loopback")
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	bed, err := testbed.Start(startCtx, testbed.Options{Node: true})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("stopping: pods, kubelet, containerd, control plane; unmounting and removing", bed.Dir)
		bed.Stop()
	}()
	step("applying overlays/example (server-side, with the bed's component) and waiting for the driver and the approver")
	product, err := bed.InstallExample(startCtx)
	if err != nil {
		bed.DumpLogs(os.Stderr)
		return err
	}
	step(fmt.Sprintf("starting the example app: a Deployment of %d pods in namespace demo, each with an SVID volume", replicas))
	ns, err := bed.CreateWorkloadNamespace(startCtx, "demo", false)
	if err != nil {
		return err
	}
	pods, err := bed.CreateDeployment(startCtx, ns, "example-app", replicas, bed.Node.SVIDPodSpec(nil, nil))
	if err != nil {
		return err
	}
	step("ready")
	fmt.Println()
	kubectl := fmt.Sprintf("%s --kubeconfig %s", bed.Binary("kubectl"), bed.AdminKubeconfig)
	for _, p := range pods {
		crt, err := bed.Exec(startCtx, ns, p.Name, "app", "/bin/cat", testbed.SVIDMountPath+"/tls.crt")
		if err != nil {
			return err
		}
		id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, p.Spec.ServiceAccountName)
		leaf, err := testbed.VerifySVIDTo(product.CAPEM, []byte(crt), id)
		if err != nil {
			return fmt.Errorf("pod %s: %w", p.Name, err)
		}
		fmt.Printf("pod %s/%s\n  SPIFFE ID  %s\n  issuer     %s (ClusterIssuer %s)\n  expires    %s (renewed before)\n  files      %s/{tls.crt,tls.key,ca.crt} in the container\n\n",
			ns, p.Name, leaf.URIs[0], leaf.Issuer.CommonName, testbed.ExampleIssuer, leaf.NotAfter.Format(time.RFC3339), testbed.SVIDMountPath)
	}
	fmt.Printf("Look for yourself:\n  export KUBECONFIG=%s\n  %s -n %s exec deploy/example-app -- cat %s/tls.crt\n  %s get pods -A -o wide\n",
		bed.AdminKubeconfig, kubectl, ns, testbed.SVIDMountPath, kubectl)
	fmt.Printf("The rendered manifests: %s\nLogs: %s/*.log (pods: %s)\nSVIDs last %s; Ctrl-C stops everything.\n",
		filepath.Join(product.Kustomization, "rendered.yaml"), bed.Dir, filepath.Join(bed.Node.Dir, "pod-logs"), testbed.ExampleCertificateDuration)
	<-ctx.Done()
	stop() // a second Ctrl-C kills at once
	return nil
}
