package cabundle

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"

	"github.com/svid-csi/svid-csi/driver/metrics"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// watching runs Watch until the test ends and reports every onChange.
func watching(t *testing.T, b *Bundle, m *metrics.Metrics) <-chan []byte {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	changes := make(chan []byte, 10)
	var wg sync.WaitGroup
	w, err := b.Watch()
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := w.Run(ctx, m, func(context.Context) { changes <- b.PEM() }); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return changes
}

func nextChange(t *testing.T, changes <-chan []byte) []byte {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change reported")
		return nil
	}
}

func noChange(t *testing.T, changes <-chan []byte) {
	t.Helper()
	select {
	case c := <-changes:
		t.Fatalf("unexpected change to %q", tail(c))
	case <-time.After(3 * settle):
	}
}

// mountedSecret lays data out as the kubelet mounts a Secret's ca.crt (a
// ..data generation and a link) and loads it.
func mountedSecret(t *testing.T, data []byte) (string, *Bundle) {
	t.Helper()
	dir := t.TempDir()
	if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": data}, -1); err != nil {
		t.Fatal(err)
	}
	b, err := Load(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, b
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// The kubelet updates a mounted Secret by writing a new timestamped directory
// and swapping the ..data link (volume.WriteFiles does the same): the new
// bundle is taken; garbage is rejected once, counted, and changes nothing.
func TestWatchFollowsTheKubeletsSwap(t *testing.T) {
	one, two := newCertPEM(t, "root one"), newCertPEM(t, "root two")
	dir, b := mountedSecret(t, one)
	m := metrics.New()
	changes := watching(t, b, m)

	both := concat(one, two)
	if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": both}, -1); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, changes); !bytes.Equal(got, both) {
		t.Fatalf("changed to %q, want both roots", tail(got))
	}
	noChange(t, changes) // one swap, one change

	for range 2 { // the same garbage twice: rejected, counted and logged once
		if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": []byte("not a bundle")}, -1); err != nil {
			t.Fatal(err)
		}
		noChange(t, changes)
	}
	if !bytes.Equal(b.PEM(), both) {
		t.Fatalf("garbage replaced the bundle with %q", tail(b.PEM()))
	}
	out := scrape(t, m)
	for _, want := range []string{
		`svid_csi_driver_ca_bundle_reloads_total{result="applied"} 1`,
		`svid_csi_driver_ca_bundle_reloads_total{result="rejected"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Back to a good bundle after garbage: taken again.
	if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": two}, -1); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, changes); !bytes.Equal(got, two) {
		t.Fatalf("changed to %q, want root two", tail(got))
	}
}

// A plain file rewritten in place (a hostPath bundle) is followed too; the
// same content written again is no change.
func TestWatchFollowsAFileWrittenInPlace(t *testing.T) {
	one, two := newCertPEM(t, "root one"), newCertPEM(t, "root two")
	path := writeFile(t, one)
	b, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	changes := watching(t, b, nil)
	if err := os.WriteFile(path, one, 0o600); err != nil {
		t.Fatal(err)
	}
	noChange(t, changes)
	if err := os.WriteFile(path, two, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, changes); !bytes.Equal(got, two) {
		t.Fatalf("changed to %q, want root two", tail(got))
	}
}

func TestWatchWithoutABundleWaits(t *testing.T) {
	var b *Bundle
	w, err := b.Watch()
	if err != nil || w != nil {
		t.Fatalf("Watch of no bundle = %v, %v; want nil, nil", w, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, nil, func(context.Context) { t.Error("onChange without a bundle") }) }()
	select {
	case err := <-done:
		t.Fatalf("Watch of no bundle returned %v before its context ended", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A change made between Load and the watch made no event: Run reads the
// file once at once.
func TestWatchSeesAChangeBeforeItStarted(t *testing.T) {
	one, two := newCertPEM(t, "root one"), newCertPEM(t, "root two")
	dir, b := mountedSecret(t, one)
	if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": two}, -1); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, watching(t, b, nil)); !bytes.Equal(got, two) {
		t.Fatalf("changed to %q, want root two", tail(got))
	}
}

// Each distinct rejected content is counted and logged once.
func TestWatchCountsEachDistinctRejection(t *testing.T) {
	dir, b := mountedSecret(t, newCertPEM(t, "root"))
	m := metrics.New()
	changes := watching(t, b, m)
	for _, garbage := range []string{"garbage one", "garbage two", "garbage two"} {
		if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": []byte(garbage)}, -1); err != nil {
			t.Fatal(err)
		}
		noChange(t, changes)
	}
	if out := scrape(t, m); !strings.Contains(out, `svid_csi_driver_ca_bundle_reloads_total{result="rejected"} 2`) {
		t.Errorf("want 2 rejections (two distinct contents):\n%s", out)
	}
}

// The watched directory itself replaced (renamed away, another renamed in):
// the watch follows the new one.
func TestWatchFollowsAReplacedDirectory(t *testing.T) {
	one, two := newCertPEM(t, "root one"), newCertPEM(t, "root two")
	parent := t.TempDir()
	dir := filepath.Join(parent, "ca")
	for d, data := range map[string][]byte{dir: one, dir + ".new": two} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "ca.crt"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Load(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	changes := watching(t, b, nil)
	time.Sleep(3 * settle) // the watch runs: what follows is seen as events
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".new", dir); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, changes); !bytes.Equal(got, two) {
		t.Fatalf("changed to %q, want root two", tail(got))
	}
	// And the new directory is watched: a later change in it is seen.
	time.Sleep(3 * settle)
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), one, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, changes); !bytes.Equal(got, one) {
		t.Fatalf("changed to %q, want root one", tail(got))
	}
}

func TestLoadRefusesAPathInsideTheGenerations(t *testing.T) {
	dir := t.TempDir()
	if err := volume.WriteFiles(dir, map[string][]byte{"ca.crt": newCertPEM(t, "root")}, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(dir, "..data", "ca.crt")); err == nil || !strings.Contains(err.Error(), "not one inside its ..data generations") {
		t.Fatalf("Load inside ..data = %v, want a refusal", err)
	}
}
