package csi

import (
	"context"
	"errors"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/logkey"
)

const (
	stripped = "***stripped***"
	redacted = "***redacted***"
)

// logInterceptor logs each call's method, duration and code: a failed call
// always (an error line at any verbosity), a successful one at V(3), the
// sanitised request at V(5). It turns any error that is not a gRPC status
// into Internal: the kubelet must never see Unknown.
func logInterceptor(base klog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		logger := base.WithValues(logkey.Method, info.FullMethod)
		if l := logger.V(5); l.Enabled() {
			l.Info("CSI request", logkey.CSIRequest, sanitized(req))
		}
		start := time.Now()
		resp, err := handler(klog.NewContext(ctx, logger), req)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				err = status.Error(codes.Internal, err.Error())
			}
		}
		code := status.Code(err)
		if err != nil {
			// The handler's own values (volume, pod) are in its context's
			// logger, not here: name the volume again.
			kv := []any{logkey.Duration, time.Since(start), logkey.Code, code}
			if id := volumeOf(req); id != "" {
				kv = append([]any{logkey.Volume, id}, kv...)
			}
			logger.Error(errors.New(status.Convert(err).Message()), "CSI call failed", kv...)
		} else {
			logger.V(3).Info("CSI call", logkey.Duration, time.Since(start), logkey.Code, code)
		}
		return resp, err
	}
}

// volumeOf is the volume a request is about, if any.
func volumeOf(req any) string {
	if r, ok := req.(interface{ GetVolumeId() string }); ok {
		return r.GetVolumeId()
	}
	return ""
}

// sanitized returns a printable copy of a CSI message with every field marked
// csi_secret stripped and the kubelet's service account tokens redacted
// wherever they appear as a map entry (volume_context). The request itself is
// not modified.
func sanitized(req any) string {
	m, ok := req.(proto.Message)
	if !ok {
		return "<not a protobuf message>"
	}
	c := proto.Clone(m)
	sanitize(c.ProtoReflect())
	return protojson.MarshalOptions{}.Format(c)
}

func sanitize(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		secret, _ := proto.GetExtension(fd.Options(), csi.E_CsiSecret).(bool)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			strs := fd.MapValue().Kind() == protoreflect.StringKind
			msgs := fd.MapValue().Message() != nil
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				switch {
				case strs && secret:
					mp.Set(k, protoreflect.ValueOfString(stripped))
				case strs && k.String() == keyTokens:
					mp.Set(k, protoreflect.ValueOfString(redacted))
				case msgs:
					sanitize(mv.Message())
				}
				return true
			})
		case secret && fd.Kind() == protoreflect.StringKind && !fd.IsList():
			m.Set(fd, protoreflect.ValueOfString(stripped))
		case secret:
			m.Clear(fd)
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := range l.Len() {
				sanitize(l.Get(i).Message())
			}
		case fd.Message() != nil:
			sanitize(m.Mutable(fd).Message())
		}
		return true
	})
}
