package settings

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// Reasons of the Warning Event recorded on an invalid ConfigMap.
const (
	EventInvalid       = "InvalidIssuerConfigMap" // the runtime issuance ConfigMap
	EventInvalidConfig = "InvalidConfigMap"       // the shared configuration ConfigMap
)

// After a change, the settings that were active stay acceptable to the
// approver for requests created up to PreviousSkew after the change was
// seen (a driver whose watch lagged made them with the old ones), and for no
// longer than PreviousWindow in all. At most maxPrevious are remembered.
const (
	PreviousSkew   = 10 * time.Second
	PreviousWindow = 5 * time.Minute
	maxPrevious    = 16
)

// readTimeout bounds one read of the ConfigMaps for Fresh.
const readTimeout = 5 * time.Second

// ErrNoIssuer is returned to callers when no issuer is active; its message
// says how to configure one.
var ErrNoIssuer = errors.New("no issuer is configured: set --issuer-name (with --issuer-kind and --issuer-group), " +
	KeyIssuerName + " of the ConfigMap named by --config-configmap (svid-csi-config), " +
	"or the keys " + keyName + ", " + keyKind + " and " + keyGroup + " of the ConfigMap named by --runtime-issuance-configmap")

// ErrInvalidConfigMap is returned by Fresh when the API server's copy of a
// ConfigMap is invalid: which values the drivers use then depends on what
// each saw last, so a mismatch is no ground for a denial.
var ErrInvalidConfigMap = errors.New("ConfigMap is invalid")

// Options configure a Tracker.
type Options struct {
	// Flags are the settings from flags: the start values, and what a
	// ConfigMap that is absent (or invalid from the start) leaves. An empty
	// Issuer.Name means no issuer.
	Flags Settings
	// ConfigConfigMap names the shared configuration ConfigMap, whose keys
	// TRUST_DOMAIN, CERTIFICATE_REQUEST_DURATION and ISSUER_* replace the
	// flags; empty means none.
	ConfigConfigMap types.NamespacedName
	// IssuerConfigMap names the runtime issuance ConfigMap, whose issuer
	// replaces any other; empty means none.
	IssuerConfigMap types.NamespacedName
	// Client reads the ConfigMaps; required only with one set.
	Client kubernetes.Interface
	// Recorder, if set, records a Warning Event on an invalid ConfigMap,
	// once per content. The approver sets it; the drivers (one per node)
	// only log, so a bad edit is one Event, not one per node.
	Recorder record.EventRecorder
	// Now defaults to time.Now.
	Now func() time.Time
}

// Tracker knows the active settings. It watches only the ConfigMaps it is
// given, each by name, never a cluster-wide cache.
type Tracker struct {
	flags    Settings
	sources  []*source // in order of precedence, lowest first
	client   kubernetes.Interface
	recorder record.EventRecorder
	now      func() time.Time
	logger   klog.Logger // set by Run before the informers start

	refreshMu sync.Mutex // serialises refresh
	mu        sync.RWMutex
	st        Settings
	previous  []period // settings replaced, oldest first
	changed   chan struct{}
	refreshed bool // the ConfigMaps have been looked at once: log the first state
	synced    atomic.Bool

	freshMu  sync.Mutex
	lastRead *freshRead // the latest read for Fresh, maybe still running
}

// freshRead is one read of the ConfigMaps, shared by every Fresh call that
// may use it.
type freshRead struct {
	started time.Time
	done    chan struct{} // closed when s and err are set
	s       Settings
	err     error
}

// period is settings that were active until a change replaced them.
type period struct {
	s     Settings
	until time.Time
}

// source is one watched ConfigMap.
type source struct {
	name     types.NamespacedName
	what     string // in messages: "configuration" or "runtime issuance"
	reason   string // of the Event on an invalid one
	keys     string // in the Event: what a valid one holds
	parse    func(*corev1.ConfigMap, Settings) (layer, error)
	informer cache.SharedIndexInformer
	handler  cache.ResourceEventHandlerRegistration

	// keep: a deleted one keeps its last valid values instead of leaving
	// the flags' (svid-csi-config: the pods no longer roll with it, so
	// the flags of each may be of another time).
	keep bool

	// Guarded by Tracker.mu.
	layer   layer  // what its last valid content set
	invalid string // what was wrong with it last time, logged once
	gone    bool   // it was deleted and that was logged
}

