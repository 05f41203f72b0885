package failure

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"testing"
)

// causeError is a typed cause, to check that errors.As reaches through New.
type causeError struct{ code int }

func (e *causeError) Error() string { return fmt.Sprintf("cause %d", e.code) }

func TestNew(t *testing.T) {
	sentinel := errors.New("connection refused")
	typed := &causeError{code: 42}
	_, pathErr := os.Stat("/nonexistent/svid-csi/failure-test")

	tests := []struct {
		name    string
		reason  Reason
		format  string
		args    []any
		wantMsg string
		wantErr error // the cause New must record in Err; nil for none
	}{
		{
			name:    "no args",
			reason:  NoIssuer,
			format:  "no issuer configured",
			wantMsg: "no issuer configured",
		},
		{
			name:    "formatted without cause",
			reason:  Invalid,
			format:  "pod %s/%s: service account %q is too long (%d)",
			args:    []any{"ns", "web", "sa", 300},
			wantMsg: `pod ns/web: service account "sa" is too long (300)`,
		},
		{
			name:    "%v does not set the cause",
			reason:  API,
			format:  "create request: %v",
			args:    []any{sentinel},
			wantMsg: "create request: connection refused",
		},
		{
			name:    "%w sets a sentinel cause",
			reason:  API,
			format:  "create request: %w",
			args:    []any{sentinel},
			wantMsg: "create request: connection refused",
			wantErr: sentinel,
		},
		{
			name:    "%w sets a typed cause",
			reason:  Failed,
			format:  "issuer %s: %w",
			args:    []any{"ca", typed},
			wantMsg: "issuer ca: cause 42",
			wantErr: typed,
		},
		{
			name:    "%w of a wrapping cause",
			reason:  Local,
			format:  "write volume: %w",
			args:    []any{pathErr},
			wantMsg: "write volume: " + pathErr.Error(),
			wantErr: pathErr,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := New(tt.reason, tt.format, tt.args...)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("New returned %T, want *Error", err)
			}
			if e.Reason != tt.reason {
				t.Errorf("Reason = %q, want %q", e.Reason, tt.reason)
			}
			if e.Msg != tt.wantMsg {
				t.Errorf("Msg = %q, want %q", e.Msg, tt.wantMsg)
			}
			if got := err.Error(); got != tt.wantMsg {
				t.Errorf("Error() = %q, want %q", got, tt.wantMsg)
			}
			if e.Err != tt.wantErr {
				t.Errorf("Err = %v, want %v", e.Err, tt.wantErr)
			}
			if got := errors.Unwrap(err); got != tt.wantErr {
				t.Errorf("errors.Unwrap = %v, want %v", got, tt.wantErr)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("errors.Is(err, cause) = false, want true")
			}
			if tt.wantErr == nil && errors.Is(err, sentinel) {
				t.Errorf("errors.Is(err, %v) = true without %%w", sentinel)
			}
		})
	}
}

func TestNewCauseReachable(t *testing.T) {
	// errors.As and errors.Is reach the cause's own chain through New.
	typed := &causeError{code: 7}
	err := New(Failed, "sign: %w", fmt.Errorf("inner: %w", typed))
	if ce, ok := errors.AsType[*causeError](err); !ok || ce != typed {
		t.Errorf("errors.As(*causeError) = %v, %v; want the cause", ce, ok)
	}

	_, statErr := os.Stat("/nonexistent/svid-csi/failure-test")
	err = New(Local, "read state: %w", statErr)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(err, fs.ErrNotExist) = false through New(%%w)")
	}
	if pe, ok := errors.AsType[*fs.PathError](err); !ok || pe.Path != "/nonexistent/svid-csi/failure-test" {
		t.Errorf("errors.As(*fs.PathError) = %v, %v", pe, ok)
	}
}

func TestReasonOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Reason
	}{
		{"Error itself", New(Denied, "denied by approver"), Denied},
		{"Error literal", &Error{Reason: Busy, Msg: "busy"}, Busy},
		{"wrapped once", fmt.Errorf("publish: %w", New(Conflict, "elsewhere")), Conflict},
		{"wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", New(Timeout, "pending"))), Timeout},
		{"wrapped with a cause of its own", fmt.Errorf("a: %w", New(API, "get: %w", errors.New("eof"))), API},
		{"in a join", errors.Join(errors.New("plain"), New(NotFound, "not here")), NotFound},
		{"outermost Error wins", New(Failed, "issue: %w", New(Token, "expired")), Failed},
		{"outermost Error wins through fmt", fmt.Errorf("x: %w", New(Starting, "s: %w", New(Forbidden, "f"))), Starting},
		{"plain error", errors.New("disk full"), Local},
		{"plain wrapped error", fmt.Errorf("write: %w", fs.ErrPermission), Local},
		{"%v loses the reason", fmt.Errorf("x: %v", New(Denied, "d")), Local},
		// Callers never pass nil; today nil is unclassified, hence Local.
		{"nil", nil, Local},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReasonOf(tt.err); got != tt.want {
				t.Errorf("ReasonOf(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestLists(t *testing.T) {
	wantIssuance := []Reason{NoIssuer, Invalid, Forbidden, Rejected, API, Timeout, Denied, Failed, Token, Local}
	others := []Reason{Starting, Busy, Conflict, NotFound}

	if !slices.Equal(Issuance, wantIssuance) {
		t.Errorf("Issuance = %q, want %q", Issuance, wantIssuance)
	}

	seen := map[Reason]bool{}
	for _, r := range All {
		if seen[r] {
			t.Errorf("All lists %q twice", r)
		}
		seen[r] = true
	}
	for _, r := range append(slices.Clone(Issuance), others...) {
		if !seen[r] {
			t.Errorf("All lacks %q", r)
		}
	}
	if want := len(wantIssuance) + len(others); len(All) != want {
		t.Errorf("len(All) = %d, want %d: %q", len(All), want, All)
	}

	seen = map[Reason]bool{}
	for _, r := range Issuance {
		if seen[r] {
			t.Errorf("Issuance lists %q twice", r)
		}
		seen[r] = true
	}
}

func TestReasonsAreLabelValues(t *testing.T) {
	label := regexp.MustCompile(`^[a-z_]+$`)
	for _, r := range All {
		t.Run(string(r), func(t *testing.T) {
			if !label.MatchString(string(r)) {
				t.Errorf("reason %q is not a non-empty [a-z_] label value", r)
			}
		})
	}
	if len(All) == 0 {
		t.Fatal("All is empty")
	}
}
