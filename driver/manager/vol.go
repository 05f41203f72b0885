package manager

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/svid-csi/svid-csi/driver/volume"
)

// Token is a pod's ServiceAccount token, as the kubelet last sent it.
type Token struct {
	Value  string
	Expiry time.Time // zero: unknown
}

// Condition is a way a volume is unhealthy, with why.
type Condition struct {
	Reason  string // CertificateExpired, RenewalFailing
	Message string
}

// vol is a published volume.
type vol struct {
	// meta is set before the volume is added and never changed after: it is
	// read without a lock. What changes is below mu.
	meta volume.Meta

	mu            sync.Mutex
	token         Token
	notBefore     time.Time // of the certificate in the volume: its one copy in memory
	notAfter      time.Time
	ca            []byte // the CA bundle in the volume (nil: none)
	failures      int
	lastErr       string
	awaitingToken bool
	closing       bool
	cancel        context.CancelFunc // of the renewal in flight
}

func (v *vol) setToken(t Token) (wasAwaiting bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.token = t
	wasAwaiting, v.awaitingToken = v.awaitingToken, false
	return wasAwaiting
}

// freshToken returns the latest token unless it has expired.
func (v *vol) freshToken(now time.Time) (Token, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.token.Value == "" || (!v.token.Expiry.IsZero() && !now.Before(v.token.Expiry)) {
		v.awaitingToken = true
		return Token{}, false
	}
	return v.token, true
}

func (v *vol) validity() (time.Time, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.notBefore, v.notAfter
}

// issued records a certificate written into the volume.
func (v *vol) issued(nb, na time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.notBefore, v.notAfter = nb, na
	v.failures, v.lastErr = 0, ""
}

func (v *vol) caBundle() []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ca
}

func (v *vol) setCABundle(ca []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ca = ca
}

func (v *vol) failed(err error) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failures++
	v.lastErr = err.Error()
	return v.failures
}

// startRenewal registers the cancel of a renewal; false when the volume is
// being unpublished.
func (v *vol) startRenewal(cancel context.CancelFunc) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closing {
		return false
	}
	v.cancel = cancel
	return true
}

func (v *vol) endRenewal() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cancel = nil
}

// close marks the volume as going away and cancels its renewal in flight.
func (v *vol) close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closing = true
	if v.cancel != nil {
		v.cancel()
	}
}

// health is the volume's condition: degraded when the certificate expired or
// renewal keeps failing, with why.
func (v *vol) health(now time.Time, failuresAbnormal int) []Condition {
	v.mu.Lock()
	defer v.mu.Unlock()
	var conds []Condition
	if !now.Before(v.notAfter) {
		msg := "certificate expired at " + v.notAfter.UTC().Format(time.RFC3339)
		if v.lastErr != "" {
			msg += "; last renewal error: " + v.lastErr
		}
		conds = append(conds, Condition{Reason: "CertificateExpired", Message: msg})
	}
	if v.failures >= failuresAbnormal {
		conds = append(conds, Condition{Reason: "RenewalFailing",
			Message: fmt.Sprintf("certificate renewal failed %d times in a row: %s", v.failures, v.lastErr)})
	}
	return conds
}
