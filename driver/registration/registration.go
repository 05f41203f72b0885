// Package registration registers the driver with the kubelet through the
// kubelet's plugin registration API (a socket in its plugins_registry
// directory), so the DaemonSet needs no node-driver-registrar sidecar.
package registration

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/driver/socket"
)

// supportedVersions are the CSI versions the driver tells the kubelet.
var supportedVersions = []string{"1.0.0"}

// gracePeriod bounds how long a stop waits for the kubelet's calls.
const gracePeriod = 5 * time.Second

// SocketPath is where the kubelet looks for the driver's registration socket.
func SocketPath(kubeletRootDir, driverName string) string {
	return filepath.Join(kubeletRootDir, "plugins_registry", driverName+"-reg.sock")
}

// Server answers the kubelet's plugin watcher.
type Server struct {
	regapi.UnimplementedRegistrationServer

	driverName string
	endpoint   string
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
		SupportedVersions: supportedVersions,
	}, nil
}

// NotifyRegistrationStatus implements the registration API.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *regapi.RegistrationStatus) (*regapi.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		s.logger.Info("Registered with the kubelet", logkey.Socket, s.endpoint)
	} else {
		s.logger.Error(errors.New(st.Error), "The kubelet refused the registration", logkey.Socket, s.endpoint)
	}
	return &regapi.RegistrationStatusResponse{}, nil
}

// Serve serves the registration socket on lis (see socket.Listen and
// SocketPath) until ctx is done; the socket goes with it, and the kubelet
// then deregisters the driver.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	s.logger = klog.FromContext(ctx)
	srv := grpc.NewServer()
	regapi.RegisterRegistrationServer(srv, s)
	return socket.Serve(ctx, "kubelet plugin registration", srv, lis, gracePeriod)
}
