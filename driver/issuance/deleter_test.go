package issuance

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"
)

// deleterFixture is a Deleter over a fake clientset holding the named
// requests; the first failFirst deletes fail as the API server being down.
type deleterFixture struct {
	cs      *fake.Clientset
	d       *Deleter
	ctx     context.Context
	stop    context.CancelFunc
	stopped chan struct{}
	deletes atomic.Int32
}

func newDeleterFixture(t *testing.T, failFirst int32, opts DeleterOptions, names ...string) *deleterFixture {
	t.Helper()
	var objs []runtime.Object
	for _, n := range names {
		objs = append(objs, &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: "team-a"}})
	}
	f := &deleterFixture{cs: fake.NewSimpleClientset(objs...), stopped: make(chan struct{})}
	f.cs.PrependReactor("delete", "certificaterequests", func(clienttesting.Action) (bool, runtime.Object, error) {
		time.Sleep(time.Millisecond) // a round trip
		if f.deletes.Add(1) <= failFirst {
			return true, nil, errors.New("connect: connection refused")
		}
		return false, nil, nil
	})
	if opts.RetryBase == 0 {
		opts.RetryBase, opts.RetryMax = time.Millisecond, 5*time.Millisecond
	}
	f.d = NewDeleter(f.cs, opts)
	_, ctx := ktesting.NewTestContext(t)
	f.ctx = ctx
	runCtx, cancel := context.WithCancel(ctx)
	f.stop = cancel
	go func() { defer close(f.stopped); f.d.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-f.stopped })
	return f
}

func (f *deleterFixture) left(t *testing.T) int {
	t.Helper()
	l, err := f.cs.CertmanagerV1().CertificateRequests("team-a").List(f.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

// A delete that fails is retried until the request is gone; one that is
// already gone is done.
func TestDeleterRetriesUntilGone(t *testing.T) {
	f := newDeleterFixture(t, 3, DeleterOptions{}, "a", "b")
	f.d.Delete(f.ctx, "team-a", "a")
	f.d.Delete(f.ctx, "team-a", "a") // queued once
	f.d.Delete(f.ctx, "team-a", "missing")
	eventually(t, "the deletions", func() bool { return f.d.Pending() == 0 })
	if n := f.left(t); n != 1 {
		t.Fatalf("%d requests left, want only b", n)
	}
	if n := f.deletes.Load(); n != 5 {
		t.Errorf("%d delete calls, want 3 failures, then a and missing", n)
	}
}

// Stopping drains what is queued, within the drain bound, even while every
// delete fails; what is left is counted, and later deletions are not queued.
func TestDeleterStopCountsWhatIsLeft(t *testing.T) {
	f := newDeleterFixture(t, 1<<30, DeleterOptions{Drain: 100 * time.Millisecond, RetryBase: time.Hour, RetryMax: time.Hour}, "a", "b")
	f.d.Delete(f.ctx, "team-a", "a")
	eventually(t, "the first attempt", func() bool { return f.deletes.Load() == 1 })
	f.d.Delete(f.ctx, "team-a", "b")
	start := time.Now()
	f.stop()
	select {
	case <-f.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stop took %v with a drain bound of 100 ms", d)
	}
	if f.d.Pending() != 2 {
		t.Errorf("%d pending after stop, want both still counted", f.d.Pending())
	}
	f.d.Delete(f.ctx, "team-a", "c")
	if f.d.Pending() != 2 {
		t.Error("a deletion was queued after stop")
	}
}

// What is still queued when Run's context ends is deleted while the drain
// lasts.
func TestDeleterDrainsOnStop(t *testing.T) {
	f := newDeleterFixture(t, 0, DeleterOptions{Drain: 5 * time.Second}, "a", "b", "c")
	gate := make(chan struct{})
	f.cs.PrependReactor("delete", "certificaterequests", func(clienttesting.Action) (bool, runtime.Object, error) {
		<-gate // the first delete is in flight when Run is stopped
		return false, nil, nil
	})
	var wg sync.WaitGroup
	for _, n := range []string{"a", "b", "c"} {
		wg.Go(func() { f.d.Delete(f.ctx, "team-a", n) })
	}
	wg.Wait()
	f.stop()
	time.Sleep(20 * time.Millisecond) // Run has seen its context end
	close(gate)
	<-f.stopped
	if n := f.left(t); n != 0 || f.d.Pending() != 0 {
		t.Fatalf("%d requests left, %d pending after a drained stop", n, f.d.Pending())
	}
}

// Beyond MaxPending, a deletion is left to the pod's garbage collection
// rather than grow the queue without bound.
func TestDeleterIsBounded(t *testing.T) {
	f := newDeleterFixture(t, 1<<30, DeleterOptions{MaxPending: 2, RetryBase: time.Hour, RetryMax: time.Hour})
	for _, n := range []string{"a", "b", "c"} {
		f.d.Delete(f.ctx, "team-a", n)
	}
	if p := f.d.Pending(); p != 2 {
		t.Fatalf("%d pending, want the bound of 2", p)
	}
}
