// Package renew decides when certificates are renewed and runs that work for
// every volume on one timer: a heap ordered by due time, driven by an
// injectable clock, instead of a goroutine and a ticker per volume.
package renew

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// RenewAt is when a certificate valid from notBefore to notAfter is renewed:
// at 2/3 of its lifetime, moved earlier by jitter in [0, 1) times a tenth of
// the lifetime, so pods started together do not renew together.
func RenewAt(notBefore, notAfter time.Time, jitter float64) time.Time {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return notBefore
	}
	at := notBefore.Add(life * 2 / 3)
	return at.Add(-time.Duration(jitter * float64(life/10)))
}

// Backoff spaces out retries after failures: exponential, capped, with jitter.
type Backoff struct {
	Base, Max time.Duration
}

// DefaultBackoff starts at 5 s and never waits more than 5 min.
var DefaultBackoff = Backoff{Base: 5 * time.Second, Max: 5 * time.Minute}

// Delay is the wait after the given number of consecutive failures (>= 1):
// d = min(Max, Base * 2^(failures-1)), then a uniform pick in [d/2, d) from
// jitter in [0, 1).
func (b Backoff) Delay(failures int, jitter float64) time.Duration {
	d := b.Base
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d/2 + time.Duration(jitter*float64(d/2))
}

// Func is the work run when a key falls due. It runs in its own goroutine and
// reschedules the key itself if it wants to run again.
type Func func(ctx context.Context, key string)

// Scheduler runs Func for keys at their due times, with one timer for all.
type Scheduler struct {
	clock clock.Clock
	fn    Func

	mu    sync.Mutex
	items itemHeap
	index map[string]*item
	wake  chan struct{}
}

// New returns a Scheduler; call Run to start it.
func New(clk clock.Clock, fn Func) *Scheduler {
	return &Scheduler{clock: clk, fn: fn, index: map[string]*item{}, wake: make(chan struct{}, 1)}
}

// Schedule makes key due at at, replacing any earlier schedule of it.
func (s *Scheduler) Schedule(key string, at time.Time) {
	s.mu.Lock()
	if it, ok := s.index[key]; ok {
		it.at = at
		heap.Fix(&s.items, it.pos)
	} else {
		it := &item{key: key, at: at}
		heap.Push(&s.items, it)
		s.index[key] = it
	}
	s.mu.Unlock()
	s.poke()
}

// Cancel forgets key; a run already started is not interrupted.
func (s *Scheduler) Cancel(key string) {
	s.mu.Lock()
	if it, ok := s.index[key]; ok {
		heap.Remove(&s.items, it.pos)
		delete(s.index, key)
	}
	s.mu.Unlock()
	s.poke()
}

// Due returns when key is due, if it is scheduled.
func (s *Scheduler) Due(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if it, ok := s.index[key]; ok {
		return it.at, true
	}
	return time.Time{}, false
}

// Len is the number of scheduled keys.
func (s *Scheduler) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run dispatches due keys until ctx is done, then waits for running work.
func (s *Scheduler) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		now := s.clock.Now()
		var due []string
		var next time.Time
		s.mu.Lock()
		for len(s.items) > 0 && !s.items[0].at.After(now) {
			it := heap.Pop(&s.items).(*item)
			delete(s.index, it.key)
			due = append(due, it.key)
		}
		if len(s.items) > 0 {
			next = s.items[0].at
		}
		s.mu.Unlock()
		for _, key := range due {
			wg.Go(func() { s.fn(ctx, key) })
		}

		var timer clock.Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			timer = s.clock.NewTimer(next.Sub(now))
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

type item struct {
	key string
	at  time.Time
	pos int
}

type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h itemHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i, j
}
func (h *itemHeap) Push(x any) {
	it := x.(*item)
	it.pos = len(*h)
	*h = append(*h, it)
}
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}
