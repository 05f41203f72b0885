// Package csi is the driver's CSI Identity and Node services: it validates
// requests, mounts each volume's tmpfs, has certificates issued, writes them,
// renews them, and finds every volume again after a restart.
package csi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// ParseEndpoint returns the socket path of a unix:// endpoint.
func ParseEndpoint(endpoint string) (string, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || path == "" || !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q: want unix:///absolute/path", endpoint)
	}
	return path, nil
}

// Listen listens on a unix socket, removing a stale one left by a previous run.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return lis, nil
}

// gracePeriod bounds how long a stop waits for calls in flight.
const gracePeriod = 10 * time.Second

// Serve serves the Identity and Node services on lis until ctx is done, then
// stops gracefully (calls in flight get gracePeriod) and removes the socket.
func (d *Driver) Serve(ctx context.Context, lis net.Listener) error {
	logger := klog.FromContext(ctx)
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := grpc.NewServer(grpc.UnaryInterceptor(logInterceptor(logger)))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		timer := time.AfterFunc(gracePeriod, srv.Stop)
		srv.GracefulStop()
		timer.Stop()
	}()
	logger.Info("Serving CSI", "address", lis.Addr().String())
	err := srv.Serve(lis)
	failed := parent.Err() == nil // Serve failed on its own
	cancel()
	<-stopped
	if failed {
		return fmt.Errorf("serve CSI: %w", err)
	}
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve CSI: %w", err)
	}
	return nil
}