// New returns a Tracker. Call Run to watch the ConfigMaps; until they have
// synced, the flags' settings are active.
func New(opts Options) (*Tracker, error) {
	t := &Tracker{flags: opts.Flags, client: opts.Client, recorder: opts.Recorder,
		now: opts.Now, changed: make(chan struct{}), st: opts.Flags}
	if t.now == nil {
		t.now = time.Now
	}
	switch f := opts.Flags; {
	case f.TrustDomain.IsZero():
		return nil, errors.New("a trust domain from flags is required")
	case f.Duration <= 0:
		return nil, fmt.Errorf("the request duration from flags must be positive, got %s", f.Duration)
	case f.Issuer.Name != "" && (f.Issuer.Kind == "" || f.Issuer.Group == ""):
		return nil, fmt.Errorf("issuer %q from flags needs a kind and a group", f.Issuer.Name)
	}
	if opts.ConfigConfigMap.Name != "" {
		t.sources = append(t.sources, &source{name: opts.ConfigConfigMap, what: "configuration",
			reason: EventInvalidConfig, parse: fromConfigConfigMap, keep: true,
			keys: "each of " + strings.Join([]string{KeyTrustDomain, KeyDuration, KeyIssuerName, KeyIssuerKind, KeyIssuerGroup}, ", ") +
				" that is set must be valid"})
	}
	if opts.IssuerConfigMap.Name != "" {
		t.sources = append(t.sources, &source{name: opts.IssuerConfigMap, what: "runtime issuance",
			reason: EventInvalid, parse: fromRuntimeConfigMap,
			keys: "keys " + keyName + ", " + keyKind + " and " + keyGroup + " are all required and non-empty"})
	}
	if len(t.sources) > 0 && opts.Client == nil {
		return nil, errors.New("a Kubernetes client is required to watch ConfigMaps")
	}
	for _, s := range t.sources {
		if err := t.watch(s); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// watch makes the informer of one ConfigMap, by name.
func (t *Tracker) watch(s *source) error {
	selector := fields.OneTermEqualSelector("metadata.name", s.name.Name).String()
	cms := t.client.CoreV1().ConfigMaps(s.name.Namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = selector
			return cms.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return cms.Watch(ctx, o)
		},
	}
	// The wrapper tells the reflector whether the client can stream lists
	// (fake clientsets cannot), as client-go's generated informers do.
	s.informer = cache.NewSharedIndexInformerWithOptions(
		cache.ToListWatcherWithWatchListSemantics(lw, t.client),
		&corev1.ConfigMap{}, cache.SharedIndexInformerOptions{})
	update := func(any) { t.refresh() }
	reg, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: update,
	})
	if err != nil {
		return fmt.Errorf("watch %s ConfigMap %s: %w", s.what, s.name, err)
	}
	s.handler = reg
	return nil
}

// Run watches the ConfigMaps, if any, and blocks until ctx is done.
func (t *Tracker) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if len(t.sources) == 0 {
		t.logActive(logger, t.Current(), "from flags")
		<-ctx.Done()
		return nil
	}
	synced := make([]cache.InformerSynced, 0, len(t.sources))
	for _, s := range t.sources {
		logger.Info("Watching the "+s.what+" ConfigMap", "configmap", klog.KRef(s.name.Namespace, s.name.Name))
		synced = append(synced, s.handler.HasSynced)
	}
	t.logger = logger // before the informers run: their handlers read it
	var wg sync.WaitGroup
	for _, s := range t.sources {
		wg.Go(func() { s.informer.RunWithContext(ctx) })
	}
	wg.Go(func() {
		// An absent ConfigMap sends no event: settle the first state here.
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			t.refresh()
			t.synced.Store(true)
		}
	})
	wg.Wait()
	return nil
}

