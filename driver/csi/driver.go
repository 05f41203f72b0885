package csi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/utils/clock"

	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/metrics"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/renew"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// Issuer is the seam to issuance: the real one is *issuance.Client.
type Issuer interface {
	// Issue returns a certificate for the pod, resuming the volume's pending
	// request if there is one. Errors carry a gRPC status (*issuance.Error).
	Issue(ctx context.Context, req issuance.Request) (*issuance.Result, error)
	// Release deletes the volume's request, if any.
	Release(ctx context.Context, volumeID string)
	// HasSynced reports whether issuance is ready to wait for requests.
	HasSynced() bool
}

var _ Issuer = (*issuance.Client)(nil)

// FileNames are the names of the files in each volume.
type FileNames struct {
	Certificate, Key, CA string
}

// Options configure a Driver.
type Options struct {
	Name    string
	Version string
	NodeID  string

	Issuer  Issuer
	Mounter mount.Interface
	Store   *volume.Store
	Files   FileNames
	// CABundle returns the CA bundle to write as Files.CA; nil or empty
	// output writes none.
	CABundle func() []byte

	// MaxConcurrentIssuances bounds issuances in flight across all volumes.
	MaxConcurrentIssuances int
	// RenewTimeout bounds one renewal attempt; a request still pending then
	// is resumed by the next attempt.
	RenewTimeout time.Duration
	Backoff      renew.Backoff
	// FailuresAbnormal is how many consecutive renewal failures make a
	// volume's condition abnormal.
	FailuresAbnormal int

	Clock   clock.Clock      // default: the real clock
	Jitter  func() float64   // in [0, 1); default: math/rand
	Metrics *metrics.Metrics // nil: none
}

// Driver implements the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	opts      Options
	sched     *renew.Scheduler
	sem       chan struct{}
	locks     volumeLocks
	recovered atomic.Bool

	mu   sync.Mutex
	vols map[string]*vol
}

var (
	_ csi.IdentityServer = (*Driver)(nil)
	_ csi.NodeServer     = (*Driver)(nil)
)

// New returns a Driver. Call Recover, then Run and Serve.
func New(opts Options) (*Driver, error) {
	switch {
	case opts.Name == "" || opts.NodeID == "":
		return nil, errors.New("driver name and node ID are required")
	case opts.Issuer == nil || opts.Mounter == nil || opts.Store == nil:
		return nil, errors.New("an issuer, a mounter and a state store are required")
	case opts.Files.Certificate == "" || opts.Files.Key == "":
		return nil, errors.New("certificate and key file names are required")
	}
	if opts.MaxConcurrentIssuances <= 0 {
		opts.MaxConcurrentIssuances = 10
	}
	if opts.RenewTimeout <= 0 {
		opts.RenewTimeout = 2 * time.Minute
	}
	if opts.Backoff == (renew.Backoff{}) {
		opts.Backoff = renew.DefaultBackoff
	}
	if opts.FailuresAbnormal <= 0 {
		opts.FailuresAbnormal = 3
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Jitter == nil {
		opts.Jitter = rand.Float64
	}
	d := &Driver{opts: opts, sem: make(chan struct{}, opts.MaxConcurrentIssuances), vols: map[string]*vol{}}
	d.sched = renew.New(opts.Clock, d.renew)
	return d, nil
}

// Run runs the renewal scheduler until ctx is done.
func (d *Driver) Run(ctx context.Context) { d.sched.Run(ctx) }

// Ready reports whether the driver can serve publishes.
func (d *Driver) Ready() bool { return d.recovered.Load() && d.opts.Issuer.HasSynced() }

// EarliestExpiry is the earliest NotAfter of all volumes (zero with none).
func (d *Driver) EarliestExpiry() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	var t time.Time
	for _, v := range d.vols {
		_, na := v.validity()
		if t.IsZero() || na.Before(t) {
			t = na
		}
	}
	return t
}

func (d *Driver) lookup(id string) *vol {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.vols[id]
}

func (d *Driver) add(v *vol) {
	d.mu.Lock()
	d.vols[v.meta.VolumeID] = v
	n := len(d.vols)
	d.mu.Unlock()
	d.opts.Metrics.SetVolumes(n)
}

func (d *Driver) remove(id string) {
	d.mu.Lock()
	delete(d.vols, id)
	n := len(d.vols)
	d.mu.Unlock()
	d.opts.Metrics.SetVolumes(n)
}

// vol is a published volume. meta is written only under the volume's lock;
// the fields below mu change on republish and renewal.
type vol struct {
	// meta is set before the volume is added and never changed after: it is
	// read without a lock. What changes (validity, token) is guarded by mu.
	meta volume.Meta

	mu            sync.Mutex
	token         string
	tokenExpiry   time.Time
	notBefore     time.Time
	notAfter      time.Time
	failures      int
	lastErr       string
	awaitingToken bool
	closing       bool
	cancel        context.CancelFunc // of the renewal in flight
}

func (v *vol) setToken(token string, expiry time.Time) (wasAwaiting bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.token, v.tokenExpiry = token, expiry
	wasAwaiting, v.awaitingToken = v.awaitingToken, false
	return wasAwaiting
}

// freshToken returns the latest token unless it has expired.
func (v *vol) freshToken(now time.Time) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.token == "" || (!v.tokenExpiry.IsZero() && !now.Before(v.tokenExpiry)) {
		v.awaitingToken = true
		return "", false
	}
	return v.token, true
}

func (v *vol) validity() (time.Time, time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.notBefore, v.notAfter
}

func (v *vol) setValidity(nb, na time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.notBefore, v.notAfter = nb, na
	v.failures, v.lastErr = 0, ""
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

// health is the volume's condition as NodeGetVolumeHealth reports it:
// degraded when the certificate expired or renewal keeps failing, with why.
func (v *vol) health(now time.Time, failuresAbnormal int) []*csi.VolumeHealth_VolumeHealthEntry {
	v.mu.Lock()
	defer v.mu.Unlock()
	var entries []*csi.VolumeHealth_VolumeHealthEntry
	if !now.Before(v.notAfter) {
		msg := "certificate expired at " + v.notAfter.UTC().Format(time.RFC3339)
		if v.lastErr != "" {
			msg += "; last renewal error: " + v.lastErr
		}
		entries = append(entries, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_DEGRADED, Reason: "CertificateExpired", Message: msg})
	}
	if v.failures >= failuresAbnormal {
		entries = append(entries, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_DEGRADED, Reason: "RenewalFailing",
			Message: fmt.Sprintf("certificate renewal failed %d times in a row: %s", v.failures, v.lastErr)})
	}
	return entries
}
