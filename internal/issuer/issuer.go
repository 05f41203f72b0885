package issuer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// Keys of the runtime issuance ConfigMap; all are required and non-empty.
const (
	keyName  = "issuer-name"
	keyKind  = "issuer-kind"
	keyGroup = "issuer-group"
)

// EventInvalid is the reason of the Warning Event recorded on an invalid
// runtime issuance ConfigMap.
const EventInvalid = "InvalidIssuerConfigMap"

// After a switch, the issuer that was active stays acceptable to the
// approver for requests created up to PreviousSkew after the switch was
// seen (a driver whose watch lagged made them for the old one), and for no
// longer than PreviousWindow in all.
const (
	PreviousSkew   = 10 * time.Second
	PreviousWindow = 5 * time.Minute
)

// freshFor is how long a fresh read of the ConfigMap answers Fresh: a
// flood of mismatching requests costs one GET a second, not one each.
const freshFor = time.Second

// ErrNoIssuer is returned to callers when no issuer is active; its message
// says how to configure one.
var ErrNoIssuer = errors.New("no issuer is configured: set --issuer-name (with --issuer-kind and --issuer-group), " +
	"or the keys " + keyName + ", " + keyKind + " and " + keyGroup + " of the ConfigMap named by --runtime-issuance-configmap")

// Options configure a Tracker.
type Options struct {
	// Flags is the issuer from flags; an empty Name means none.
	Flags cmmeta.IssuerReference
	// ConfigMap names the runtime issuance ConfigMap; empty means none.
	ConfigMap types.NamespacedName
	// Client reads the ConfigMap; required only with ConfigMap set.
	Client kubernetes.Interface
	// Recorder, if set, records a Warning Event on the ConfigMap when it is
	// invalid, once per content. The approver sets it; the drivers (one per
	// node) only log, so a bad edit is one Event, not one per node.
	Recorder record.EventRecorder
	// Now defaults to time.Now.
	Now func() time.Time
}

// Tracker knows the active issuer. It watches only the one ConfigMap it is
// given, never a cluster-wide cache.
type Tracker struct {
	flags    cmmeta.IssuerReference
	cmName   types.NamespacedName
	client   kubernetes.Interface
	recorder record.EventRecorder
	now      func() time.Time
	informer cache.SharedIndexInformer // nil without a ConfigMap
	handler  cache.ResourceEventHandlerRegistration
	logger   klog.Logger // set by Run before the informer starts

	refreshMu sync.Mutex // serialises refresh
	mu        sync.RWMutex
	st        state
	prev      state     // the state before the last change, if it had an issuer
	changedAt time.Time // when the last change was seen
	changed   chan struct{}
	refreshed bool   // the ConfigMap has been looked at once: log the first state
	invalid   string // what was wrong with the ConfigMap last time, logged once
	synced    atomic.Bool

	freshMu  sync.Mutex
	fresh    state
	freshErr error
	freshAt  time.Time
}

// state is an active issuer, or none (ok false), and why.
type state struct {
	ref    cmmeta.IssuerReference
	ok     bool
	reason string
}