// HasSynced reports whether the ConfigMaps, if any, have been read once and
// Current reflects them.
func (t *Tracker) HasSynced() bool {
	return len(t.sources) == 0 || t.synced.Load()
}

// Current returns the active settings; without an issuer (see ErrNoIssuer)
// nothing can be issued.
func (t *Tracker) Current() Settings {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.st
}

// Changed returns a channel that is closed when the active settings next
// change: a wait for a request to the old issuer can stop and retry.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// Previous returns the settings, newest first, that were active before a
// change that a request created at created may still carry: those replaced
// less than PreviousSkew before it was created, and less than
// PreviousWindow ago. Several quick edits leave several.
func (t *Tracker) Previous(created time.Time) []Settings {
	t.mu.RLock()
	defer t.mu.RUnlock()
	now := t.now()
	var out []Settings
	for i := len(t.previous) - 1; i >= 0; i-- {
		p := t.previous[i]
		if now.After(p.until.Add(PreviousWindow)) {
			break // older ones are older still
		}
		if !created.After(p.until.Add(PreviousSkew)) {
			out = append(out, p.s)
		}
	}
	return out
}

// Fresh reads the ConfigMaps from the API server, not the cache, and
// returns the settings they make active (what Current returns once the
// watches catch up). The approver asks it before denying a request whose
// duration, trust domain or issuer differs: the driver may have seen a
// change first. A read that started at notBefore or later is shared: pass
// a time after which the request is known to exist (when it was taken from
// the queue), so that the answer is at least as new as the request; callers
// at the same moment share one read. Without ConfigMaps it is Current.
func (t *Tracker) Fresh(ctx context.Context, notBefore time.Time) (Settings, error) {
	if len(t.sources) == 0 {
		return t.Current(), nil
	}
	t.freshMu.Lock()
	r := t.lastRead
	if r == nil || r.started.Before(notBefore) {
		r = &freshRead{started: t.now(), done: make(chan struct{})}
		t.lastRead = r
		// Its own deadline: a caller that gives up leaves it to the others.
		go func() {
			defer close(r.done)
			rctx, cancel := context.WithTimeout(context.Background(), readTimeout)
			defer cancel()
			r.s, r.err = t.read(rctx)
		}()
	}
	t.freshMu.Unlock()
	select {
	case <-r.done:
		return r.s, r.err
	case <-ctx.Done():
		return Settings{}, fmt.Errorf("read the ConfigMaps: %w", ctx.Err())
	}
}

// read gets each ConfigMap from the API server and evaluates them.
func (t *Tracker) read(ctx context.Context) (Settings, error) {
	st := t.flags
	for _, s := range t.sources {
		cm, err := t.client.CoreV1().ConfigMaps(s.name.Namespace).Get(ctx, s.name.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err) && s.keep:
			t.mu.RLock()
			st = s.layer.over(st) // as refresh keeps it
			t.mu.RUnlock()
			continue
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return Settings{}, fmt.Errorf("read %s ConfigMap %s: %w", s.what, s.name, err)
		}
		l, err := s.parse(cm, t.flags)
		if err != nil {
			return Settings{}, fmt.Errorf("%s %w: %s: %v", s.what, ErrInvalidConfigMap, s.name, err)
		}
		st = l.over(st)
	}
	return st, nil
}

// problem is a ConfigMap found invalid, not logged yet.
type problem struct {
	src     *source
	cm      *corev1.ConfigMap
	invalid error
}

