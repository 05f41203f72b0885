package issuer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Keys of the runtime issuance ConfigMap; all are required and non-empty.
const (
	keyName  = "issuer-name"
	keyKind  = "issuer-kind"
	keyGroup = "issuer-group"
)

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
}

// Tracker knows the active issuer. It watches only the one ConfigMap it is
// given, never a cluster-wide cache.
type Tracker struct {
	flags    cmmeta.IssuerReference
	cmName   types.NamespacedName
	informer cache.SharedIndexInformer // nil without a ConfigMap
	handler  cache.ResourceEventHandlerRegistration
	logger   klog.Logger // set by Run before the informer starts

	mu        sync.RWMutex
	ref       cmmeta.IssuerReference
	ok        bool
	reason    string
	refreshed bool // the ConfigMap has been looked at once: log the first state
	synced    atomic.Bool
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
	t := &Tracker{flags: opts.Flags, cmName: opts.ConfigMap}
	if opts.Flags.Name != "" && (opts.Flags.Kind == "" || opts.Flags.Group == "") {
		return nil, fmt.Errorf("issuer %q from flags needs a kind and a group", opts.Flags.Name)
	}
	t.ref, t.ok, t.reason = t.fromFlags("started")
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
		if ref, ok, reason := t.state(); ok {
			logger.Info("Active issuer", "issuer", refString(ref), "reason", reason)
		} else {
			logger.Info("No issuer is configured; requests cannot be issued until one is", "reason", reason)
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
	ref, ok, _ = t.state()
	return ref, ok
}

// state is Current with the reason the issuer is active or missing, for logs.
func (t *Tracker) state() (ref cmmeta.IssuerReference, ok bool, reason string) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.ref, t.ok, t.reason
}

// refresh recomputes the active issuer from the informer's store and logs a
// change.
func (t *Tracker) refresh() {
	t.mu.Lock()
	ref, ok, reason := t.evaluate()
	first := !t.refreshed
	changed := ref != t.ref || ok != t.ok || first
	t.ref, t.ok, t.reason, t.refreshed = ref, ok, reason, true
	t.mu.Unlock()
	if !changed {
		return
	}
	logger := t.logger
	if ok {
		msg := "Active issuer changed"
		if first {
			msg = "Active issuer"
		}
		logger.Info(msg, "issuer", refString(ref), "reason", reason)
	} else {
		logger.Info("No issuer is active; requests cannot be issued until one is configured", "reason", reason)
	}
}

func (t *Tracker) evaluate() (cmmeta.IssuerReference, bool, string) {
	obj, exists, err := t.informer.GetStore().GetByKey(t.cmName.String())
	if err != nil || !exists {
		return t.fromFlags(fmt.Sprintf("ConfigMap %s not found", t.cmName))
	}
	cm, isCM := obj.(*corev1.ConfigMap)
	if !isCM {
		return t.fromFlags(fmt.Sprintf("ConfigMap %s unreadable", t.cmName))
	}
	ref, err := fromConfigMap(cm)
	if err != nil {
		return t.fromFlags(fmt.Sprintf("ConfigMap %s invalid: %v", t.cmName, err))
	}
	return ref, true, fmt.Sprintf("from ConfigMap %s", t.cmName)
}

func (t *Tracker) fromFlags(why string) (cmmeta.IssuerReference, bool, string) {
	if t.flags.Name == "" {
		return cmmeta.IssuerReference{}, false, why + "; no issuer in flags"
	}
	return t.flags, true, why + "; using the issuer from flags"
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
	return ref, nil
}

func refString(ref cmmeta.IssuerReference) string {
	return ref.Kind + "." + ref.Group + "/" + ref.Name
}
