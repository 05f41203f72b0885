package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/approver/metrics"
	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// SettingsSource tells the active settings (a settings.Tracker).
type SettingsSource interface {
	Current() settings.Settings
	// Previous are the settings active before recent changes that a
	// request created at created may still carry, newest first.
	Previous(created time.Time) []settings.Settings
	// Fresh are the active settings read from the API server, not a
	// cache, by a read started at notBefore or later.
	Fresh(ctx context.Context, notBefore time.Time) (settings.Settings, error)
	HasSynced() bool
}

// Options configure a Controller.
type Options struct {
	Client cmclient.Interface
	// ListWatch lists and watches the requests to decide (NewListWatch).
	ListWatch cache.ListerWatcher
	// Settings are the trust domain, duration and issuer every request
	// must carry.
	Settings SettingsSource
	Recorder record.EventRecorder
	Metrics  *metrics.Metrics // may be nil
	Now      func() time.Time // defaults to time.Now

	// Modes are the request modes accepted; at least one.
	Modes checks.Modes
	// DriverUsername is the user of the driver's ServiceAccount, whose
	// requests are node-bound; required with Modes.NodeBound.
	DriverUsername string
	// DriverName is the CSI driver a node-bound request's pod must mount.
	DriverName string
	// Pods reads the pod of each node-bound request; required with
	// Modes.NodeBound.
	Pods corev1client.PodsGetter
}

// Controller decides pending CertificateRequests.
type Controller struct {
	client                 cmclient.Interface
	listWatch              cache.ListerWatcher
	cache                  *requestCache
	settings               SettingsSource
	recorder               record.EventRecorder
	metrics                *metrics.Metrics
	now                    func() time.Time
	modes                  checks.Modes
	driverUser, driverName string
	pods                   corev1client.PodsGetter

	runMu sync.Mutex                // one Run at a time (one leadership term)
	queue atomic.Pointer[workQueue] // nil while not running: standing by
}

type workQueue struct {
	workqueue.TypedRateLimitingInterface[cache.ObjectName]
}

// NewListWatch lists and watches only the requests labelled for
// driverName, filtered by the API server: memory does not grow with other
// CertificateRequests. A list keeps only the pending ones, trimmed, page by
// page: a restart among many labelled requests holds one page at a time.
func NewListWatch(client cmclient.Interface, driverName string) cache.ListerWatcher {
	return spiffe.RequestListWatch(client, labels.Set{spiffe.DriverLabel: driverName}.String(),
		func(cr *cmapi.CertificateRequest) (*cmapi.CertificateRequest, bool) {
			kept, _ := transform(cr) // what the cache keeps: a pending request, trimmed
			tr, ok := kept.(*cmapi.CertificateRequest)
			return tr, ok
		})
}

// New returns a Controller; Watch fills its cache.
func New(opts Options) (*Controller, error) {
	switch {
	case opts.Client == nil:
		return nil, errors.New("controller: Client is required")
	case opts.ListWatch == nil:
		return nil, errors.New("controller: ListWatch is required")
	case opts.Settings == nil:
		return nil, errors.New("controller: Settings is required")
	case opts.Recorder == nil:
		return nil, errors.New("controller: Recorder is required")
	case !opts.Modes.NodeBound && !opts.Modes.PodToken:
		return nil, errors.New("controller: at least one request mode is required")
	case opts.Modes.NodeBound && (opts.Pods == nil || opts.DriverUsername == "" || opts.DriverName == ""):
		return nil, errors.New("controller: node-bound mode needs Pods, DriverUsername and DriverName")
	}
	c := &Controller{
		client:    opts.Client,
		listWatch: opts.ListWatch,
		settings:  opts.Settings,
		recorder:  opts.Recorder,
		metrics:   opts.Metrics,
		now:       opts.Now,
		modes:     opts.Modes,

		driverUser: opts.DriverUsername,
		driverName: opts.DriverName,
		pods:       opts.Pods,
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.cache = newRequestCache(c.now, c.enqueue)
	return c, nil
}

// HasSynced reports whether the request cache and the active issuer are
// loaded: the approver is ready, leading or standing by.
func (c *Controller) HasSynced() bool {
	return c.cache.hasSynced() && c.settings.HasSynced()
}

// QueueDepth is the number of requests waiting; 0 while standing by.
func (c *Controller) QueueDepth() int {
	if q := c.queue.Load(); q != nil {
		return q.Len()
	}
	return 0
}

// pending reports whether a request is the driver's and still undecided.
func pending(cr *cmapi.CertificateRequest) bool {
	if _, ok := cr.Annotations[spiffe.IdentityAnnotation]; !ok {
		return false
	}
	for _, c := range cr.Status.Conditions {
		if c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied {
			return false // decided, whatever the status: a decision is final
		}
	}
	return true
}

// enqueue queues a pending request while running; the cache holds no
// other. While standing by it does nothing: Run queues what is pending.
func (c *Controller) enqueue(key cache.ObjectName) {
	if q := c.queue.Load(); q != nil {
		q.Add(key)
	}
}

// Run waits for the caches, then decides requests with the given number of
// workers until ctx is done, and returns once every worker has stopped. It
// may be called again (a new leadership term) after it returns.
func (c *Controller) Run(ctx context.Context, workers int) error {
	if workers < 1 {
		return fmt.Errorf("controller: workers must be at least 1, got %d", workers)
	}
	c.runMu.Lock()
	defer c.runMu.Unlock()
	logger := klog.FromContext(ctx)
	if !cache.WaitForNamedCacheSyncWithContext(ctx, c.HasSynced) {
		return nil // ctx done
	}

	// Per-item backoff from 5ms to 30s: a request that cannot be decided
	// yet (no issuer, API errors) is retried without hammering the API and
	// is decided within 30s of the cause going away. Namespaces take turns
	// (fairQueue).
	const name = "certificaterequests"
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[cache.ObjectName](5*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{
			Name: name,
			DelayingQueue: workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[cache.ObjectName]{
				Name:  name,
				Queue: workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[cache.ObjectName]{Name: name, Queue: newFairQueue()}),
			}),
		})
	c.queue.Store(&workQueue{q})
	// Requests that arrived while standing by: enqueue dropped them.
	for _, key := range c.cache.names() {
		q.Add(key)
	}

	logger.Info("Starting workers", "count", workers, "pending", q.Len())
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				for c.processNextWorkItem(ctx, q) {
				}
			}, time.Second)
		})
	}
	<-ctx.Done()
	q.ShutDown() // unblocks workers waiting in Get
	wg.Wait()
	c.queue.Store(nil)
	logger.Info("Workers stopped")
	return nil
}

func (c *Controller) processNextWorkItem(ctx context.Context, q workqueue.TypedRateLimitingInterface[cache.ObjectName]) bool {
	key, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(key)
	err := c.sync(ctx, key)
	switch {
	case err == nil:
		q.Forget(key)
	case apierrors.IsConflict(err) || ctx.Err() != nil:
		// A newer version is on its way through the informer, or we are
		// stopping: retry quietly.
		klog.FromContext(ctx).V(4).Info("Retrying", "certificaterequest", klog.KRef(key.Namespace, key.Name), "err", printable(err))
		q.AddRateLimited(key)
	default:
		utilruntime.HandleErrorWithContext(ctx, errors.New(printable(err)), "Cannot decide CertificateRequest yet; retrying",
			"certificaterequest", klog.KRef(key.Namespace, key.Name), "retries", q.NumRequeues(key))
		q.AddRateLimited(key)
	}
	return true
}
