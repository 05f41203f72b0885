// Package failure declares, once, why a volume operation of the driver
// failed: typed reasons that issuance and the volume manager return, that
// metrics count, and that the CSI layer alone turns into gRPC codes.
package failure

import (
	"errors"
	"fmt"
)

// Reason is why an operation failed; its value is a metric label.
type Reason string

// Why an issuance failed: counted by issuance_failures_total.
const (
	// NoIssuer: no issuer is configured (flags or runtime ConfigMap).
	NoIssuer Reason = "no_issuer"
	// Invalid: the pod's identity cannot make a SPIFFE ID.
	Invalid Reason = "invalid"
	// Forbidden: the API server refused the pod's credentials.
	Forbidden Reason = "forbidden"
	// Rejected: the API server or a webhook rejected the request as such.
	Rejected Reason = "rejected"
	// API: the API server could not be reached or failed; retrying helps.
	API Reason = "api"
	// Timeout: the request is still pending; the next attempt resumes it.
	Timeout Reason = "timeout"
	// Denied: the approver denied the request.
	Denied Reason = "denied"
	// Failed: the issuer failed the request, or issued something unusable.
	Failed Reason = "failed"
	// Token: the pod's token expired before it could be used.
	Token Reason = "token"
	// Local: the node failed (key generation, files, state).
	Local Reason = "local"
)

// Why a volume operation was refused before any issuance.
const (
	// Starting: the driver's caches or state are not ready yet.
	Starting Reason = "starting"
	// Busy: another operation on the same volume is in flight.
	Busy Reason = "busy"
	// Conflict: the volume is published elsewhere or for another pod.
	Conflict Reason = "conflict"
	// NotFound: the volume is not published here.
	NotFound Reason = "not_found"
)

// Issuance are the reasons an issuance fails, in the order metrics list them.
var Issuance = []Reason{NoIssuer, Invalid, Forbidden, Rejected, API, Timeout, Denied, Failed, Token, Local}

// All are every reason.
var All = append(append([]Reason(nil), Issuance...), Starting, Busy, Conflict, NotFound)

// Error is a failure with its reason. Its message is for people: the kubelet
// shows it in the pod's events.
type Error struct {
	Reason Reason
	Msg    string
	Err    error // the cause, if any; its text is part of Msg
}

func (e *Error) Error() string { return e.Msg }

func (e *Error) Unwrap() error { return e.Err }

// New returns an *Error with a formatted message; one %w verb sets the
// cause (with more than one, none is kept).
func New(r Reason, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Reason: r, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// ReasonOf is the reason of err: that of the first *Error in its chain, else
// Local (a failure nobody classified is the node's own).
func ReasonOf(err error) Reason {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Reason
	}
	return Local
}
