// Package socket serves gRPC on a unix socket, for both of the driver's
// sockets (CSI and kubelet registration): it replaces only a stale socket at
// the path and stops gracefully within a bound.
package socket

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

	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/logkey"
)

// ParseEndpoint returns the socket path of a unix:// endpoint.
func ParseEndpoint(endpoint string) (string, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || path == "" || !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q: want unix:///absolute/path", endpoint)
	}
	return path, nil
}

// Listen listens on a unix socket at path, creating its directory and
// removing a socket a previous run left there (one driver runs per node, so
// a socket at the path is taken as stale); anything else at the path is an
// error, never removed.
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
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("inspect %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return lis, nil
}

// Serve serves srv on lis until ctx is done, then stops it gracefully (calls
// in flight get grace, then are cut); closing the listener removes the
// socket. A failure of its own is returned; a stop asked for by ctx is not.
func Serve(ctx context.Context, name string, srv *grpc.Server, lis net.Listener, grace time.Duration) error {
	path := lis.Addr().String()
	stopped := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(stopped)
		graceful := make(chan struct{})
		go func() { srv.GracefulStop(); close(graceful) }()
		select {
		case <-graceful:
		case <-time.After(grace):
			// Cut the calls; GracefulStop's goroutine ends with the last
			// handler, but the stop no longer waits for it.
			srv.Stop()
		}
	})
	klog.FromContext(ctx).Info("Serving "+name, logkey.Socket, path)
	err := srv.Serve(lis)
	if stop() {
		srv.Stop() // Serve failed on its own: release what it may still hold
	} else {
		<-stopped
	}
	if err != nil && (ctx.Err() == nil || !errors.Is(err, grpc.ErrServerStopped)) {
		return fmt.Errorf("serve %s on %s: %w", name, path, err)
	}
	return nil
}
