package issuance

import (
	"context"
	"testing"
	"time"
)

// A freed slot goes to a waiting publish before any renewal that waited
// longer, and a waiter that gives up takes no slot with it.
func TestSlotsServePublishesFirst(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	if err := s.acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 3)
	wait := func(name string, renewal bool) {
		go func() {
			if err := s.acquire(ctx, renewal); err != nil {
				t.Error(err)
				return
			}
			s.release()
			order <- name
		}()
	}
	wait("renewal", true)
	waitWaiting(t, s, 0, 1)
	gctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- s.acquire(gctx, false) }()
	waitWaiting(t, s, 1, 1)
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("a cancelled wait got a slot")
	}
	wait("publish", false)
	waitWaiting(t, s, 1, 1)
	s.release()
	if first, second := <-order, <-order; first != "publish" || second != "renewal" {
		t.Fatalf("served %s then %s, want the publish first", first, second)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.free != 1 {
		t.Errorf("%d free slots after all released, want 1", s.free)
	}
}

// At most size holders at once.
func TestSlotsBound(t *testing.T) {
	s := newSlots(2)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	for range 2 {
		if err := s.acquire(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.acquire(ctx, false); err == nil {
		t.Fatal("a third holder got a slot of two")
	}
}

// waitWaiting waits until publishes and renewals are waiting.
func waitWaiting(t *testing.T, s *slots, publishes, renewals int) {
	t.Helper()
	eventually(t, "the waiters", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.waiting[0]) == publishes && len(s.waiting[1]) == renewals
	})
}