// ParseConfigMap parses the value of --runtime-issuance-configmap,
// "<namespace>/<name>".
func ParseConfigMap(s string) (types.NamespacedName, error) {
	ns, name, found := strings.Cut(s, "/")
	if !found || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("%q: want <namespace>/<name>", s)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return types.NamespacedName{}, fmt.Errorf("%q: namespace: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return types.NamespacedName{}, fmt.Errorf("%q: name: %s", s, strings.Join(errs, "; "))
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// New returns a Tracker. Call Run to watch the ConfigMap; until it has
// synced, the flags' issuer is active.
func New(opts Options) (*Tracker, error) {
	t := &Tracker{flags: opts.Flags, cmName: opts.ConfigMap, client: opts.Client, recorder: opts.Recorder,
		now: opts.Now, changed: make(chan struct{})}
	if t.now == nil {
		t.now = time.Now
	}
	if opts.Flags.Name != "" && (opts.Flags.Kind == "" || opts.Flags.Group == "") {
		return nil, fmt.Errorf("issuer %q from flags needs a kind and a group", opts.Flags.Name)
	}
	t.st = t.fromFlags("started")
	if opts.ConfigMap.Name == "" {
		return t, nil
	}
	if opts.Client == nil {
		return nil, errors.New("a Kubernetes client is required to watch the runtime issuance ConfigMap")
	}
	selector := fields.OneTermEqualSelector("metadata.name", opts.ConfigMap.Name).String()
	cms := opts.Client.CoreV1().ConfigMaps(opts.ConfigMap.Namespace)
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
	t.informer = cache.NewSharedIndexInformerWithOptions(
		cache.ToListWatcherWithWatchListSemantics(lw, opts.Client),
		&corev1.ConfigMap{}, cache.SharedIndexInformerOptions{})
	update := func(any) { t.refresh() }
	reg, err := t.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: update,
	})
	if err != nil {
		return nil, fmt.Errorf("watch ConfigMap %s: %w", opts.ConfigMap, err)
	}
	t.handler = reg
	return t, nil
}

// Run watches the ConfigMap, if any, and blocks until ctx is done.
func (t *Tracker) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if t.informer == nil {
		if st := t.state(); st.ok {
			logger.Info("Active issuer", "issuer", RefString(st.ref), "reason", st.reason)
		} else {
			logger.Info("No issuer is configured; requests cannot be issued until one is", "reason", st.reason)
		}
		<-ctx.Done()
		return nil
	}
	logger.Info("Watching the runtime issuance ConfigMap", "configmap", klog.KRef(t.cmName.Namespace, t.cmName.Name))
	t.logger = logger // before the informer runs: its handler reads it
	var wg sync.WaitGroup
	wg.Go(func() {
		// An absent ConfigMap sends no event: settle the first state here.
		if cache.WaitForCacheSync(ctx.Done(), t.handler.HasSynced) {
			t.refresh()
			t.synced.Store(true)
		}
	})
	t.informer.RunWithContext(ctx)
	wg.Wait()
	return nil
}

// HasSynced reports whether the ConfigMap, if any, has been read once and
// Current reflects it.
func (t *Tracker) HasSynced() bool {
	return t.informer == nil || t.synced.Load()
}

// Current returns the active issuer; ok is false when there is none (see ErrNoIssuer).
func (t *Tracker) Current() (ref cmmeta.IssuerReference, ok bool) {
	st := t.state()
	return st.ref, st.ok
}

// Changed returns a channel that is closed when the active issuer next
// changes: a wait for a request to the old one can stop and retry.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

// Previous returns the issuer that was active before the last switch when a
// request created at created may still name it (see PreviousSkew and
// PreviousWindow); ok is false otherwise.
func (t *Tracker) Previous(created time.Time) (ref cmmeta.IssuerReference, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if !t.prev.ok || t.changedAt.IsZero() || t.now().After(t.changedAt.Add(PreviousWindow)) ||
		created.After(t.changedAt.Add(PreviousSkew)) {
		return cmmeta.IssuerReference{}, false
	}
	return t.prev.ref, true
}

// ErrInvalidConfigMap is returned by Fresh when the API server's copy of the
// ConfigMap is invalid: which issuer the drivers use then depends on what
// each saw last, so a mismatch is no ground for a denial.
var ErrInvalidConfigMap = errors.New("the runtime issuance ConfigMap is invalid")

