// Package csi is the driver's CSI surface: the Identity and Node services on
// a unix socket, the validation of every request, the logging interceptor,
// and the one place where failures become gRPC codes. The volumes
// themselves are the manager's.
package csi

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/manager"
	"github.com/svid-csi/svid-csi/driver/socket"
)

// Options configure a Driver.
type Options struct {
	Name    string
	Version string
	NodeID  string
	// PodsDir is the kubelet's pods directory: every target path is under it.
	PodsDir string
	Volumes *manager.Manager
	// NodeBound: requests are made with the driver's own credentials, so
	// NodePublishVolume needs no pod token (DESIGN 4b).
	NodeBound bool
}

// Driver implements the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	opts Options
}

var (
	_ csi.IdentityServer = (*Driver)(nil)
	_ csi.NodeServer     = (*Driver)(nil)
)

// New returns a Driver.
func New(opts Options) (*Driver, error) {
	switch {
	case opts.Name == "" || opts.NodeID == "" || opts.PodsDir == "":
		return nil, errors.New("CSI driver: a driver name, a node ID and the kubelet's pods directory are required")
	case opts.Volumes == nil:
		return nil, errors.New("CSI driver: a volume manager is required")
	}
	return &Driver{opts: opts}, nil
}

// gracePeriod bounds how long a stop waits for calls in flight.
const gracePeriod = 10 * time.Second

// Serve serves the Identity and Node services on lis until ctx is done,
// then stops gracefully.
func (d *Driver) Serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer(grpc.UnaryInterceptor(logInterceptor(klog.FromContext(ctx))))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	return socket.Serve(ctx, "CSI", srv, lis, gracePeriod)
}

// codeOf decides, for every failure reason, the gRPC code the kubelet acts
// on: it retries Unavailable, DeadlineExceeded and Aborted soon, and shows
// the message of any code in the pod's events.
var codeOf = map[failure.Reason]codes.Code{
	failure.NoIssuer:  codes.FailedPrecondition,
	failure.Invalid:   codes.InvalidArgument,
	failure.Forbidden: codes.PermissionDenied,
	failure.Rejected:  codes.FailedPrecondition,
	failure.API:       codes.Unavailable,
	failure.Timeout:   codes.DeadlineExceeded,
	failure.Denied:    codes.FailedPrecondition,
	failure.Failed:    codes.FailedPrecondition,
	failure.Token:     codes.Unavailable,
	failure.Local:     codes.Internal,
	failure.Starting:  codes.Unavailable,
	failure.Busy:      codes.Aborted,
	failure.Conflict:  codes.AlreadyExists,
	failure.NotFound:  codes.NotFound,
}

// statusOf turns an error from the manager into a gRPC status error.
func statusOf(err error) error {
	code, ok := codeOf[failure.ReasonOf(err)]
	if !ok {
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}
