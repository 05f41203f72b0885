// Package registration registers the driver with the kubelet through the
// kubelet's plugin registration API (a socket in its plugins_registry
// directory), so the DaemonSet needs no node-driver-registrar sidecar.
package registration

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// SupportedVersions are the CSI versions the driver tells the kubelet.
var SupportedVersions = []string{"1.0.0"}

// SocketPath is where the kubelet looks for the driver's registration socket.
func SocketPath(kubeletRootDir, driverName string) string {
	return filepath.Join(kubeletRootDir, "plugins_registry", driverName+"-reg.sock")
}

// Server answers the kubelet's plugin watcher.
type Server struct {
	regapi.UnimplementedRegistrationServer

	driverName string
	endpoint   string
	registered atomic.Bool
	logger     klog.Logger
}

// New returns a Server announcing driverName with its CSI socket at endpoint,
// a path as the kubelet sees it.
func New(driverName, endpoint string) *Server {
	return &Server{driverName: driverName, endpoint: endpoint, logger: klog.Background()}
}

// GetInfo implements the registration API.
func (s *Server) GetInfo(context.Context, *regapi.InfoRequest) (*regapi.PluginInfo, error) {
	return &regapi.PluginInfo{
		Type:              regapi.CSIPlugin,
		Name:              s.driverName,
		Endpoint:          s.endpoint,
		SupportedVersions: SupportedVersions,
	}, nil
}

// NotifyRegistrationStatus implements the registration API.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *regapi.RegistrationStatus) (*regapi.RegistrationStatusResponse, error) {
	s.registered.Store(st.PluginRegistered)
	if st.PluginRegistered {
		s.logger.Info("Registered with the kubelet", "endpoint", s.endpoint)
	} else {
		s.logger.Error(errors.New(st.Error), "The kubelet refused the registration", "endpoint", s.endpoint)
	}
	return &regapi.RegistrationStatusResponse{}, nil
}

// Registered reports whether the kubelet said it registered the driver.
func (s *Server) Registered() bool { return s.registered.Load() }

// Run serves the registration socket at path until ctx is done, then removes
// it (the kubelet then deregisters the driver).
func (s *Server) Run(ctx context.Context, path string) error {
	s.logger = klog.FromContext(ctx)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale registration socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on registration socket %s: %w", path, err)
	}
	srv := grpc.NewServer()
	regapi.RegisterRegistrationServer(srv, s)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		t := time.AfterFunc(5*time.Second, srv.Stop)
		srv.GracefulStop()
		t.Stop()
	}()
	s.logger.Info("Serving kubelet plugin registration", "socket", path)
	err = srv.Serve(lis)
	cancel() // also when Serve failed on its own
	<-stopped
	_ = os.Remove(path)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve registration socket: %w", err)
	}
	return nil
}
