package manager

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/manager/managertest"
	"github.com/svid-csi/svid-csi/driver/metrics"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/renew"
	"github.com/svid-csi/svid-csi/driver/volume"
)

type testManager struct {
	m       *Manager
	issuer  *managertest.Issuer
	mounter *managertest.CountingMounter
	store   *volume.Store
	dir     string
	ctx     context.Context
}

type option func(*Options)

// start runs a Manager with a fake issuer and mounter, recovered and with
// its renewals running until the test ends.
func start(t *testing.T, opts ...option) *testManager {
	t.Helper()
	f := managertest.NewFakes(t)
	dir, store, fi, cm := f.Dir, f.Store, f.Issuer, f.Mounter
	o := Options{Issuer: fi, Mounter: cm, Store: store, Files: FileNames{Certificate: "tls.crt", Key: "tls.key", CA: "ca.crt"}}
	for _, fn := range opts {
		fn(&o)
	}
	if c, ok := o.Clock.(clock.PassiveClock); ok && c != nil {
		fi.Clock = c
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { m.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &testManager{m: m, issuer: fi, mounter: cm, store: store, dir: dir, ctx: ctx}
}

// meta is what the CSI layer hands over for an inline volume of a pod.
func (tm *testManager) meta(volID string) volume.Meta {
	return meta(tm.dir, volID)
}

func meta(dir, volID string) volume.Meta {
	return volume.Meta{
		VolumeID: volID, TargetPath: managertest.Target(dir, volID),
		PodNamespace: "team-a", PodName: "app-" + volID, PodUID: "uid-" + volID, ServiceAccount: "app", FSGroup: -1,
	}
}

func token(value string) Token { return Token{Value: value, Expiry: time.Now().Add(time.Hour)} }

// eventually waits for cond; tests only.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPublishSchedulesAndUnpublishForgetsEverything(t *testing.T) {
	tm := start(t)
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	cert, key := managertest.ReadPair(t, md.TargetPath)
	if !managertest.Matches(key, cert) {
		t.Fatal("key does not match certificate")
	}
	if due, ok := tm.m.sched.Due("vol-1"); !ok || due.After(cert.NotBefore.Add(40*time.Minute)) || due.Before(cert.NotBefore.Add(34*time.Minute)) {
		t.Errorf("renewal due %v (ok=%v), want within [34m, 40m] of %v", due, ok, cert.NotBefore)
	}
	// The validity is held once, from the certificate written.
	if nb, na := tm.m.lookup("vol-1").validity(); !nb.Equal(cert.NotBefore) || !na.Equal(cert.NotAfter) {
		t.Errorf("validity %v..%v, want %v..%v", nb, na, cert.NotBefore, cert.NotAfter)
	}
	if !tm.m.EarliestExpiry().Equal(cert.NotAfter) || tm.m.Len() != 1 {
		t.Errorf("EarliestExpiry %v Len %d", tm.m.EarliestExpiry(), tm.m.Len())
	}
	if got := tm.issuer.Released(); len(got) != 1 || got[0] != "vol-1" {
		t.Errorf("released = %v, want the request deleted once written", got)
	}
	if err := tm.m.Unpublish(tm.ctx, "vol-1", md.TargetPath); err != nil {
		t.Fatal(err)
	}
	if tm.m.lookup("vol-1") != nil || tm.m.sched.Len() != 0 || tm.m.Len() != 0 {
		t.Error("volume still managed or scheduled")
	}
	if err := tm.m.Published("vol-1", ""); failure.ReasonOf(err) != failure.NotFound {
		t.Errorf("Published after unpublish = %v, want NotFound", err)
	}
}

func TestRepublishOfHealthyVolumeOnlyKeepsToken(t *testing.T) {
	tm := start(t)
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	link, _ := os.Readlink(filepath.Join(md.TargetPath, "..data"))
	before, _ := os.ReadFile(filepath.Join(md.TargetPath, "tls.key"))
	tm.issuer.Fail(failure.New(failure.API, "API down"))
	for i := range 5 {
		if err := tm.m.Publish(tm.ctx, md, token("tok-"+string(rune('2'+i)))); err != nil {
			t.Fatalf("republish %d: %v", i, err)
		}
	}
	if n := len(tm.issuer.Calls()); n != 1 {
		t.Errorf("issuances = %d, want 1", n)
	}
	if l, _ := os.Readlink(filepath.Join(md.TargetPath, "..data")); l != link {
		t.Errorf("..data changed from %s to %s: republish wrote files", link, l)
	}
	if after, _ := os.ReadFile(filepath.Join(md.TargetPath, "tls.key")); !bytes.Equal(before, after) {
		t.Error("key changed on republish")
	}
	if tok, _ := tm.m.lookup("vol-1").freshToken(time.Now()); tok.Value != "tok-6" {
		t.Errorf("token kept = %q, want the latest", tok.Value)
	}
	// A republish elsewhere, or for another pod, is a conflict.
	other := md
	other.TargetPath += "-elsewhere"
	if err := tm.m.Publish(tm.ctx, other, token("x")); failure.ReasonOf(err) != failure.Conflict {
		t.Errorf("publish at another path: %v, want a conflict", err)
	}
	other = md
	other.PodUID = "another-pod"
	if err := tm.m.Publish(tm.ctx, other, token("x")); failure.ReasonOf(err) != failure.Conflict {
		t.Errorf("publish for another pod: %v, want a conflict", err)
	}
}

func TestRenewalWithLatestTokenAndBackoff(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fc := clocktesting.NewFakeClock(t0)
	tm := start(t, func(o *Options) {
		o.Clock = fc
		o.Jitter = func() float64 { return 0.5 }
	})
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	oldCert, _ := managertest.ReadPair(t, md.TargetPath)
	// 2/3 of 1h = 40m, minus 0.5 of the 6m window.
	wantDue := t0.Add(37 * time.Minute)
	if due, _ := tm.m.sched.Due("vol-1"); !due.Equal(wantDue) {
		t.Fatalf("due %v, want %v", due, wantDue)
	}
	// A republish brings a fresher token; the renewal must use it.
	if err := tm.m.Publish(tm.ctx, md, token("tok-2")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the scheduler's timer", fc.HasWaiters)
	fc.SetTime(wantDue)
	eventually(t, "the renewal", func() bool {
		_, na := tm.m.lookup("vol-1").validity()
		due, ok := tm.m.sched.Due("vol-1")
		return na.After(oldCert.NotAfter) && ok && due.After(wantDue)
	})
	calls := tm.issuer.Calls()
	if len(calls) != 2 || calls[1].Token != "tok-2" {
		t.Fatalf("calls = %+v, want a renewal with tok-2", calls)
	}
	newCert, newKey := managertest.ReadPair(t, md.TargetPath)
	if newCert.SerialNumber.Cmp(oldCert.SerialNumber) == 0 || !managertest.Matches(newKey, newCert) {
		t.Fatal("files not rotated to a matching new pair")
	}
	if _, na := tm.m.lookup("vol-1").validity(); !na.Equal(newCert.NotAfter) || !tm.m.EarliestExpiry().Equal(newCert.NotAfter) {
		t.Errorf("expiry after renewal %v (earliest %v), want %v", na, tm.m.EarliestExpiry(), newCert.NotAfter)
	}
	if due, _ := tm.m.sched.Due("vol-1"); !due.Equal(wantDue.Add(37 * time.Minute)) {
		t.Errorf("next renewal due %v, want %v", due, wantDue.Add(37*time.Minute))
	}

	// Failures back off exponentially, with the jitter.
	tm.issuer.Fail(failure.New(failure.API, "API down"))
	now := wantDue.Add(37 * time.Minute)
	for i, want := range []time.Duration{3750 * time.Millisecond, 7500 * time.Millisecond, 15 * time.Second} {
		eventually(t, "the scheduler's timer", fc.HasWaiters)
		fc.SetTime(now)
		n := len(tm.issuer.Calls())
		eventually(t, "a failed renewal", func() bool {
			due, ok := tm.m.sched.Due("vol-1")
			return len(tm.issuer.Calls()) > n && ok && due.After(now)
		})
		due, _ := tm.m.sched.Due("vol-1")
		if got := due.Sub(now); got != want {
			t.Errorf("failure %d: retry in %v, want %v", i+1, got, want)
		}
		now = due
	}
	if h, _ := tm.m.Health("vol-1", ""); len(h) != 1 || h[0].Reason != "RenewalFailing" || !strings.HasSuffix(h[0].Message, "API down") {
		t.Errorf("health after 3 failures = %v", h)
	}
}

func TestHealth(t *testing.T) {
	tm := start(t)
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok")); err != nil {
		t.Fatal(err)
	}
	if h, err := tm.m.Health("vol-1", md.TargetPath); err != nil || len(h) != 0 {
		t.Fatalf("health = %v, %v; want healthy", h, err)
	}
	if _, err := tm.m.Health("vol-1", "/elsewhere"); failure.ReasonOf(err) != failure.NotFound {
		t.Errorf("health at the wrong path: %v", err)
	}
	if _, err := tm.m.Health("nope", ""); failure.ReasonOf(err) != failure.NotFound {
		t.Errorf("health of an unknown volume: %v", err)
	}
	v := tm.m.lookup("vol-1")
	v.mu.Lock()
	v.notAfter = time.Now().Add(-time.Minute)
	v.failures, v.lastErr = 3, "request denied: nope"
	v.mu.Unlock()
	h, err := tm.m.Health("vol-1", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Reason != "CertificateExpired" || !strings.HasPrefix(h[0].Message, "certificate expired at") ||
		!strings.HasSuffix(h[0].Message, "last renewal error: request denied: nope") ||
		h[1].Reason != "RenewalFailing" || !strings.HasSuffix(h[1].Message, "request denied: nope") {
		t.Errorf("health = %+v", h)
	}
}

// After a restart the volumes still mounted are managed again and those
// whose target vanished are forgotten; a recovered volume costs nothing
// until its renewal falls due, and then renews with the token of its next
// republish, while a recovered volume that got no token is left waiting.
func TestRecoverAfterRestart(t *testing.T) {
	dir := t.TempDir()
	mounter := mount.NewFake(filepath.Join(dir, "pods"))
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fc := clocktesting.NewFakeClock(t0)
	newManager := func(fi *managertest.Issuer) *Manager {
		store, err := volume.NewStore(filepath.Join(dir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		fi.Clock = fc
		m, err := New(Options{Issuer: fi, Mounter: mounter, Store: store, Clock: fc, Jitter: func() float64 { return 0.5 },
			Files: FileNames{Certificate: "tls.crt", Key: "tls.key", CA: "ca.crt"}})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	fakeToken := func(value string) Token { return Token{Value: value, Expiry: fc.Now().Add(time.Hour)} }
	_, ctx := ktesting.NewTestContext(t)
	m1 := newManager(managertest.NewIssuer())
	if err := m1.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	md1, md2, md3 := meta(dir, "vol-1"), meta(dir, "vol-2"), meta(dir, "vol-3")
	for _, md := range []volume.Meta{md1, md2, md3} {
		if err := m1.Publish(ctx, md, fakeToken("tok")); err != nil {
			t.Fatal(err)
		}
	}
	// The driver dies (nothing is unmounted); meanwhile vol-2's pod goes away.
	if err := mounter.Cleanup(md2.TargetPath); err != nil {
		t.Fatal(err)
	}
	fc.Step(10 * time.Minute)

	fi2 := managertest.NewIssuer()
	m2 := newManager(fi2)
	if err := m2.Ready(); failure.ReasonOf(err) != failure.Starting {
		t.Fatalf("ready before recovery: %v", err)
	}
	if err := m2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Ready(); err != nil {
		t.Fatalf("not ready after recovery: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { m2.Run(rctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	v, v3 := m2.lookup("vol-1"), m2.lookup("vol-3")
	if v == nil || v3 == nil || m2.lookup("vol-2") != nil {
		t.Fatalf("recovered vol-1=%v vol-2=%v vol-3=%v; want vol-1 and vol-3", v != nil, m2.lookup("vol-2") != nil, v3 != nil)
	}
	oldCert, _ := managertest.ReadPair(t, md1.TargetPath)
	oldCert3, _ := managertest.ReadPair(t, md3.TargetPath)
	if _, na := v.validity(); !na.Equal(oldCert.NotAfter) {
		t.Errorf("recovered NotAfter %v, want %v", na, oldCert.NotAfter)
	}
	wantDue := renew.RenewAt(oldCert.NotBefore, oldCert.NotAfter, 0.5)
	if metas, _ := m2.opts.Store.List(); len(metas) != 2 {
		t.Errorf("state of the vanished volume not cleaned up: %+v", metas)
	}

	// The next republish brings a token and costs nothing: the renewal stays
	// where the certificate puts it, in the future.
	if err := m2.Publish(ctx, md1, fakeToken("fresh")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the scheduler's timer", fc.HasWaiters)
	for _, id := range []string{"vol-1", "vol-3"} {
		if due, ok := m2.sched.Due(id); !ok || !due.Equal(wantDue) || !due.After(fc.Now()) {
			t.Fatalf("%s: renewal due %v (scheduled %v) at %v, want %v", id, due, ok, fc.Now(), wantDue)
		}
	}
	if calls := fi2.Calls(); len(calls) != 0 {
		t.Fatalf("republish after restart issued a certificate: %+v", calls)
	}
	if tok, ok := v.freshToken(fc.Now()); !ok || tok.Value != "fresh" {
		t.Errorf("token after republish = %q", tok.Value)
	}

	// The renewal falls due: vol-1 renews with the fresh token; vol-3, never
	// republished, waits for one.
	fc.SetTime(wantDue)
	eventually(t, "the renewal of vol-1", func() bool {
		_, na := v.validity()
		return na.After(oldCert.NotAfter)
	})
	eventually(t, "vol-3 to wait for a token", func() bool {
		v3.mu.Lock()
		defer v3.mu.Unlock()
		return v3.awaitingToken
	})
	eventually(t, "the scheduler's timer", fc.HasWaiters)
	calls := fi2.Calls()
	if len(calls) != 1 || !calls[0].Renewal || calls[0].VolumeID != "vol-1" || calls[0].Token != "fresh" {
		t.Fatalf("calls = %+v, want one renewal of vol-1 with the fresh token", calls)
	}
	newCert, newKey := managertest.ReadPair(t, md1.TargetPath)
	if newCert.SerialNumber.Cmp(oldCert.SerialNumber) == 0 || !managertest.Matches(newKey, newCert) {
		t.Fatal("vol-1's files not rotated to a matching new pair")
	}
	if c, _ := managertest.ReadPair(t, md3.TargetPath); c.SerialNumber.Cmp(oldCert3.SerialNumber) != 0 {
		t.Error("vol-3 was renewed without a token")
	}
}

// Republishes, health and published checks at the volume's own target path,
// and renewals of one volume all run at once without a data race (run with
// -race): the volume's metadata never changes once added, and what a renewal
// changes is read under the volume's lock.
func TestRenewDuringRepublishNoRace(t *testing.T) {
	tm := start(t)
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var republishes, checks atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			if err := tm.m.Publish(tm.ctx, md, token("tok-2")); err != nil {
				t.Error(err)
				return
			}
			republishes.Add(1)
		}
	})
	wg.Go(func() {
		for !stop.Load() {
			if h, err := tm.m.Health("vol-1", md.TargetPath); err != nil || len(h) != 0 {
				t.Errorf("health at %s during renewals = %+v, %v; want healthy", md.TargetPath, h, err)
				return
			}
			if err := tm.m.Published("vol-1", md.TargetPath); err != nil {
				t.Errorf("published during renewals: %v", err)
				return
			}
			_ = tm.m.EarliestExpiry()
			checks.Add(1)
		}
	})
	// The renewals start once both loops run, and end before they stop.
	eventually(t, "republishes and checks", func() bool { return republishes.Load() > 0 && checks.Load() > 0 })
	r0, c0 := republishes.Load(), checks.Load()
	var renewals sync.WaitGroup
	for range 4 {
		renewals.Go(func() {
			for range 5 {
				tm.m.renew(tm.ctx, "vol-1")
			}
		})
	}
	renewals.Wait()
	r1, c1 := republishes.Load(), checks.Load()
	stop.Store(true)
	wg.Wait()
	if n := len(tm.issuer.Calls()); n != 21 {
		t.Errorf("%d issuances, want the publish and 20 renewals", n)
	}
	if r1 == r0 || c1 == c0 {
		t.Fatalf("no overlap: %d republishes and %d checks during the renewals", r1-r0, c1-c0)
	}
	t.Logf("%d republishes and %d checks during 20 renewals", r1-r0, c1-c0)
}

// A live volume whose state was lost is published again; when that publish
// fails, the mount it found (and the pod's files) must survive.
func TestFailedPublishKeepsAMountItDidNotMake(t *testing.T) {
	tm := start(t)
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	tm.m.remove("vol-1") // state lost, mount live
	tm.issuer.Fail(failure.New(failure.API, "API down"))
	if err := tm.m.Publish(tm.ctx, md, token("tok-2")); err == nil {
		t.Fatal("publish with the API down: want an error")
	}
	if _, err := os.Stat(filepath.Join(md.TargetPath, "tls.key")); err != nil {
		t.Fatalf("the live volume was destroyed by a failed publish: %v", err)
	}
}

// Until every check passes the manager refuses a first publish as starting,
// naming what it waits for, and issues nothing.
func TestPublishBeforeChecksIsStarting(t *testing.T) {
	tm := start(t, func(o *Options) {
		o.Checks = []Check{{Name: "the CertificateRequest cache", Ready: func() bool { return false }}}
	})
	err := tm.m.Publish(tm.ctx, tm.meta("vol-1"), token("tok-1"))
	if failure.ReasonOf(err) != failure.Starting || !strings.Contains(err.Error(), "the CertificateRequest cache") {
		t.Fatalf("publish before the checks pass: %v, want starting, naming the cache", err)
	}
	if n := len(tm.issuer.Calls()); n != 0 {
		t.Fatalf("%d issuances before the checks pass, want 0", n)
	}
}

func TestCABundleWrittenWithTheSet(t *testing.T) {
	ca := []byte("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
	tm := start(t, func(o *Options) { o.CABundle = func() []byte { return ca } })
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok")); err != nil {
		t.Fatal(err)
	}
	files, err := volume.ReadFiles(md.TargetPath, "tls.crt", "tls.key", "ca.crt")
	if err != nil || !bytes.Equal(files["ca.crt"], ca) {
		t.Fatalf("ca.crt = %q, %v", files["ca.crt"], err)
	}
}

// Each issuance counts once: a certificate that cannot be written is a
// local failure, not also an issuance.
func TestWriteFailureCountsOnceAsLocal(t *testing.T) {
	m := metrics.New()
	tm := start(t, func(o *Options) {
		o.Metrics = m
		o.Files.CA = "../ca.crt" // WriteFiles refuses the name
		o.CABundle = func() []byte { return []byte("ca") }
	})
	md := tm.meta("vol-1")
	err := tm.m.Publish(tm.ctx, md, token("tok"))
	if failure.ReasonOf(err) != failure.Local || !strings.HasPrefix(err.Error(), "write certificate into volume vol-1") {
		t.Fatalf("publish with an unwritable set: %v, want a local write failure", err)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	if !strings.Contains(out, `svid_csi_driver_issuance_failures_total{reason="local",trigger="publish"} 1`) ||
		strings.Contains(out, "svid_csi_driver_issuances_total{") {
		t.Errorf("metrics after a write failure:\n%s\nwant one local failure and no issuance", out)
	}
	if mounted, _ := tm.mounter.IsMounted(md.TargetPath); mounted || tm.m.Len() != 0 {
		t.Error("a failed publish left the volume mounted or managed")
	}
}

// A new CA bundle reaches every volume, replacing only ca.crt: the
// certificate and key stay the very same files; recovered volumes with an
// older bundle are refreshed too.
func TestRefreshCARewritesOnlyTheBundle(t *testing.T) {
	var mu sync.Mutex
	bundle := []byte("bundle one")
	current := func() []byte { mu.Lock(); defer mu.Unlock(); return bundle }
	m := metrics.New()
	tm := start(t, func(o *Options) { o.CABundle = current; o.Metrics = m })
	var metas []volume.Meta
	for _, id := range []string{"vol-1", "vol-2", "vol-3"} {
		md := tm.meta(id)
		md.FSGroup = 1234
		if err := tm.m.Publish(tm.ctx, md, token("tok")); err != nil {
			t.Fatal(err)
		}
		metas = append(metas, md)
	}
	stat := func(md volume.Meta, name string) os.FileInfo {
		t.Helper()
		fi, err := os.Stat(filepath.Join(md.TargetPath, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	var keys []os.FileInfo
	for _, md := range metas {
		keys = append(keys, stat(md, "tls.key"))
	}

	mu.Lock()
	bundle = []byte("bundle two")
	mu.Unlock()
	tm.m.RefreshCA(tm.ctx)
	for i, md := range metas {
		files, err := volume.ReadFiles(md.TargetPath, "ca.crt")
		if err != nil || string(files["ca.crt"]) != "bundle two" {
			t.Errorf("%s: ca.crt = %q, %v; want bundle two", md.VolumeID, files["ca.crt"], err)
		}
		if !os.SameFile(keys[i], stat(md, "tls.key")) {
			t.Errorf("%s: the key was rewritten with the bundle", md.VolumeID)
		}
		if gid := stat(md, "ca.crt").Sys().(*syscall.Stat_t).Gid; gid != 1234 {
			t.Errorf("%s: ca.crt group %d, want the volume's 1234", md.VolumeID, gid)
		}
	}
	if n := len(tm.issuer.Calls()); n != 3 {
		t.Errorf("%d issuances, want 3: a bundle change issues nothing", n)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `svid_csi_driver_ca_bundle_volume_writes_total{result="success"} 3`) {
		t.Errorf("metrics lack 3 successful bundle writes")
	}
	// Nothing to do when every volume has the bundle.
	before, _ := os.Readlink(filepath.Join(metas[0].TargetPath, "..data"))
	tm.m.RefreshCA(tm.ctx)
	if after, _ := os.Readlink(filepath.Join(metas[0].TargetPath, "..data")); after != before {
		t.Error("a refresh with nothing changed rewrote a volume")
	}

	// A restart finds an older bundle in a volume and refreshes it.
	tm2, err := New(tm.m.opts)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	bundle = []byte("bundle three")
	mu.Unlock()
	if err := tm2.Recover(tm.ctx); err != nil {
		t.Fatal(err)
	}
	if got := tm2.lookup("vol-1").caBundle(); string(got) != "bundle two" {
		t.Fatalf("recovered bundle %q, want what the volume holds", got)
	}
	tm2.RefreshCA(tm.ctx)
	if files, _ := volume.ReadFiles(metas[0].TargetPath, "ca.crt"); string(files["ca.crt"]) != "bundle three" {
		t.Errorf("after restart ca.crt = %q, want bundle three", files["ca.crt"])
	}
}

// A bundle that changes right after a publish wrote its volume, before the
// refresh could see that volume, still reaches it.
func TestBundleChangedDuringPublishReachesTheVolume(t *testing.T) {
	var calls atomic.Int32
	current := func() []byte {
		if calls.Add(1) == 1 { // the publish's write reads the old bundle...
			return []byte("bundle one")
		}
		return []byte("bundle two") // ...which changes at once
	}
	tm := start(t, func(o *Options) { o.CABundle = current })
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok")); err != nil {
		t.Fatal(err)
	}
	if files, _ := volume.ReadFiles(md.TargetPath, "ca.crt"); string(files["ca.crt"]) != "bundle two" {
		t.Fatalf("ca.crt = %q, want bundle two", files["ca.crt"])
	}
}

// A bundle change does not wait for a renewal stuck on the issuer: the
// refresh moves on, and the renewal writes the bundle before it lets go of
// the volume, whether it succeeds or fails.
func TestRefreshCADoesNotWaitForAStuckRenewal(t *testing.T) {
	for _, renewalFails := range []bool{false, true} {
		var mu sync.Mutex
		bundle := []byte("bundle one")
		current := func() []byte { mu.Lock(); defer mu.Unlock(); return bundle }
		tm := start(t, func(o *Options) { o.CABundle = current })
		md := tm.meta("vol-1")
		if err := tm.m.Publish(tm.ctx, md, token("tok")); err != nil {
			t.Fatal(err)
		}
		block, entered := make(chan struct{}), make(chan string, 1)
		tm.issuer.Block(block, entered)
		if renewalFails {
			tm.issuer.Fail(failure.New(failure.API, "API down"))
		}
		renewed := make(chan struct{})
		go func() { defer close(renewed); tm.m.renew(tm.ctx, "vol-1") }()
		<-entered // the renewal holds the volume, waiting for the issuer

		mu.Lock()
		bundle = []byte("bundle two")
		mu.Unlock()
		start := time.Now()
		tm.m.RefreshCA(tm.ctx)
		if took := time.Since(start); took > 3*caLockWait {
			t.Errorf("RefreshCA waited %v for the stuck renewal", took)
		}
		close(block)
		<-renewed
		if files, _ := volume.ReadFiles(md.TargetPath, "ca.crt"); string(files["ca.crt"]) != "bundle two" {
			t.Errorf("renewal failing=%v: ca.crt = %q after the renewal, want bundle two", renewalFails, files["ca.crt"])
		}
	}
}

// Node-bound: volumes have no pod token, first or at renewal; a renewal
// falls due and runs without waiting for a republish.
func TestNodeBoundRenewsWithoutToken(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fc := clocktesting.NewFakeClock(t0)
	tm := start(t, func(o *Options) {
		o.Clock = fc
		o.Jitter = func() float64 { return 0.5 }
		o.NodeBound = true
	})
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, Token{}); err != nil {
		t.Fatalf("node-bound publish without a token: %v", err)
	}
	_, oldNA := tm.m.lookup("vol-1").validity()
	eventually(t, "the scheduler's timer", fc.HasWaiters)
	fc.SetTime(t0.Add(37 * time.Minute))
	eventually(t, "the renewal", func() bool {
		_, na := tm.m.lookup("vol-1").validity()
		return na.After(oldNA)
	})
	if calls := tm.issuer.Calls(); len(calls) != 2 || calls[0].Token != "" || calls[1].Token != "" {
		t.Errorf("calls = %+v, want a publish and a renewal without a token", calls)
	}
}

// A volume recovered after a restart whose renewal is already due is not
// renewed before the driver is ready (the request cache and the live
// settings read): the scheduler runs, and the renewal waits for the checks.
func TestRecoveredRenewalWaitsUntilReady(t *testing.T) {
	dir := t.TempDir()
	mounter := mount.NewFake(filepath.Join(dir, "pods"))
	t0 := time.Now()
	fc := clocktesting.NewFakeClock(t0)
	var ready atomic.Bool
	newManager := func(fi *managertest.Issuer) *Manager {
		store, err := volume.NewStore(filepath.Join(dir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		fi.Clock = fc
		m, err := New(Options{Issuer: fi, Mounter: mounter, Store: store, NodeBound: true, Clock: fc,
			Files:  FileNames{Certificate: "tls.crt", Key: "tls.key", CA: "ca.crt"},
			Checks: []Check{{Name: "the live settings", Ready: ready.Load}}})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	_, ctx := ktesting.NewTestContext(t)
	ready.Store(true)
	m1 := newManager(managertest.NewIssuer())
	if err := m1.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	md := meta(dir, "vol-1")
	if err := m1.Publish(ctx, md, Token{}); err != nil {
		t.Fatal(err)
	}

	// The driver restarts after the renewal fell due, before its caches sync.
	ready.Store(false)
	fc.SetTime(t0.Add(59 * time.Minute))
	fi2 := managertest.NewIssuer()
	m2 := newManager(fi2)
	if err := m2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { m2.Run(rctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	// The due renewal ran, found the driver not ready and set a timer again.
	eventually(t, "the renewal to be put off", func() bool {
		due, ok := m2.sched.Due("vol-1")
		return ok && due.After(fc.Now()) && fc.HasWaiters()
	})
	if calls := fi2.Calls(); len(calls) != 0 {
		t.Fatalf("renewed before the driver was ready: %+v", calls)
	}
	ready.Store(true)
	fc.Step(notReadyRetry)
	eventually(t, "the renewal once ready", func() bool { return len(fi2.Calls()) == 1 })
	if c := fi2.Calls()[0]; !c.Renewal || c.VolumeID != "vol-1" {
		t.Errorf("call %+v, want a renewal of vol-1", c)
	}
}