// Fresh reads the ConfigMap from the API server, not the cache, and returns
// the issuer it makes active (what Current returns once the watch catches
// up). The approver asks it before denying a request that names another
// issuer: the driver may have seen a switch first. Answers, errors too, are
// reused for a second, so a flood of such requests costs one GET a second.
// Without a ConfigMap it is Current.
func (t *Tracker) Fresh(ctx context.Context) (ref cmmeta.IssuerReference, ok bool, err error) {
	if t.informer == nil {
		ref, ok = t.Current()
		return ref, ok, nil
	}
	t.freshMu.Lock()
	defer t.freshMu.Unlock()
	if t.freshAt.IsZero() || t.now().Sub(t.freshAt) >= freshFor {
		t.fresh, t.freshErr = t.read(ctx)
		t.freshAt = t.now()
	}
	return t.fresh.ref, t.fresh.ok, t.freshErr
}

// read gets the ConfigMap from the API server and evaluates it.
func (t *Tracker) read(ctx context.Context) (state, error) {
	cm, err := t.client.CoreV1().ConfigMaps(t.cmName.Namespace).Get(ctx, t.cmName.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return t.fromFlags(""), nil
	case err != nil:
		return state{}, fmt.Errorf("read ConfigMap %s: %w", t.cmName, err)
	}
	ref, err := fromConfigMap(cm)
	if err != nil {
		return state{}, fmt.Errorf("%w: %s: %v", ErrInvalidConfigMap, t.cmName, err)
	}
	return state{ref: ref, ok: true}, nil
}

func (t *Tracker) state() state {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.st
}

// refresh recomputes the active issuer from the informer's store and logs a
// change; an invalid ConfigMap is logged (and recorded) once.
func (t *Tracker) refresh() {
	// One refresh at a time (the informer's handler and the first one after
	// sync), so that an older read never overwrites a newer one.
	t.refreshMu.Lock()
	defer t.refreshMu.Unlock()
	cm, st, invalid := t.evaluate()
	t.mu.Lock()
	first := !t.refreshed
	if invalid != nil && !first {
		st = t.st // keep the last valid state
		st.reason = fmt.Sprintf("ConfigMap %s invalid: %v; keeping the last valid state", t.cmName, invalid)
	}
	newInvalid := invalid != nil && invalid.Error() != t.invalid
	if invalid == nil {
		t.invalid = ""
	} else {
		t.invalid = invalid.Error()
	}
	changed := st.ref != t.st.ref || st.ok != t.st.ok
	if changed && !first {
		// The first read is no switch: the flags' issuer, assumed until
		// then, was never active for anyone else.
		if t.st.ok {
			t.prev = t.st
		} else {
			t.prev = state{}
		}
		t.changedAt = t.now()
	}
	if changed {
		close(t.changed)
		t.changed = make(chan struct{})
	}
	t.st, t.refreshed = st, true
	prev := t.prev
	t.mu.Unlock()

	logger := t.logger
	if newInvalid {
		logger.Error(invalid, "Runtime issuance ConfigMap is invalid; ignoring it", "configmap", klog.KObj(cm), "active", activeString(st))
		t.recordInvalid(cm, invalid, st)
	}
	if !changed && !first {
		return
	}
	switch {
	case !st.ok:
		logger.Info("No issuer is active; requests cannot be issued until one is configured", "reason", st.reason)
	case first:
		logger.Info("Active issuer", "issuer", RefString(st.ref), "reason", st.reason)
	default:
		logger.Info("Active issuer changed", "issuer", RefString(st.ref), "previous", activeString(prev), "reason", st.reason)
	}
}

func (t *Tracker) recordInvalid(cm *corev1.ConfigMap, invalid error, st state) {
	if t.recorder != nil {
		t.recorder.Eventf(cm, corev1.EventTypeWarning, EventInvalid,
			"Ignored: %v (keys %s, %s and %s are all required and non-empty); the active issuer stays %s",
			invalid, keyName, keyKind, keyGroup, activeString(st))
	}
}

// RecordInvalid records the Warning Event for the ConfigMap's problem again,
// if it has one now: for an approver that starts leading after the problem
// was first seen (only the leader records).
func (t *Tracker) RecordInvalid() {
	if t.informer == nil {
		return
	}
	t.refreshMu.Lock()
	defer t.refreshMu.Unlock()
	if cm, _, invalid := t.evaluate(); invalid != nil {
		t.recordInvalid(cm, invalid, t.state())
	}
}

