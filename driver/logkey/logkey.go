// Package logkey names the structured-log key of each kind of object the
// driver logs, so that every line about a pod, a volume or a request uses the
// same key.
package logkey

const (
	// Volume is a volume ID.
	Volume = "volumeID"
	// Target is a volume's target path.
	Target = "targetPath"
	// Pod is a klog.ObjectRef of the pod.
	Pod = "pod"
	// CertificateRequest is a klog.ObjectRef of a cert-manager CertificateRequest.
	CertificateRequest = "certificateRequest"
	// Method is a CSI method.
	Method = "method"
	// CSIRequest is a sanitised CSI request message.
	CSIRequest = "csiRequest"
	// Code is a gRPC code.
	Code = "code"
	// Duration is how long a call took.
	Duration = "duration"
	// NotAfter is a certificate's expiry.
	NotAfter = "notAfter"
	// RenewAt is when a certificate is renewed.
	RenewAt = "renewAt"
	// Failures is a count of consecutive renewal failures.
	Failures = "failures"
	// Socket is a unix socket path.
	Socket = "socket"
)
