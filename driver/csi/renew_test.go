package csi

import (
	"context"
	"crypto"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/renew"
	"github.com/svid-csi/svid-csi/driver/volume"
)

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

func TestRenewalWithLatestTokenAndBackoff(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fc := clocktesting.NewFakeClock(t0)
	td := startDriver(t, testLogger(t), func(o *Options) {
		o.Clock = fc
		o.Jitter = func() float64 { return 0.5 }
	})
	ctx := context.Background()
	req := td.publishRequest("vol-1", "tok-1")
	if _, err := td.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	oldCert, _ := readPair(t, req.TargetPath)
	// 2/3 of 1h = 40m, minus 0.5 of the 6m window.
	wantDue := t0.Add(37 * time.Minute)
	if due, _ := td.d.sched.Due("vol-1"); !due.Equal(wantDue) {
		t.Fatalf("due %v, want %v", due, wantDue)
	}
	// A republish brings a fresher token; the renewal must use it.
	if _, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-1", "tok-2")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the scheduler's timer", fc.HasWaiters)
	fc.SetTime(wantDue)
	eventually(t, "the renewal", func() bool {
		_, na := td.d.lookup("vol-1").validity()
		due, ok := td.d.sched.Due("vol-1")
		return na.After(oldCert.NotAfter) && ok && due.After(wantDue)
	})
	calls := td.issuer.Calls()
	if len(calls) != 2 || calls[1].Token != "tok-2" {
		t.Fatalf("calls = %+v, want a renewal with tok-2", calls)
	}
	newCert, newKey := readPair(t, req.TargetPath)
	if newCert.SerialNumber.Cmp(oldCert.SerialNumber) == 0 || !newKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(newCert.PublicKey) {
		t.Fatal("files not rotated to a matching new pair")
	}
	if due, _ := td.d.sched.Due("vol-1"); !due.Equal(wantDue.Add(37 * time.Minute)) {
		t.Errorf("next renewal due %v, want %v", due, wantDue.Add(37*time.Minute))
	}

	// Failures back off exponentially, with the jitter.
	td.issuer.set(func(f *fakeIssuer) {
		f.err = &issuance.Error{Code: codes.Unavailable, Reason: "api", Message: "API down"}
	})
	now := wantDue.Add(37 * time.Minute)
	for i, want := range []time.Duration{3750 * time.Millisecond, 7500 * time.Millisecond, 15 * time.Second} {
		eventually(t, "the scheduler's timer", fc.HasWaiters)
		fc.SetTime(now)
		n := len(td.issuer.Calls())
		eventually(t, "a failed renewal", func() bool {
			due, ok := td.d.sched.Due("vol-1")
			return len(td.issuer.Calls()) > n && ok && due.After(now)
		})
		due, _ := td.d.sched.Due("vol-1")
		if got := due.Sub(now); got != want {
			t.Errorf("failure %d: retry in %v, want %v", i+1, got, want)
		}
		now = due
	}
	if h := td.d.lookup("vol-1").health(now, 3); len(h) != 1 || h[0].GetReason() != "RenewalFailing" {
		t.Errorf("health after 3 failures = %v", h)
	}
}

func TestRecoverAfterRestart(t *testing.T) {
	dir := t.TempDir()
	mounter := mount.NewFake()
	newDriver := func(fi *fakeIssuer) *Driver {
		store, err := volume.NewStore(filepath.Join(dir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := New(Options{Name: "spiffe.csi.cert-manager.io", NodeID: "n", Issuer: fi, Mounter: mounter, Store: store,
			Files: FileNames{Certificate: "tls.crt", Key: "tls.key", CA: "ca.crt"}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ctx := context.Background()
	td := &testDriver{dir: dir}
	fi1 := &fakeIssuer{clock: clock.RealClock{}, lifetime: time.Hour}
	d1 := newDriver(fi1)
	if err := d1.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	req1, req2 := td.publishRequest("vol-1", "tok"), td.publishRequest("vol-2", "tok")
	if _, err := d1.NodePublishVolume(ctx, req1); err != nil {
		t.Fatal(err)
	}
	if _, err := d1.NodePublishVolume(ctx, req2); err != nil {
		t.Fatal(err)
	}
	// The driver dies (nothing is unmounted); meanwhile vol-2's pod goes away.
	if err := mounter.Cleanup(req2.TargetPath); err != nil {
		t.Fatal(err)
	}

	fi2 := &fakeIssuer{clock: clock.RealClock{}, lifetime: time.Hour}
	d2 := newDriver(fi2)
	if d2.Ready() {
		t.Fatal("ready before recovery")
	}
	if err := d2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if !d2.Ready() {
		t.Fatal("not ready after recovery")
	}
	v := d2.lookup("vol-1")
	if v == nil || d2.lookup("vol-2") != nil {
		t.Fatalf("recovered vol-1=%v vol-2=%v; want only vol-1", v != nil, d2.lookup("vol-2") != nil)
	}
	cert, _ := readPair(t, req1.TargetPath)
	if _, na := v.validity(); !na.Equal(cert.NotAfter) {
		t.Errorf("recovered NotAfter %v, want %v", na, cert.NotAfter)
	}
	latest := renew.RenewAt(cert.NotBefore, cert.NotAfter, 0)
	if due, ok := d2.sched.Due("vol-1"); !ok || due.After(latest) || due.Before(renew.RenewAt(cert.NotBefore, cert.NotAfter, 1)) {
		t.Errorf("recovered volume not scheduled right: %v %v", due, ok)
	}
	if metas, _ := d2.opts.Store.List(); len(metas) != 1 {
		t.Errorf("state of the vanished volume not cleaned up: %+v", metas)
	}
	// The next republish brings a token and costs nothing.
	if _, err := d2.NodePublishVolume(ctx, td.publishRequest("vol-1", "fresh")); err != nil {
		t.Fatal(err)
	}
	if len(fi2.Calls()) != 0 {
		t.Error("republish after restart issued a certificate")
	}
	if tok, ok := v.freshToken(time.Now()); !ok || tok != "fresh" {
		t.Errorf("token after republish = %q", tok)
	}
}
