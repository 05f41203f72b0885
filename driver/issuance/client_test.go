package issuance

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/fake"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

var testIssuer = cmmeta.IssuerReference{Name: "spiffe-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}

type fixture struct {
	cs      *fake.Clientset
	client  *Client
	creates atomic.Int32
	ctx     context.Context
}

// newFixture runs a Client over a fake clientset that counts creates, with
// the waiter's informer synced and the deleter running.
func newFixture(t *testing.T, flags cmmeta.IssuerReference) *fixture {
	t.Helper()
	issuers, err := settings.New(settings.Options{Flags: testSettings(flags)})
	if err != nil {
		t.Fatal(err)
	}
	return newFixtureWith(t, issuers)
}

// testSettings are the settings of the tests, with ref as the issuer.
func testSettings(ref cmmeta.IssuerReference) settings.Settings {
	return settings.Settings{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Duration: time.Hour, Issuer: ref}
}

func newFixtureWith(t *testing.T, issuers SettingsSource) *fixture {
	t.Helper()
	f := &fixture{cs: fake.NewSimpleClientset()}
	f.cs.PrependReactor("create", "certificaterequests", func(a clienttesting.Action) (bool, runtime.Object, error) {
		f.creates.Add(1)
		return false, nil, nil
	})
	w, err := NewWaiter(f.cs, spiffe.DefaultDriverName, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	d := NewDeleter(f.cs, DeleterOptions{RetryBase: time.Millisecond, RetryMax: 10 * time.Millisecond})
	var wg sync.WaitGroup
	wg.Go(func() { w.Run(ctx) })
	wg.Go(func() { d.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	for !w.HasSynced() {
		time.Sleep(time.Millisecond)
	}
	f.ctx = ctx
	f.client, err = New(Options{
		DriverName: spiffe.DefaultDriverName, NodeName: "node-1",
		Settings: issuers, PodClient: f.cs, DriverClient: f.cs, Waiter: w, Deleter: d,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

var testRequest = Request{VolumeID: "vol-1", Namespace: "team-a", PodName: "app-0", PodUID: "uid-1", ServiceAccount: "app", Token: "tok"}

// created waits for the single request the client creates.
func (f *fixture) created(t *testing.T) *cmapi.CertificateRequest {
	t.Helper()
	return f.createdFor(t, func(*cmapi.CertificateRequest) bool { return true })
}

// createdFor waits until the only request that exists satisfies ok.
func (f *fixture) createdFor(t *testing.T, ok func(*cmapi.CertificateRequest) bool) *cmapi.CertificateRequest {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		list, err := f.cs.CertmanagerV1().CertificateRequests("team-a").List(f.ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 1 && ok(&list.Items[0]) {
			return &list.Items[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no such CertificateRequest alone")
	return nil
}

// waitCount waits until n requests exist.
func (f *fixture) waitCount(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.count(t) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests exist, want %d", f.count(t), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) count(t *testing.T) int {
	list, err := f.cs.CertmanagerV1().CertificateRequests("team-a").List(f.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

// sign issues the request's CSR, as an issuer would, and sets Ready.
func (f *fixture) sign(t *testing.T, cr *cmapi.CertificateRequest) {
	t.Helper()
	csr := parseCSR(t, cr.Spec.Request)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), URIs: csr.URIs}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, csr.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cr = cr.DeepCopy()
	cr.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	f.setCondition(t, cr, cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued, "issued")
}

func (f *fixture) setCondition(t *testing.T, cr *cmapi.CertificateRequest, typ cmapi.CertificateRequestConditionType, st cmmeta.ConditionStatus, reason, msg string) {
	t.Helper()
	cr = cr.DeepCopy()
	cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{Type: typ, Status: st, Reason: reason, Message: msg})
	if _, err := f.cs.CertmanagerV1().CertificateRequests(cr.Namespace).UpdateStatus(f.ctx, cr, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

type issueResult struct {
	res *Result
	err error
}

func (f *fixture) issueAsync(ctx context.Context, req Request) chan issueResult {
	ch := make(chan issueResult, 1)
	go func() {
		res, err := f.client.Issue(ctx, req)
		ch <- issueResult{res, err}
	}()
	return ch
}

func TestIssueWaitsForTheInformerEvent(t *testing.T) {
	f := newFixture(t, testIssuer)
	ch := f.issueAsync(f.ctx, testRequest)
	cr := f.created(t)
	if cr.Labels[spiffe.NodeLabel] != "node-1" || cr.Annotations[spiffe.IdentityAnnotation] != "spiffe://cluster.local/ns/team-a/sa/app" || cr.Spec.IssuerRef != testIssuer {
		t.Fatalf("request %+v", cr.ObjectMeta)
	}
	csr := parseCSR(t, cr.Spec.Request)
	select {
	case r := <-ch:
		t.Fatalf("Issue returned before the request was issued: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	// Approved alone is not the end: still pending.
	f.setCondition(t, cr, cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "spiffe.csi.cert-manager.io", "ok")
	cr, _ = f.cs.CertmanagerV1().CertificateRequests("team-a").Get(f.ctx, cr.Name, metav1.GetOptions{})
	f.sign(t, cr)
	var r issueResult
	select {
	case r = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Issue not woken by the informer")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	kb, _ := pem.Decode(r.res.KeyPEM)
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
		t.Error("returned key is not the CSR's")
	}
	if r.res.Request != klog.KRef("team-a", cr.Name) || r.res.NotAfter.IsZero() {
		t.Errorf("result %+v", r.res)
	}
	// The request is deleted once the caller is done with it.
	f.client.Release(f.ctx, "vol-1")
	f.waitCount(t, 0)
}

func TestIssueDeniedOrFailedCarriesTheMessageVerbatim(t *testing.T) {
	for _, tc := range []struct {
		name       string
		typ        cmapi.CertificateRequestConditionType
		st         cmmeta.ConditionStatus
		reason     string
		msg        string
		wantReason failure.Reason
		wantMsg    string
	}{
		{"denied", cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "spiffe.csi.cert-manager.io",
			`spec.duration: exp="1h0m0s" got="2h0m0s"`, failure.Denied, `request denied: spec.duration: exp="1h0m0s" got="2h0m0s"`},
		{"invalid", cmapi.CertificateRequestConditionInvalidRequest, cmmeta.ConditionTrue, "BadConfig",
			"issuer does not sign URIs", failure.Failed, "request failed: issuer does not sign URIs"},
		{"ready false failed", cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonFailed,
			"Failed to sign certificate: CA expired", failure.Failed, "request failed: Failed to sign certificate: CA expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testIssuer)
			ch := f.issueAsync(f.ctx, testRequest)
			f.setCondition(t, f.created(t), tc.typ, tc.st, tc.reason, tc.msg)
			r := <-ch
			if failure.ReasonOf(r.err) != tc.wantReason || r.err.Error() != tc.wantMsg {
				t.Fatalf("got %v (%s), want %s %q", r.err, failure.ReasonOf(r.err), tc.wantReason, tc.wantMsg)
			}
			f.waitCount(t, 0) // the failed request is deleted
		})
	}
}

func TestPendingRequestIsResumedNotRecreated(t *testing.T) {
	f := newFixture(t, testIssuer)
	ctx, cancel := context.WithTimeout(f.ctx, 100*time.Millisecond)
	defer cancel()
	_, err := f.client.Issue(ctx, testRequest)
	if failure.ReasonOf(err) != failure.Timeout {
		t.Fatalf("got %v, want a timeout", err)
	}
	cr := f.created(t)
	csr := parseCSR(t, cr.Spec.Request)

	ch := f.issueAsync(f.ctx, testRequest)
	time.Sleep(50 * time.Millisecond)
	if n := f.count(t); n != 1 || f.creates.Load() != 1 {
		t.Fatalf("a second request was created (%d exist, %d creates)", n, f.creates.Load())
	}
	f.sign(t, cr)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	kb, _ := pem.Decode(r.res.KeyPEM)
	key, _ := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
		t.Error("resumed request returned another key")
	}
}

func TestNoIssuer(t *testing.T) {
	f := newFixture(t, cmmeta.IssuerReference{})
	_, err := f.client.Issue(f.ctx, testRequest)
	if failure.ReasonOf(err) != failure.NoIssuer || !errors.Is(err, settings.ErrNoIssuer) || err.Error() != settings.ErrNoIssuer.Error() {
		t.Fatalf("got %v, want the no-issuer message", err)
	}
	if f.count(t) != 0 {
		t.Error("a request was created without an issuer")
	}
}

func TestStripTransform(t *testing.T) {
	cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}}},
		Spec: cmapi.CertificateRequestSpec{Request: []byte("csr")}, Status: cmapi.CertificateRequestStatus{Certificate: []byte("cert")}}
	obj, _ := strip(cr)
	got := obj.(*cmapi.CertificateRequest)
	if got.ManagedFields != nil || got.Spec.Request != nil || string(got.Status.Certificate) != "cert" {
		t.Errorf("strip = %+v", got)
	}
}

// A pending request deleted while no call waited on it is not resumed for
// ever: the next call sees it gone and creates a new one.
func TestPendingDeletedIsRecreated(t *testing.T) {
	f := newFixture(t, testIssuer)
	ctx, cancel := context.WithTimeout(f.ctx, 200*time.Millisecond)
	_, err := f.client.Issue(ctx, testRequest)
	cancel()
	if err == nil {
		t.Fatal("first call: want a pending timeout")
	}
	cr := f.created(t)
	if err := f.cs.CertmanagerV1().CertificateRequests(cr.Namespace).Delete(f.ctx, cr.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.client.opts.Waiter.cached(cr.Namespace, cr.Name) {
		if time.Now().After(deadline) {
			t.Fatal("the informer never saw the delete")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel = context.WithTimeout(f.ctx, 200*time.Millisecond)
	_, _ = f.client.Issue(ctx, testRequest)
	cancel()
	if got := f.creates.Load(); got != 2 {
		t.Fatalf("%d requests created, want 2: the deleted one must be replaced, not resumed", got)
	}
}

// SweepOrphans deletes this node's requests that a previous run left (their
// keys are gone), keeps those made since this run started, and only then
// reports synced.
func TestSweepOrphans(t *testing.T) {
	f := newFixture(t, testIssuer)
	if f.client.HasSynced() {
		t.Fatal("synced before the sweep")
	}
	start := time.Now()
	labels := map[string]string{spiffe.DriverLabel: spiffe.DefaultDriverName, spiffe.NodeLabel: "node-1"}
	for name, created := range map[string]time.Time{"old": start.Add(-time.Minute), "new": start.Add(time.Second)} {
		cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "team-a", Labels: labels, CreationTimestamp: metav1.NewTime(created),
		}}
		if _, err := f.cs.CertmanagerV1().CertificateRequests("team-a").Create(f.ctx, cr, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for !f.client.opts.Waiter.cached("team-a", "old") || !f.client.opts.Waiter.cached("team-a", "new") {
		time.Sleep(time.Millisecond)
	}
	if err := f.client.SweepOrphans(f.ctx, start); err != nil {
		t.Fatal(err)
	}
	if !f.client.HasSynced() {
		t.Fatal("not synced after the sweep")
	}
	f.waitCount(t, 1) // the previous run's request is deleted
	if _, err := f.cs.CertmanagerV1().CertificateRequests("team-a").Get(f.ctx, "new", metav1.GetOptions{}); err != nil {
		t.Fatalf("a request of this run was deleted: %v", err)
	}
}

// switchable is a settings source whose changes a test controls: set and
// setDuration change what Current says, wake tells the waiters.
type switchable struct {
	mu      sync.Mutex
	st      settings.Settings
	changed chan struct{}
}

func newSwitchable(ref cmmeta.IssuerReference) *switchable {
	return &switchable{st: testSettings(ref), changed: make(chan struct{})}
}

func (s *switchable) Current() settings.Settings {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

func (s *switchable) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *switchable) set(ref cmmeta.IssuerReference) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Issuer = ref
}

func (s *switchable) setDuration(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Duration = d
}

func (s *switchable) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
}

var otherIssuer = cmmeta.IssuerReference{Name: "second-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}

func issuedBy(ref cmmeta.IssuerReference) func(*cmapi.CertificateRequest) bool {
	return func(cr *cmapi.CertificateRequest) bool { return cr.Spec.IssuerRef == ref }
}

// A switch while a request waits deletes it and asks the new issuer.
func TestSwitchWhileWaitingAsksTheNewIssuer(t *testing.T) {
	src := newSwitchable(testIssuer)
	f := newFixtureWith(t, src)
	ch := f.issueAsync(f.ctx, testRequest)
	f.createdFor(t, issuedBy(testIssuer))

	src.set(otherIssuer)
	src.wake()
	cr := f.createdFor(t, issuedBy(otherIssuer)) // the old one is deleted
	f.sign(t, cr)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.Request != klog.KRef("team-a", cr.Name) || f.creates.Load() != 2 {
		t.Fatalf("result from %v after %d creates, want %s after 2", r.res.Request, f.creates.Load(), cr.Name)
	}
}

// A change that leaves the issuer as it was (edited back, or to none) keeps
// the request.
func TestSwitchBackKeepsTheRequest(t *testing.T) {
	src := newSwitchable(testIssuer)
	f := newFixtureWith(t, src)
	ch := f.issueAsync(f.ctx, testRequest)
	cr := f.createdFor(t, issuedBy(testIssuer))
	src.wake()
	src.set(cmmeta.IssuerReference{})
	src.wake()
	src.set(testIssuer)
	time.Sleep(50 * time.Millisecond)
	f.sign(t, cr)
	if r := <-ch; r.err != nil || f.creates.Load() != 1 {
		t.Fatalf("got %v after %d creates, want the first request issued", r.err, f.creates.Load())
	}
}

// A request denied after the driver saw a switch (the approver had seen it
// first) is not the pod's failure: the new issuer is asked.
func TestDeniedForTheOldIssuerAsksTheNewOne(t *testing.T) {
	src := newSwitchable(testIssuer)
	f := newFixtureWith(t, src)
	ch := f.issueAsync(f.ctx, testRequest)
	old := f.createdFor(t, issuedBy(testIssuer))
	src.set(otherIssuer) // seen, but no wake-up yet: the denial comes first
	f.setCondition(t, old, cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "spiffe.csi.cert-manager.io", "spec.issuerRef: not the active issuer")
	cr := f.createdFor(t, issuedBy(otherIssuer))
	f.sign(t, cr)
	if r := <-ch; r.err != nil {
		t.Fatalf("got %v, want the new issuer's certificate", r.err)
	}
}

// A pending request left by a timed-out call is replaced, not resumed, when
// the issuer changed in between.
func TestPendingForTheOldIssuerIsReplaced(t *testing.T) {
	src := newSwitchable(testIssuer)
	f := newFixtureWith(t, src)
	ctx, cancel := context.WithTimeout(f.ctx, 100*time.Millisecond)
	_, err := f.client.Issue(ctx, testRequest)
	cancel()
	if failure.ReasonOf(err) != failure.Timeout {
		t.Fatalf("got %v, want a timeout", err)
	}
	src.set(otherIssuer)
	ch := f.issueAsync(f.ctx, testRequest)
	cr := f.createdFor(t, issuedBy(otherIssuer))
	f.sign(t, cr)
	if r := <-ch; r.err != nil || f.creates.Load() != 2 {
		t.Fatalf("got %v after %d creates, want the new issuer's certificate after 2", r.err, f.creates.Load())
	}
}

func withDuration(d time.Duration) func(*cmapi.CertificateRequest) bool {
	return func(cr *cmapi.CertificateRequest) bool {
		return cr.Spec.Duration != nil && cr.Spec.Duration.Duration == d
	}
}

// A new duration while a request waits keeps it (the approver accepts the
// previous settings for requests made before it saw the change); a denial
// that comes after the change is retried once, with the new duration.
func TestDurationChange(t *testing.T) {
	src := newSwitchable(testIssuer)
	f := newFixtureWith(t, src)
	ch := f.issueAsync(f.ctx, testRequest)
	first := f.createdFor(t, withDuration(time.Hour))
	src.setDuration(2 * time.Hour)
	src.wake()
	time.Sleep(50 * time.Millisecond)
	if n := f.creates.Load(); n != 1 {
		t.Fatalf("%d creates after a duration change, want the waiting request kept", n)
	}
	f.setCondition(t, first, cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "spiffe.csi.cert-manager.io",
		`spec.duration: exp="2h0m0s" got="1h0m0s"`)
	second := f.createdFor(t, withDuration(2*time.Hour))
	f.setCondition(t, second, cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "spiffe.csi.cert-manager.io",
		`spec.duration: exp="3h0m0s" got="2h0m0s"`)
	r := <-ch
	if failure.ReasonOf(r.err) != failure.Denied || f.creates.Load() != 2 {
		t.Fatalf("got %v after %d creates; want the second denial returned, not retried again", r.err, f.creates.Load())
	}
}

// Node-bound: the request is created with the driver's client, without a
// pod token, and names the pod; the pod client is never used.
func TestNodeBoundCreatesWithTheDriversCredentials(t *testing.T) {
	f := newFixture(t, testIssuer)
	podClient := fake.NewSimpleClientset()
	var err error
	f.client, err = New(Options{
		DriverName: spiffe.DefaultDriverName, NodeName: "node-1", NodeBound: true,
		Settings: f.client.opts.Settings, PodClient: podClient, DriverClient: f.cs, Waiter: f.client.opts.Waiter,
		Deleter: f.client.opts.Deleter,
	})
	if err != nil {
		t.Fatal(err)
	}
	req := testRequest
	req.Token = ""
	ch := f.issueAsync(f.ctx, req)
	cr := f.created(t)
	if cr.Annotations[spiffe.PodNameAnnotation] != "app-0" || cr.Annotations[spiffe.PodUIDAnnotation] != "uid-1" || cr.OwnerReferences[0].UID != "uid-1" {
		t.Errorf("request does not name its pod: %+v", cr.ObjectMeta)
	}
	f.sign(t, cr)
	if r := <-ch; r.err != nil {
		t.Fatal(r.err)
	}
	if n := len(podClient.Actions()); n != 0 {
		t.Errorf("node-bound mode made %d calls with the pod client: %v", n, podClient.Actions())
	}
	if _, err := New(Options{Settings: f.client.opts.Settings, DriverClient: f.cs, Waiter: f.client.opts.Waiter, Deleter: f.client.opts.Deleter}); err == nil {
		t.Error("New accepted pod-token mode without a pod client")
	}
}

// loseCreateAnswers makes the first n creates commit in the store and then
// fail as a lost answer (the connection dropped after the server wrote).
func (f *fixture) loseCreateAnswers(n int32) {
	var lost atomic.Int32
	f.cs.PrependReactor("create", "certificaterequests", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if lost.Add(1) > n {
			return false, nil, nil
		}
		cr := a.(clienttesting.CreateAction).GetObject().(*cmapi.CertificateRequest)
		if err := f.cs.Tracker().Create(cmapi.SchemeGroupVersion.WithResource("certificaterequests"), cr.DeepCopy(), cr.Namespace); err != nil {
			return true, nil, err
		}
		return true, nil, errors.New("http2: client connection lost")
	})
}

// A create whose answer is lost after the server stored the request leaves
// no orphan: the next call sends the same request again, is told it exists,
// checks it is its own and resumes it. One request, issued, then deleted.
func TestLostCreateAnswerIsResumedNotDuplicated(t *testing.T) {
	f := newFixture(t, testIssuer)
	f.loseCreateAnswers(1)
	if _, err := f.client.Issue(f.ctx, testRequest); failure.ReasonOf(err) != failure.API {
		t.Fatalf("got %v (%s), want a retryable API failure", err, failure.ReasonOf(err))
	}
	cr := f.created(t)
	ch := f.issueAsync(f.ctx, testRequest)
	time.Sleep(50 * time.Millisecond)
	if n := f.count(t); n != 1 {
		t.Fatalf("%d requests after a lost answer and its retries, want 1", n)
	}
	f.sign(t, cr)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.Request != klog.KRef("team-a", cr.Name) || !matchesCSR(t, r.res.KeyPEM, cr.Spec.Request) {
		t.Fatalf("result %v does not come from the one request %s and its key", r.res.Request, cr.Name)
	}
	f.client.Release(f.ctx, testRequest.VolumeID)
	f.waitCount(t, 0)
}

// A lost answer followed by the pod's unpublish: the request that was stored
// is deleted all the same.
func TestLostCreateAnswerThenReleaseDeletes(t *testing.T) {
	f := newFixture(t, testIssuer)
	f.loseCreateAnswers(1)
	if _, err := f.client.Issue(f.ctx, testRequest); failure.ReasonOf(err) != failure.API {
		t.Fatalf("got %v, want an API failure", err)
	}
	f.created(t)
	f.client.Release(f.ctx, testRequest.VolumeID)
	f.waitCount(t, 0)
}

// A lost answer, then a failed read-back of the request the resend is told
// exists: the request is kept (it is most likely the volume's own), read
// again by the next call and resumed. Nothing is orphaned.
func TestLostAnswerThenFailedReadIsKept(t *testing.T) {
	f := newFixture(t, testIssuer)
	f.loseCreateAnswers(1)
	var failGet atomic.Bool
	failGet.Store(true)
	f.cs.PrependReactor("get", "certificaterequests", func(clienttesting.Action) (bool, runtime.Object, error) {
		if failGet.Swap(false) {
			return true, nil, apierrors.NewServiceUnavailable("injected")
		}
		return false, nil, nil
	})
	for range 2 { // the lost answer, then the failed read-back
		if _, err := f.client.Issue(f.ctx, testRequest); failure.ReasonOf(err) != failure.API {
			t.Fatalf("got %v, want an API failure", err)
		}
	}
	cr := f.created(t)
	ch := f.issueAsync(f.ctx, testRequest)
	time.Sleep(50 * time.Millisecond)
	f.sign(t, cr)
	if r := <-ch; r.err != nil || r.res.Request.Name != cr.Name {
		t.Fatalf("got %v, want the one request %s resumed", r.err, cr.Name)
	}
	f.client.Release(f.ctx, testRequest.VolumeID)
	f.waitCount(t, 0)
}

// A lost answer, then a resend the API server refuses (the pod's token
// expired, a quota): the request the first send stored is deleted, not
// orphaned.
func TestLostAnswerThenRefusedResendDeletes(t *testing.T) {
	f := newFixture(t, testIssuer)
	var attempts atomic.Int32
	f.cs.PrependReactor("create", "certificaterequests", func(clienttesting.Action) (bool, runtime.Object, error) {
		if attempts.Add(1) == 1 { // the resend: the lost send never reaches this reactor
			return true, nil, apierrors.NewUnauthorized("token expired")
		}
		return false, nil, nil
	})
	// Prepended last, so it runs first: the first send is stored and its answer lost.
	f.loseCreateAnswers(1)
	if _, err := f.client.Issue(f.ctx, testRequest); failure.ReasonOf(err) != failure.API {
		t.Fatalf("first: got %v, want an API failure", err)
	}
	if _, err := f.client.Issue(f.ctx, testRequest); failure.ReasonOf(err) != failure.Forbidden {
		t.Fatalf("resend: got %v, want forbidden", err)
	}
	f.waitCount(t, 0)
}

// A token that expired while its call waited for a create slot is never sent.
func TestExpiredTokenIsNotSent(t *testing.T) {
	f := newFixture(t, testIssuer)
	req := testRequest
	req.TokenExpiry = time.Now().Add(-time.Second)
	if _, err := f.client.Issue(f.ctx, req); failure.ReasonOf(err) != failure.Token {
		t.Fatalf("got %v, want a token failure", err)
	}
	if f.creates.Load() != 0 {
		t.Fatal("an expired token was sent")
	}
}

// A create the API server refuses stored nothing: the next call makes a new
// request (a new name and key), not a resend.
func TestRefusedCreateIsForgotten(t *testing.T) {
	f := newFixture(t, testIssuer)
	var names []string
	var refuse atomic.Bool
	refuse.Store(true)
	f.cs.PrependReactor("create", "certificaterequests", func(a clienttesting.Action) (bool, runtime.Object, error) {
		cr := a.(clienttesting.CreateAction).GetObject().(*cmapi.CertificateRequest)
		names = append(names, cr.Name)
		if refuse.Load() {
			return true, nil, apierrors.NewForbidden(cmapi.SchemeGroupVersion.WithResource("certificaterequests").GroupResource(), cr.Name, errors.New("no"))
		}
		return false, nil, nil
	})
	if _, err := f.client.Issue(f.ctx, testRequest); failure.ReasonOf(err) != failure.Forbidden {
		t.Fatalf("got %v, want forbidden", err)
	}
	refuse.Store(false)
	ch := f.issueAsync(f.ctx, testRequest)
	f.sign(t, f.created(t))
	if r := <-ch; r.err != nil {
		t.Fatal(r.err)
	}
	if len(names) != 2 || names[0] == names[1] {
		t.Fatalf("create names %q, want two different ones", names)
	}
}

// A request under this volume's name that is not its own (another CSR) is
// never resumed: the call fails and the next one makes another.
func TestNameTakenByAnotherRequestIsNotResumed(t *testing.T) {
	f := newFixture(t, testIssuer)
	var taken atomic.Bool
	f.cs.PrependReactor("create", "certificaterequests", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if taken.Swap(true) {
			return false, nil, nil
		}
		cr := a.(clienttesting.CreateAction).GetObject().(*cmapi.CertificateRequest).DeepCopy()
		cr.Spec.Request = []byte("someone else's CSR")
		if err := f.cs.Tracker().Create(cmapi.SchemeGroupVersion.WithResource("certificaterequests"), cr, cr.Namespace); err != nil {
			return true, nil, err
		}
		return true, nil, apierrors.NewAlreadyExists(cmapi.SchemeGroupVersion.WithResource("certificaterequests").GroupResource(), cr.Name)
	})
	_, err := f.client.Issue(f.ctx, testRequest)
	if failure.ReasonOf(err) != failure.API || !strings.Contains(err.Error(), "not this volume's") {
		t.Fatalf("got %v, want the collision refused", err)
	}
	ch := f.issueAsync(f.ctx, testRequest)
	var mine *cmapi.CertificateRequest
	eventually(t, "a second request", func() bool {
		list, _ := f.cs.CertmanagerV1().CertificateRequests("team-a").List(f.ctx, metav1.ListOptions{})
		for i := range list.Items {
			if string(list.Items[i].Spec.Request) != "someone else's CSR" {
				mine = &list.Items[i]
			}
		}
		return mine != nil
	})
	f.sign(t, mine)
	if r := <-ch; r.err != nil || r.res.Request.Name != mine.Name {
		t.Fatalf("got %v from %v, want the volume's own request %s", r.err, r.res, mine.Name)
	}
}

// A wait that times out says where the request stands, in the approver's or
// issuer's words, quoted and cut.
func TestTimeoutSaysWhereTheRequestStands(t *testing.T) {
	f := newFixture(t, testIssuer)
	issue := func() error {
		ctx, cancel := context.WithTimeout(f.ctx, 100*time.Millisecond)
		defer cancel()
		_, err := f.client.Issue(ctx, testRequest)
		if failure.ReasonOf(err) != failure.Timeout {
			t.Fatalf("got %v, want a timeout", err)
		}
		return err
	}
	if err := issue(); !strings.Contains(err.Error(), "not yet approved or denied: is the approver running?") {
		t.Errorf("unapproved: %v", err)
	}
	cr := f.created(t)
	f.setCondition(t, cr, cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "spiffe.csi.cert-manager.io", "ok")
	cr, _ = f.cs.CertmanagerV1().CertificateRequests("team-a").Get(f.ctx, cr.Name, metav1.GetOptions{})
	long := "Waiting on certificate issuance\x1b[31m " + strings.Repeat("x", 500)
	f.setCondition(t, cr, cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonPending, long)
	eventually(t, "the issuer's condition in the cache", func() bool {
		obj, ok, _ := f.client.opts.Waiter.informer.GetStore().GetByKey("team-a/" + cr.Name)
		return ok && len(obj.(*cmapi.CertificateRequest).Status.Conditions) == 2
	})
	err := issue()
	if !strings.Contains(err.Error(), `approved; the issuer says "Pending": "Waiting on certificate issuance\x1b[31m xxx`) ||
		strings.Contains(err.Error(), "\x1b") || len(err.Error()) > 400 {
		t.Errorf("issuing: %q", err)
	}
}

func matchesCSR(t *testing.T, keyPEM, csrPEM []byte) bool {
	t.Helper()
	kb, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(parseCSR(t, csrPEM).PublicKey)
}

// eventually waits for cond; tests only.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
