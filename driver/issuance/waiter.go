package issuance

import (
	"context"
	"errors"
	"fmt"
	"sync"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// errDeleted is returned by wait when the request disappeared first.
var errDeleted = errors.New("the CertificateRequest was deleted before it was issued")

// errIssuerChanged is returned by wait when the active issuer changed first.
var errIssuerChanged = errors.New("the active issuer changed")

// Waiter watches this node's CertificateRequests, and only those (a label
// selector on driver and node), with one informer, and wakes whoever waits
// for a request when an event about it arrives. There is no polling.
type Waiter struct {
	informer cache.SharedIndexInformer

	mu      sync.Mutex
	waiters map[string]*waiter // by namespace/name
}

type waiter struct {
	wake    chan struct{} // capacity 1: a pending wake-up is never lost
	deleted bool
}

// NewWaiter builds the informer with the driver's own client.
func NewWaiter(client cmclient.Interface, driverName, nodeName string) (*Waiter, error) {
	selector := labels.Set{
		spiffe.DriverLabel: driverName,
		spiffe.NodeLabel:   spiffe.NodeLabelValue(nodeName),
	}.AsSelector().String()
	w := &Waiter{
		informer: cache.NewSharedIndexInformerWithOptions(
			spiffe.RequestListWatch(client, selector, nil), &cmapi.CertificateRequest{}, cache.SharedIndexInformerOptions{}),
		waiters: map[string]*waiter{},
	}
	if err := w.informer.SetTransform(strip); err != nil {
		return nil, fmt.Errorf("set CertificateRequest transform: %w", err)
	}
	_, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.notify(obj, false) },
		UpdateFunc: func(_, obj any) { w.notify(obj, false) },
		DeleteFunc: func(obj any) { w.notify(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("watch CertificateRequests: %w", err)
	}
	return w, nil
}

// strip drops what the driver never reads from cached requests: managed
// fields and the CSR itself. It returns a shallow copy rather than writing
// to an object the watch source may still share.
func strip(obj any) (any, error) {
	cr, ok := obj.(*cmapi.CertificateRequest)
	if !ok || (cr.ManagedFields == nil && cr.Spec.Request == nil) {
		return obj, nil
	}
	c := *cr
	c.ManagedFields = nil
	c.Spec.Request = nil
	return &c, nil
}

// Run runs the informer until ctx is done.
func (w *Waiter) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// HasSynced reports whether the informer has listed once.
func (w *Waiter) HasSynced() bool { return w.informer.HasSynced() }

func (w *Waiter) notify(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	wt, ok := w.waiters[key]
	if !ok {
		return
	}
	if deleted {
		wt.deleted = true
	}
	select {
	case wt.wake <- struct{}{}:
	default:
	}
}

// list is every request of this node in the cache.
func (w *Waiter) list() []any { return w.informer.GetStore().List() }

// cached reports whether the informer's cache holds the request.
func (w *Waiter) cached(namespace, name string) bool {
	_, exists, err := w.informer.GetStore().GetByKey(namespace + "/" + name)
	return err == nil && exists
}

// wait blocks until the request namespace/name is issued, denied or failed,
// it is deleted, issuerChanged is closed, or ctx is done; then it returns the
// request as last seen, if it was, with ctx's error.
func (w *Waiter) wait(ctx context.Context, namespace, name string, issuerChanged <-chan struct{}) (*cmapi.CertificateRequest, error) {
	key := namespace + "/" + name
	wt := &waiter{wake: make(chan struct{}, 1)}
	w.mu.Lock()
	w.waiters[key] = wt
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.waiters, key)
		w.mu.Unlock()
	}()
	var last *cmapi.CertificateRequest
	for {
		// Registered first, read second: an event between the two still wakes us.
		obj, exists, err := w.informer.GetStore().GetByKey(key)
		if err != nil {
			return nil, fmt.Errorf("read CertificateRequest %s from the cache: %w", key, err)
		}
		if exists {
			if cr, ok := obj.(*cmapi.CertificateRequest); ok {
				if o, _ := outcomeOf(cr); o != pending {
					return cr, nil
				}
				last = cr
			}
		} else {
			w.mu.Lock()
			gone := wt.deleted
			w.mu.Unlock()
			if gone {
				return nil, errDeleted
			}
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-issuerChanged:
			return nil, errIssuerChanged
		case <-wt.wake:
		}
	}
}
