package issuance

import (
	"context"
	"slices"
	"sync"
)

// slots bound the CertificateRequest creates in flight on the node: what
// protects the API server from a node's burst (a reboot, a rollout). Waits
// for the approver and the issuer hold none. A publish waiting for a slot is
// served before any renewal: its pod cannot start without the SVID, while a
// renewal still has a third of its certificate's lifetime.
type slots struct {
	size int

	mu      sync.Mutex
	free    int
	waiting [2][]chan struct{} // by class: publish, then renewal
}

func newSlots(n int) *slots { return &slots{size: n, free: n} }

// acquire takes a slot, waiting until ctx is done.
func (s *slots) acquire(ctx context.Context, renewal bool) error {
	class := 0
	if renewal {
		class = 1
	}
	s.mu.Lock()
	if s.free > 0 { // a free slot means nobody waits: release hands slots over
		s.free--
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waiting[class] = append(s.waiting[class], ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		i := slices.Index(s.waiting[class], ch)
		if i >= 0 {
			s.waiting[class] = slices.Delete(s.waiting[class], i, i+1)
		}
		s.mu.Unlock()
		if i < 0 { // handed a slot meanwhile: pass it on
			s.release()
		}
		return ctx.Err()
	}
}

// release gives the slot to the first waiter of the first class, or frees it.
func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.waiting {
		if len(s.waiting[c]) > 0 {
			ch := s.waiting[c][0]
			s.waiting[c] = s.waiting[c][1:]
			close(ch)
			return
		}
	}
	s.free++
}
