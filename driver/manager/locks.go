package manager

import (
	"context"
	"sync"
)

// volumeLocks serialises work per volume ID; different volumes proceed in
// parallel.
type volumeLocks struct {
	mu sync.Mutex
	m  map[string]*lockEntry
}

type lockEntry struct {
	ch   chan struct{} // holds a token while locked
	refs int
}

func (l *volumeLocks) entry(id string) *lockEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*lockEntry{}
	}
	e, ok := l.m[id]
	if !ok {
		e = &lockEntry{ch: make(chan struct{}, 1)}
		l.m[id] = e
	}
	e.refs++
	return e
}

func (l *volumeLocks) put(id string, e *lockEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(l.m, id)
	}
}

// TryLock locks id unless it is locked already.
func (l *volumeLocks) TryLock(id string) (unlock func(), ok bool) {
	e := l.entry(id)
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; l.put(id, e) }, true
	default:
		l.put(id, e)
		return nil, false
	}
}

// Lock locks id, waiting at most until ctx is done.
func (l *volumeLocks) Lock(ctx context.Context, id string) (unlock func(), err error) {
	e := l.entry(id)
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; l.put(id, e) }, nil
	case <-ctx.Done():
		l.put(id, e)
		return nil, ctx.Err()
	}
}