// refresh recomputes the active settings from the informers' stores and
// logs a change; an invalid ConfigMap is logged (and recorded) once.
func (t *Tracker) refresh() {
	// One refresh at a time (the informers' handlers and the first one
	// after sync), so that an older read never overwrites a newer one.
	t.refreshMu.Lock()
	defer t.refreshMu.Unlock()
	for _, s := range t.sources {
		if !s.handler.HasSynced() {
			return // Run refreshes once every ConfigMap has been listed
		}
	}
	t.mu.Lock()
	first := !t.refreshed
	st := t.flags
	var problems []problem
	var gone []*source
	var from []string
	for _, s := range t.sources {
		cm, l, invalid, exists := s.evaluate(t.flags)
		deleted := !exists && s.keep && !first
		switch {
		case deleted:
			// keep its last valid layer
			if !s.gone {
				gone = append(gone, s)
			}
		case invalid == nil:
			s.layer = l
		case first:
			s.layer = layer{} // invalid from the start: the flags' values
		}
		// else: invalid, keep its last valid layer
		s.gone = deleted
		if invalid == nil {
			s.invalid = ""
		} else if invalid.Error() != s.invalid {
			s.invalid = invalid.Error()
			problems = append(problems, problem{s, cm, invalid})
		}
		if s.layer != (layer{}) {
			from = append(from, s.name.String())
		}
		st = s.layer.over(st)
	}
	changed := st != t.st
	if changed && !first {
		// The first read is no change: the flags' settings, assumed until
		// then, were never active for anyone else.
		t.previous = append(t.previous, period{s: t.st, until: t.now()})
		if len(t.previous) > maxPrevious {
			t.previous = t.previous[len(t.previous)-maxPrevious:]
		}
	}
	if changed {
		close(t.changed)
		t.changed = make(chan struct{})
	}
	prev := t.st
	t.st, t.refreshed = st, true
	t.mu.Unlock()

	logger := t.logger
	for _, s := range gone {
		logger.Error(nil, "ConfigMap deleted; keeping its last valid values (a pod that starts now needs it: recreate it, e.g. re-apply the overlay)",
			"kind", s.what, "configmap", klog.KRef(s.name.Namespace, s.name.Name), "active", st.String())
	}
	for _, p := range problems {
		logger.Error(p.invalid, "ConfigMap is invalid; keeping its last valid values", "kind", p.src.what,
			"configmap", klog.KObj(p.cm), "active", st.String())
		t.recordInvalid(p.src, p.cm, p.invalid, st)
	}
	origin := "from flags"
	if len(from) > 0 {
		origin = "from flags and ConfigMap " + strings.Join(from, " and ")
	}
	switch {
	case first:
		t.logActive(logger, st, origin)
	case changed:
		logger.Info("Active settings changed", append(st.logValues(), "previous", prev.String(), "origin", origin)...)
		if !st.HasIssuer() {
			logger.Info("No issuer is active; requests cannot be issued until one is configured")
		}
	}
}

func (t *Tracker) logActive(logger klog.Logger, st Settings, origin string) {
	logger.Info("Active settings", append(st.logValues(), "origin", origin)...)
	if !st.HasIssuer() {
		logger.Info("No issuer is configured; requests cannot be issued until one is", "how", ErrNoIssuer.Error())
	}
}

func (t *Tracker) recordInvalid(s *source, cm *corev1.ConfigMap, invalid error, st Settings) {
	if t.recorder != nil {
		t.recorder.Eventf(cm, corev1.EventTypeWarning, s.reason,
			"Ignored: %v (%s); the active settings stay %s", invalid, s.keys, st.String())
	}
}

// RecordInvalid records the Warning Event for each ConfigMap's problem
// again, if it has one now: for an approver that starts leading after the
// problem was first seen (only the leader records).
func (t *Tracker) RecordInvalid() {
	t.refreshMu.Lock()
	defer t.refreshMu.Unlock()
	for _, s := range t.sources {
		if cm, _, invalid, _ := s.evaluate(t.flags); invalid != nil {
			t.recordInvalid(s, cm, invalid, t.Current())
		}
	}
}

// evaluate reads the ConfigMap from the informer's store: what it sets, or
// what is wrong with it (then cm is the ConfigMap). An absent one (exists
// false) sets nothing.
func (s *source) evaluate(flags Settings) (cm *corev1.ConfigMap, l layer, invalid error, exists bool) {
	obj, exists, err := s.informer.GetStore().GetByKey(s.name.String())
	if err != nil || !exists {
		return nil, layer{}, nil, false
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return nil, layer{}, nil, false
	}
	if l, err = s.parse(cm, flags); err != nil {
		return cm, layer{}, err, true
	}
	return cm, l, nil, true
}
