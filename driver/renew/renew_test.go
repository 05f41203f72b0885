package renew

import (
	"context"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(time.Hour)
	for _, tc := range []struct {
		jitter float64
		want   time.Duration
	}{{0, 40 * time.Minute}, {0.5, 37 * time.Minute}, {0.999999, 34*time.Minute + 360*time.Microsecond}} {
		got := RenewAt(nb, na, tc.jitter).Sub(nb)
		if got.Round(time.Millisecond) != tc.want.Round(time.Millisecond) {
			t.Errorf("jitter %v: renew after %v, want %v", tc.jitter, got, tc.want)
		}
	}
	// Always within the window [2/3 - 1/10, 2/3] of the actual lifetime.
	for i := range 100 {
		at := RenewAt(nb, nb.Add(24*time.Hour), float64(i)/100)
		if at.Before(nb.Add(16*time.Hour-144*time.Minute)) || at.After(nb.Add(16*time.Hour)) {
			t.Errorf("renew at %v outside the window", at.Sub(nb))
		}
	}
	if got := RenewAt(na, nb, 0.5); !got.Equal(na) {
		t.Errorf("inverted validity: %v", got)
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Base: 5 * time.Second, Max: time.Minute}
	for _, tc := range []struct {
		failures int
		jitter   float64
		want     time.Duration
	}{
		{1, 0, 2500 * time.Millisecond}, {1, 0.5, 3750 * time.Millisecond},
		{2, 0, 5 * time.Second}, {3, 0, 10 * time.Second}, {4, 0.999, 39980 * time.Millisecond},
		{5, 0, 30 * time.Second}, {50, 0, 30 * time.Second}, {50, 0.5, 45 * time.Second},
	} {
		if got := b.Delay(tc.failures, tc.jitter); got != tc.want {
			t.Errorf("Delay(%d, %v) = %v, want %v", tc.failures, tc.jitter, got, tc.want)
		}
	}
}

func TestSchedulerOneTimerForManyKeys(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fc := clocktesting.NewFakeClock(t0)
	ran := make(chan string, 100)
	s := New(fc, func(_ context.Context, key string) { ran <- key })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	for i := range 50 {
		s.Schedule(string(rune('a'+i%26))+string(rune('0'+i/26)), t0.Add(time.Duration(50-i)*time.Minute))
	}
	s.Schedule("first", t0.Add(30*time.Second))
	s.Schedule("cancelled", t0.Add(10*time.Second))
	s.Cancel("cancelled")
	waitFor(t, func() bool { return fc.Waiters() == 1 })
	if n := fc.Waiters(); n != 1 {
		t.Fatalf("%d timers for 51 keys, want 1", n)
	}
	fc.Step(45 * time.Second)
	if got := <-ran; got != "first" {
		t.Fatalf("ran %q first", got)
	}
	select {
	case k := <-ran:
		t.Fatalf("%q ran early", k)
	case <-time.After(20 * time.Millisecond):
	}
	// Rescheduling moves a key; everything due runs once.
	s.Schedule("first", t0.Add(2*time.Hour))
	waitFor(t, func() bool { return fc.Waiters() == 1 })
	fc.Step(time.Hour)
	seen := map[string]bool{}
	for range 50 {
		select {
		case k := <-ran:
			if seen[k] {
				t.Fatalf("%q ran twice", k)
			}
			seen[k] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of 50 due keys ran", len(seen))
		}
	}
	if seen["first"] || seen["cancelled"] {
		t.Error("a rescheduled or cancelled key ran")
	}
	if _, ok := s.Due("first"); !ok || s.Len() != 1 {
		t.Errorf("Len = %d, want only the rescheduled key", s.Len())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}
