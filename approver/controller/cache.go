package controller

import (
	"context"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/svid-csi/svid-csi/approver/checks"
)

// requestCache is the approver's view of the requests it watches: the
// undecided ones only, each trimmed to what a decision reads (checks.Trim),
// with the time this replica first saw it. A decided request costs nothing
// here, so a flood of requests that are denied, or a cluster's worth of
// approved ones not yet deleted, does not grow the approver; a flood of
// undecided ones costs a few KiB each, whatever their authors put in them,
// until they are decided. It is the store a client-go Reflector writes to.
type requestCache struct {
	now    func() time.Time
	notify func(cache.ObjectName) // called with each pending request put, outside the lock

	mu      sync.RWMutex
	pending map[string]entry // by namespace/name
	synced  bool             // a first list has been stored
}

type entry struct {
	cr   *cmapi.CertificateRequest // trimmed; never modified
	seen time.Time
}

func newRequestCache(now func() time.Time, notify func(cache.ObjectName)) *requestCache {
	return &requestCache{now: now, notify: notify, pending: map[string]entry{}}
}

// transform is what the cache keeps of an object: a pending request
// trimmed, and of anything else only its key. The reflector also applies it
// to the objects of a first list as they stream in (cache.TransformingStore).
// (client-go's watch-list consistency detector, a debugging mode enabled by
// KUBE_WATCHLIST_INCONSISTENCY_DETECTOR, expects objects, not keys: leave it
// off.)
func transform(obj any) (any, error) {
	cr, ok := obj.(*cmapi.CertificateRequest)
	if !ok {
		return obj, nil
	}
	if !pending(cr) {
		return cache.ExplicitKey(cache.MetaObjectToName(cr).String()), nil
	}
	return checks.Trim(cr), nil
}

// Transformer makes the cache a cache.TransformingStore.
func (c *requestCache) Transformer() cache.TransformFunc { return transform }

func (c *requestCache) Add(obj any) error    { return c.put(obj) }
func (c *requestCache) Update(obj any) error { return c.put(obj) }
func (c *requestCache) Resync() error        { return nil }

func (c *requestCache) Delete(obj any) error {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.pending, key)
	c.mu.Unlock()
	return nil
}

func (c *requestCache) put(obj any) error {
	obj, _ = transform(obj)
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		return err
	}
	cr, isPending := obj.(*cmapi.CertificateRequest)
	c.mu.Lock()
	if !isPending {
		delete(c.pending, key)
		c.mu.Unlock()
		return nil
	}
	e, seen := c.pending[key]
	if !seen {
		e.seen = c.now()
	}
	e.cr = cr
	c.pending[key] = e
	c.mu.Unlock()
	c.notify(cache.MetaObjectToName(cr))
	return nil
}

// Replace stores a full list: what it does not hold is gone or decided.
func (c *requestCache) Replace(objs []any, _ string) error {
	now := c.now()
	c.mu.Lock()
	old := c.pending
	c.pending = make(map[string]entry, len(old))
	for _, obj := range objs {
		obj, _ = transform(obj)
		cr, ok := obj.(*cmapi.CertificateRequest)
		if !ok {
			continue
		}
		key := cache.MetaObjectToName(cr).String()
		e, seen := old[key]
		if !seen {
			e.seen = now
		}
		e.cr = cr
		c.pending[key] = e
	}
	c.synced = true
	names := c.namesLocked()
	c.mu.Unlock()
	for _, n := range names {
		c.notify(n)
	}
	return nil
}

// get returns the pending request ns/name and when it was first seen.
func (c *requestCache) get(key cache.ObjectName) (*cmapi.CertificateRequest, time.Time, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.pending[key.String()]
	return e.cr, e.seen, ok
}

// forget drops a request cert-manager will not let be decided (refused,
// foreign), if the cache still holds the version decided on: it is not
// decided again, and costs nothing, until it changes (the watch puts it
// back) or a relist. A newer version, put since, stays.
func (c *requestCache) forget(cr *cmapi.CertificateRequest) {
	key := cache.MetaObjectToName(cr).String()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.pending[key]; ok && e.cr.ResourceVersion == cr.ResourceVersion {
		delete(c.pending, key)
	}
}

// names lists the pending requests.
func (c *requestCache) names() []cache.ObjectName {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.namesLocked()
}

func (c *requestCache) namesLocked() []cache.ObjectName {
	names := make([]cache.ObjectName, 0, len(c.pending))
	for _, e := range c.pending {
		names = append(names, cache.MetaObjectToName(e.cr))
	}
	return names
}

func (c *requestCache) hasSynced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced
}

// Watch fills the cache from the API server until ctx is done: a list,
// then a watch, relisting when the watch cannot resume.
func (c *Controller) Watch(ctx context.Context) {
	cache.NewReflectorWithOptions(c.listWatch, &cmapi.CertificateRequest{}, c.cache,
		cache.ReflectorOptions{Name: "certificaterequests", TypeDescription: "CertificateRequest"}).RunWithContext(ctx)
}
