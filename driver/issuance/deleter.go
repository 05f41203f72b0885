package issuance

import (
	"context"
	"sync"
	"time"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/logkey"
)

// DeleterOptions tune a Deleter; the zero value is the production one.
type DeleterOptions struct {
	// Timeout bounds one DELETE (default 10 s).
	Timeout time.Duration
	// RetryBase and RetryMax bound the per-request backoff between failed
	// attempts (default 250 ms, doubling up to 1 min).
	RetryBase, RetryMax time.Duration
	// Drain bounds how long Run goes on deleting what is queued once its
	// context is done (default 5 s).
	Drain time.Duration
	// MaxPending bounds the requests remembered for deletion (default
	// 10,000); beyond it a request is left to its pod's garbage collection.
	MaxPending int
}

// Deleter deletes CertificateRequests in the background with the driver's
// own credentials, so that a pod never waits for the delete of a request
// whose certificate is already written, and a delete that fails is retried
// with a growing backoff until it succeeds or the request is gone. One
// worker: under the client's rate limit, deletions never crowd out the
// creates a pod is waiting for. What is still queued at shutdown was made by
// this run, so the next start's sweep deletes it.
type Deleter struct {
	client cmclient.Interface
	opts   DeleterOptions
	queue  workqueue.TypedRateLimitingInterface[types.NamespacedName]

	mu      sync.Mutex
	pending map[types.NamespacedName]struct{}
	closed  bool
}

// NewDeleter returns a Deleter; call Run.
func NewDeleter(client cmclient.Interface, opts DeleterOptions) *Deleter {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = 250 * time.Millisecond
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = time.Minute
	}
	if opts.Drain <= 0 {
		opts.Drain = 5 * time.Second
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 10000
	}
	return &Deleter{
		client: client,
		opts:   opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[types.NamespacedName](opts.RetryBase, opts.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "certificaterequest-deletions"}),
		pending: map[types.NamespacedName]struct{}{},
	}
}

// Delete queues the deletion of a request and returns at once. The logger
// of ctx says whose request it is; ctx's deadline plays no part.
func (d *Deleter) Delete(ctx context.Context, namespace, name string) {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	switch _, queued := d.pending[key]; {
	case queued:
		return
	case d.closed:
		logger.Info("Driver stopping: the CertificateRequest is left for the next start's sweep", logkey.CertificateRequest, klog.KRef(namespace, name))
		return
	case len(d.pending) >= d.opts.MaxPending:
		logger.Error(nil, "Too many CertificateRequest deletions pending; this one is left to its pod's garbage collection",
			logkey.CertificateRequest, klog.KRef(namespace, name), "pending", len(d.pending))
		return
	}
	d.pending[key] = struct{}{}
	d.queue.Add(key)
}

// Pending is the number of requests queued for deletion or being retried.
func (d *Deleter) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}

// Run deletes until ctx is done, then goes on for at most the drain bound
// with what is queued and not waiting for a retry.
func (d *Deleter) Run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	work, cancel := context.WithCancel(klog.NewContext(context.WithoutCancel(ctx), logger))
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d.next(work) {
		}
	}()
	<-ctx.Done()
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	// Queued items are still handed out after ShutDown; those waiting for a
	// retry are dropped.
	d.queue.ShutDown()
	stop := time.AfterFunc(d.opts.Drain, cancel)
	defer stop.Stop()
	<-done
	if left := d.Pending(); left > 0 {
		logger.Info("CertificateRequest deletions left for the next start's sweep", "count", left)
	}
}

// next handles one queued request; false once the queue is shut down and
// empty.
func (d *Deleter) next(ctx context.Context) bool {
	key, shutdown := d.queue.Get()
	if shutdown {
		return false
	}
	defer d.queue.Done(key)
	if ctx.Err() != nil {
		return true // the drain is over: counted as left by Run, not tried
	}
	logger := klog.FromContext(ctx)
	ref := klog.KRef(key.Namespace, key.Name)
	dctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	err := d.client.CertmanagerV1().CertificateRequests(key.Namespace).Delete(dctx, key.Name, metav1.DeleteOptions{})
	cancel()
	if err == nil || apierrors.IsNotFound(err) {
		d.queue.Forget(key)
		d.mu.Lock()
		delete(d.pending, key)
		d.mu.Unlock()
		logger.V(4).Info("Deleted CertificateRequest", logkey.CertificateRequest, ref)
		return true
	}
	// Retried until it is gone: the first failure of each request is logged
	// at the shipped verbosity, the retries at 2.
	failures := d.queue.NumRequeues(key)
	if failures == 0 {
		logger.Error(err, "Could not delete CertificateRequest; retrying with a backoff", logkey.CertificateRequest, ref)
	} else {
		logger.V(2).Info("Could not delete CertificateRequest; retrying", logkey.CertificateRequest, ref, "err", err, logkey.Failures, failures+1)
	}
	d.queue.AddRateLimited(key)
	return true
}
