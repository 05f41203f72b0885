package run

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// within fails the test unless f returns within d.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
		panic("unreachable")
	}
}

func TestGroupFailureCancelsOthers(t *testing.T) {
	g := NewGroup(context.Background())
	boom := errors.New("boom")
	var stopped atomic.Int32
	for _, name := range []string{"a", "b"} {
		g.Go(name, func(ctx context.Context) error {
			<-ctx.Done()
			stopped.Add(1)
			return nil
		})
	}
	g.Go("failing", func(ctx context.Context) error { return boom })

	err := within(t, 5*time.Second, "Wait", g.Wait)
	if err == nil || err.Error() != "failing: boom" {
		t.Fatalf("Wait() = %v, want \"failing: boom\"", err)
	}
	if !errors.Is(err, boom) {
		t.Errorf("Wait() = %v does not wrap the member's error", err)
	}
	if n := stopped.Load(); n != 2 {
		t.Errorf("%d of 2 other members returned before Wait did", n)
	}
}

// The first failure wins; members that fail later, or fail because they were
// cancelled, do not replace it.
func TestGroupFirstFailureWins(t *testing.T) {
	g := NewGroup(context.Background())
	g.Go("second", func(ctx context.Context) error {
		<-ctx.Done()
		return errors.New("cancelled too")
	})
	g.Go("first", func(ctx context.Context) error { return errors.New("broke") })
	if err := within(t, 5*time.Second, "Wait", g.Wait); err == nil || err.Error() != "first: broke" {
		t.Fatalf("Wait() = %v, want \"first: broke\"", err)
	}
}

func TestGroupNilBeforeDoneIsUnexpected(t *testing.T) {
	g := NewGroup(context.Background())
	other := make(chan error, 1)
	g.Go("watcher", func(ctx context.Context) error {
		<-ctx.Done()
		other <- ctx.Err()
		return nil
	})
	g.Go("quitter", func(ctx context.Context) error { return nil })

	err := within(t, 5*time.Second, "Wait", g.Wait)
	if err == nil || err.Error() != "quitter: stopped unexpectedly" {
		t.Fatalf("Wait() = %v, want \"quitter: stopped unexpectedly\"", err)
	}
	if e := <-other; !errors.Is(e, context.Canceled) {
		t.Errorf("the other member's context ended with %v, want context.Canceled", e)
	}
}

func TestGroupParentCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g := NewGroup(ctx)
	const n = 3
	var returned atomic.Int32
	started := make(chan struct{}, n)
	for _, name := range []string{"a", "b", "c"} {
		g.Go(name, func(ctx context.Context) error {
			started <- struct{}{}
			<-ctx.Done()
			time.Sleep(20 * time.Millisecond) // Wait must wait for this
			returned.Add(1)
			return nil
		})
	}
	for range n {
		<-started
	}
	cancel()
	if err := within(t, 5*time.Second, "Wait", g.Wait); err != nil {
		t.Fatalf("Wait() after the parent was cancelled = %v, want nil", err)
	}
	if got := returned.Load(); got != n {
		t.Errorf("Wait returned after %d of %d members returned", got, n)
	}
}

// Members are cancelled at once when the parent is, not only when one returns.
func TestGroupParentCancelledReachesMembers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := NewGroup(ctx)
	got := make(chan error, 1)
	g.Go("a", func(ctx context.Context) error {
		<-ctx.Done()
		got <- ctx.Err()
		return nil
	})
	cancel()
	if err := within(t, 5*time.Second, "Wait", g.Wait); err != nil {
		t.Fatalf("Wait() = %v, want nil", err)
	}
	if e := <-got; !errors.Is(e, context.Canceled) {
		t.Errorf("member's context ended with %v", e)
	}
}

func TestHTTPEmptyAddrOnlyWaits(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	called := false
	loop, err := HTTP(ctx, "metrics", "", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true }))
	if err != nil || loop == nil {
		t.Fatalf("HTTP with an empty address = %v, %v; want a loop", loop != nil, err)
	}
	done := make(chan error, 1)
	go func() { done <- loop(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("the loop of a server that is off returned %v before its context ended", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("loop() = %v after cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not return after its context was cancelled")
	}
	if called {
		t.Error("the handler of a server that is off was called")
	}
}

func TestHTTPAddressInUse(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	loop, err := HTTP(context.Background(), "health", lis.Addr().String(), http.NotFoundHandler())
	if err == nil {
		t.Fatalf("HTTP on an address in use returned a loop (%v), want an error", loop != nil)
	}
	if loop != nil {
		t.Error("HTTP returned a loop with its error")
	}
	if !strings.HasPrefix(err.Error(), "health server: ") {
		t.Errorf("error %q does not start with the server name", err)
	}
	if !strings.Contains(err.Error(), lis.Addr().String()) {
		t.Errorf("error %q does not name the address", err)
	}
}

// freeAddr returns a loopback address that was free a moment ago: HTTP binds
// by itself, so the test learns the port by binding and releasing it first.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestHTTPServesAndStops(t *testing.T) {
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := http.NewServeMux()
	h.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello "+r.URL.Query().Get("n")) })
	loop, err := HTTP(ctx, "test", addr, h)
	if err != nil {
		t.Fatalf("HTTP(%s): %v", addr, err)
	}

	// Bound at setup: a second server on the same address fails before the loop runs.
	if _, err := HTTP(ctx, "second", addr, h); err == nil {
		t.Errorf("HTTP did not bind %s at setup: a second server could take it", addr)
	}

	done := make(chan error, 1)
	go func() { done <- loop(ctx) }()

	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/hello?n=world")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != "hello world" {
		t.Errorf("GET /hello = %d %q, want 200 \"hello world\"", resp.StatusCode, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("loop() = %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not return after its context was cancelled")
	}
	// Shut down: the port is released and nothing answers.
	if resp, err := client.Get("http://" + addr + "/hello"); err == nil {
		resp.Body.Close()
		t.Errorf("the server still answers after its loop returned")
	}
}

// In a Group, the server's loop stops with the group and the group reports
// the member that failed, not the server.
func TestHTTPInGroup(t *testing.T) {
	addr := freeAddr(t)
	g := NewGroup(context.Background())
	loop, err := HTTP(context.Background(), "metrics", addr, http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	g.Go("metrics server", loop)
	g.Go("worker", func(ctx context.Context) error {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			return errors.New(resp.Status)
		}
		return errors.New("done")
	})
	if err := within(t, 10*time.Second, "Wait", g.Wait); err == nil || err.Error() != "worker: done" {
		t.Fatalf("Wait() = %v, want \"worker: done\"", err)
	}
}

// A stop waits for a request in flight (within the grace): the process does
// not exit under a scrape or a probe.
func TestHTTPStopWaitsForRequestInFlight(t *testing.T) {
	addr := freeAddr(t)
	entered, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "late")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loop, err := HTTP(ctx, "metrics", addr, h)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- loop(ctx) }()
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-entered
	cancel()
	select {
	case err := <-done:
		t.Fatalf("the loop returned (%v) while a request was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if body := within(t, 5*time.Second, "the request", func() string { return <-got }); body != "late" {
		t.Errorf("request in flight at stop got %q, want its answer", body)
	}
	if err := within(t, 5*time.Second, "the loop", func() error { return <-done }); err != nil {
		t.Errorf("loop = %v, want nil", err)
	}
}
