// Package manager owns the volumes published on this node: it mounts each
// one, has its certificate issued within a node-wide limit, writes it,
// renews it, unpublishes it, and finds every volume again after a restart.
// The CSI layer validates requests and calls it; nothing here knows gRPC.
package manager

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/metrics"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/renew"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// Issuer is the seam to issuance: the real one is *issuance.Client.
type Issuer interface {
	// Issue returns a certificate for the pod, resuming the volume's pending
	// request if there is one. Errors carry a failure.Reason.
	Issue(ctx context.Context, req issuance.Request) (*issuance.Result, error)
	// Release forgets the volume's request, if any, and has it deleted in
	// the background: it returns at once.
	Release(ctx context.Context, volumeID string)
}

var _ Issuer = (*issuance.Client)(nil)

// FileNames are the names of the files in each volume.
type FileNames struct {
	Certificate, Key, CA string
}

// Check is one thing the manager needs before it can publish.
type Check struct {
	Name  string // what is not ready yet, for messages: "the CertificateRequest cache"
	Ready func() bool
}

// Options configure a Manager.
type Options struct {
	Issuer  Issuer
	Mounter mount.Interface
	Store   *volume.Store
	Files   FileNames
	// CABundle returns the CA bundle to write as Files.CA; nil or empty
	// output writes none.
	CABundle func() []byte
	// Checks must all pass, after recovery, before a first publish.
	Checks []Check
	// NodeBound: the Issuer makes requests with the driver's own
	// credentials; volumes need no pod token, first or at renewal.
	NodeBound bool

	// RenewTimeout bounds one renewal attempt; a request still pending then
	// is resumed by the next attempt.
	RenewTimeout time.Duration
	Backoff      renew.Backoff
	// FailuresAbnormal is how many consecutive renewal failures make a
	// volume's health degraded.
	FailuresAbnormal int

	Clock   clock.Clock      // default: the real clock
	Jitter  func() float64   // in [0, 1); default: math/rand
	Metrics *metrics.Metrics // nil: none
}

// Manager owns the node's volumes. Call Recover once, then Run, then serve.
type Manager struct {
	opts      Options
	sched     *renew.Scheduler
	locks     volumeLocks
	recovered atomic.Bool
	caMu      sync.Mutex // serialises RefreshCA

	mu   sync.Mutex
	vols map[string]*vol
}

// New returns a Manager.
func New(opts Options) (*Manager, error) {
	switch {
	case opts.Issuer == nil || opts.Mounter == nil || opts.Store == nil:
		return nil, errors.New("volume manager: an issuer, a mounter and a state store are required")
	case opts.Files.Certificate == "" || opts.Files.Key == "":
		return nil, errors.New("volume manager: certificate and key file names are required")
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
	m := &Manager{opts: opts, vols: map[string]*vol{}}
	m.sched = renew.New(opts.Clock, m.renew)
	return m, nil
}

// Run runs renewals until ctx is done, then waits for those in flight.
func (m *Manager) Run(ctx context.Context) { m.sched.Run(ctx) }

// Ready is nil once the manager can publish: the volumes of a previous run
// are recovered and every check passes. Otherwise it names what is missing.
func (m *Manager) Ready() error {
	var missing []string
	if !m.recovered.Load() {
		missing = append(missing, "the volumes of the previous run")
	}
	for _, c := range m.opts.Checks {
		if !c.Ready() {
			missing = append(missing, c.Name)
		}
	}
	if len(missing) > 0 {
		return failure.New(failure.Starting, "the driver is starting: not yet read: %s", strings.Join(missing, ", "))
	}
	return nil
}

// EarliestExpiry is the earliest NotAfter of all volumes whose certificate
// is known (zero with none).
func (m *Manager) EarliestExpiry() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	var t time.Time
	for _, v := range m.vols {
		_, na := v.validity()
		if !na.IsZero() && (t.IsZero() || na.Before(t)) {
			t = na
		}
	}
	return t
}

// Len is the number of volumes managed.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.vols)
}

func (m *Manager) lookup(id string) *vol {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vols[id]
}

func (m *Manager) add(v *vol) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vols[v.meta.VolumeID] = v
}

func (m *Manager) remove(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.vols, id)
}