// evaluate reads the ConfigMap from the informer's store: the state it makes
// active, or what is wrong with it (then cm is the ConfigMap).
func (t *Tracker) evaluate() (cm *corev1.ConfigMap, st state, invalid error) {
	obj, exists, err := t.informer.GetStore().GetByKey(t.cmName.String())
	if err != nil || !exists {
		return nil, t.fromFlags(fmt.Sprintf("ConfigMap %s not found", t.cmName)), nil
	}
	cm, isCM := obj.(*corev1.ConfigMap)
	if !isCM {
		return nil, t.fromFlags(fmt.Sprintf("ConfigMap %s unreadable", t.cmName)), nil
	}
	ref, err := fromConfigMap(cm)
	if err != nil {
		return cm, t.fromFlags(fmt.Sprintf("ConfigMap %s invalid: %v", t.cmName, err)), err
	}
	return cm, state{ref: ref, ok: true, reason: fmt.Sprintf("from ConfigMap %s", t.cmName)}, nil
}

func (t *Tracker) fromFlags(why string) state {
	if why != "" {
		why += "; "
	}
	if t.flags.Name == "" {
		return state{reason: why + "no issuer in flags"}
	}
	return state{ref: t.flags, ok: true, reason: why + "using the issuer from flags"}
}

// fromConfigMap reads an issuer from a runtime issuance ConfigMap; every key
// must be present and non-empty.
func fromConfigMap(cm *corev1.ConfigMap) (cmmeta.IssuerReference, error) {
	var missing []string
	get := func(key string) string {
		v := cm.Data[key]
		if v == "" {
			missing = append(missing, key)
		}
		return v
	}
	ref := cmmeta.IssuerReference{Name: get(keyName), Kind: get(keyKind), Group: get(keyGroup)}
	if len(missing) > 0 {
		return cmmeta.IssuerReference{}, fmt.Errorf("missing or empty keys: %s", strings.Join(missing, ", "))
	}
	if err := Validate(ref); err != nil {
		return cmmeta.IssuerReference{}, err
	}
	return ref, nil
}

// KeyError says which key (or the flag of the same name) of an issuer
// reference is wrong, and how.
type KeyError struct{ Key, Problem string }

func (e *KeyError) Error() string { return e.Key + ": " + e.Problem }

// Validate checks that an issuer reference could name a cert-manager issuer:
// the name and the group are DNS subdomains, the kind an identifier. It
// keeps what an operator mistyped out of requests and logs.
func Validate(ref cmmeta.IssuerReference) error {
	if errs := validation.IsDNS1123Subdomain(ref.Name); len(errs) > 0 {
		return &KeyError{keyName, fmt.Sprintf("%q: %s", bounded(ref.Name), strings.Join(errs, "; "))}
	}
	if !isKind(ref.Kind) {
		return &KeyError{keyKind, fmt.Sprintf("%q: want a kind such as ClusterIssuer (letters and digits, starting with a letter, at most 63)", bounded(ref.Kind))}
	}
	if errs := validation.IsDNS1123Subdomain(ref.Group); len(errs) > 0 {
		return &KeyError{keyGroup, fmt.Sprintf("%q: %s", bounded(ref.Group), strings.Join(errs, "; "))}
	}
	return nil
}

func isKind(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, r := range s {
		letter := (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !letter && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// bounded cuts a value echoed in a message to a readable length.
func bounded(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// RefString names an issuer in logs: <kind>.<group>/<name>.
func RefString(ref cmmeta.IssuerReference) string {
	return ref.Kind + "." + ref.Group + "/" + ref.Name
}

func activeString(st state) string {
	if !st.ok {
		return "none"
	}
	return RefString(st.ref)
}
