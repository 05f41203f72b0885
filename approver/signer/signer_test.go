package signer

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"

	"github.com/svid-csi/svid-csi/internal/settings"
)

var (
	clusterIssuer = cmmeta.IssuerReference{Name: "spiffe-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	stepIssuer    = cmmeta.IssuerReference{Name: "step-ca", Kind: "StepClusterIssuer", Group: "certmanager.step.sm"}
	nsIssuer      = cmmeta.IssuerReference{Name: "team-ca", Kind: "Issuer", Group: "cert-manager.io"}
)

func mapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper([]schema.GroupVersion{{Group: "cert-manager.io", Version: "v1"}, {Group: "certmanager.step.sm", Version: "v1beta1"}})
	m.Add(schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "ClusterIssuer"}, meta.RESTScopeRoot)
	m.Add(schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Issuer"}, meta.RESTScopeNamespace)
	// A plural no guess from the kind gives: the signer must come from discovery.
	m.AddSpecific(schema.GroupVersionKind{Group: "certmanager.step.sm", Version: "v1beta1", Kind: "StepClusterIssuer"},
		schema.GroupVersionResource{Group: "certmanager.step.sm", Version: "v1beta1", Resource: "stepclusterissuerz"},
		schema.GroupVersionResource{Group: "certmanager.step.sm", Version: "v1beta1", Resource: "stepclusterissuer"}, meta.RESTScopeRoot)
	return m
}

// resettable is a mapper that learns a kind when reset, as discovery does
// once a CRD is installed.
type resettable struct {
	meta.RESTMapper
	learn func()
}

func (r *resettable) Reset() { r.learn() }

// client answers SelfSubjectAccessReviews: allowed for the signers given,
// and records what was asked.
func client(allowed ...string) (*kubefake.Clientset, *[]authorizationv1.ResourceAttributes) {
	cs := kubefake.NewClientset()
	var mu sync.Mutex
	var asked []authorizationv1.ResourceAttributes
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		mu.Lock()
		asked = append(asked, *r.Spec.ResourceAttributes)
		mu.Unlock()
		for _, s := range allowed {
			if r.Spec.ResourceAttributes.Name == s {
				r.Status.Allowed = true
			}
		}
		return true, r, nil
	})
	return cs, &asked
}

func TestCheck(t *testing.T) {
	const exact, wild = "clusterissuers.cert-manager.io/spiffe-ca", "clusterissuers.cert-manager.io/*"
	for name, tc := range map[string]struct {
		ref     cmmeta.IssuerReference
		allowed []string
		want    Outcome
		asked   []string
	}{
		"allowed by name": {clusterIssuer, []string{exact},
			Outcome{Signer: exact, Allowed: true, Known: true}, []string{wild, exact}},
		"allowed by the wildcard": {clusterIssuer, []string{wild},
			Outcome{Signer: exact, Allowed: true, Known: true}, []string{wild}},
		"not granted": {clusterIssuer, []string{"clusterissuers.cert-manager.io/other"},
			Outcome{Signer: exact, Known: true, Why: "RBAC does not grant approve on signers " + exact,
				Fix: "add the signer to the resourceNames of ClusterRole svid-csi-approver:signers"}, []string{wild, exact}},
		"an external issuer's plural from discovery": {stepIssuer, []string{"stepclusterissuerz.certmanager.step.sm/step-ca"},
			Outcome{Signer: "stepclusterissuerz.certmanager.step.sm/step-ca", Allowed: true, Known: true},
			[]string{"stepclusterissuerz.certmanager.step.sm/*", "stepclusterissuerz.certmanager.step.sm/step-ca"}},
		"a kind nobody serves": {cmmeta.IssuerReference{Name: "x", Kind: "AWSPCAClusterIssuer", Group: "awspca.cert-manager.io"}, nil,
			Outcome{Signer: "awspcaclusterissuers.awspca.cert-manager.io/x", Known: true,
				Why: "the API server serves no kind AWSPCAClusterIssuer in group awspca.cert-manager.io",
				Fix: "install the issuer's CRD and controller, or correct the issuer's kind and group"}, nil},
		"namespaced: no answer but the wildcard's": {nsIssuer, nil,
			Outcome{Signer: "issuers.cert-manager.io/<namespace>.team-ca", Why: "a namespaced issuer's signer names the namespace of each request"},
			[]string{"issuers.cert-manager.io/*"}},
		"namespaced, the wildcard granted": {nsIssuer, []string{"issuers.cert-manager.io/*"},
			Outcome{Signer: "issuers.cert-manager.io/*", Allowed: true, Known: true}, []string{"issuers.cert-manager.io/*"}},
	} {
		t.Run(name, func(t *testing.T) {
			cs, asked := client(tc.allowed...)
			got, err := Check(t.Context(), cs, mapper(), tc.ref)
			if err != nil || got != tc.want {
				t.Fatalf("Check = %+v, %v; want %+v", got, err, tc.want)
			}
			var names []string
			for _, a := range *asked {
				if a.Group != "cert-manager.io" || a.Resource != "signers" || a.Verb != "approve" {
					t.Errorf("asked %+v", a)
				}
				names = append(names, a.Name)
			}
			if !slices.Equal(names, tc.asked) {
				t.Fatalf("asked for %q, want %q", names, tc.asked)
			}
		})
	}
}

// A kind installed after the approver started is found: a miss asks
// discovery again once.
func TestCheckRediscovers(t *testing.T) {
	base := meta.NewDefaultRESTMapper([]schema.GroupVersion{{Group: "certmanager.step.sm", Version: "v1beta1"}})
	m := &resettable{RESTMapper: base, learn: func() {
		base.Add(schema.GroupVersionKind{Group: "certmanager.step.sm", Version: "v1beta1", Kind: "StepClusterIssuer"}, meta.RESTScopeRoot)
	}}
	cs, _ := client("stepclusterissuers.certmanager.step.sm/step-ca")
	got, err := Check(t.Context(), cs, m, stepIssuer)
	if err != nil || !got.Allowed {
		t.Fatalf("Check = %+v, %v; want allowed after rediscovery", got, err)
	}
}

func TestCheckAPIErrorIsNoAnswer(t *testing.T) {
	cs := kubefake.NewClientset()
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, err := Check(t.Context(), cs, mapper(), clusterIssuer); err == nil {
		t.Fatal("Check = nil error, want the API error")
	}
}

// source is an issuer source a test switches.
type source struct {
	mu      sync.Mutex
	ref     cmmeta.IssuerReference
	changed chan struct{}
}

func (s *source) Current() settings.Settings {
	s.mu.Lock()
	defer s.mu.Unlock()
	return settings.Settings{Issuer: s.ref}
}

func (s *source) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *source) HasSynced() bool { return true }

func (s *source) set(ref cmmeta.IssuerReference) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ref = ref
	close(s.changed)
	s.changed = make(chan struct{})
}

type report struct {
	signer         string
	allowed, known bool
}

// Run checks again when the issuer changes, and reports only changes.
func TestRunFollowsTheIssuer(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	cs, _ := client("clusterissuers.cert-manager.io/spiffe-ca")
	var failing atomic.Bool
	cs.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing.Load() {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	src := &source{ref: clusterIssuer, changed: make(chan struct{})}
	reports := make(chan report, 10)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Client: cs, Mapper: mapper(), Issuer: src, Every: 10 * time.Millisecond,
			Report: func(s string, allowed, known bool) { reports <- report{s, allowed, known} }})
	}()
	next := func(want report) {
		t.Helper()
		select {
		case got := <-reports:
			if got != want {
				t.Fatalf("report %+v, want %+v", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no report, want %+v", want)
		}
	}
	next(report{"clusterissuers.cert-manager.io/spiffe-ca", true, true})
	time.Sleep(50 * time.Millisecond) // several periodic checks: the same outcome, no report
	src.set(stepIssuer)
	next(report{"stepclusterissuerz.certmanager.step.sm/step-ca", false, true})
	src.set(nsIssuer)
	next(report{"issuers.cert-manager.io/<namespace>.team-ca", false, false})
	select {
	case r := <-reports:
		t.Fatalf("an extra report %+v", r)
	default:
	}
	// No answer (the API server away): the series goes, once.
	failing.Store(true)
	src.set(clusterIssuer)
	next(report{"", false, false})
	select {
	case r := <-reports:
		t.Fatalf("an extra report %+v while failing", r)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestGuess(t *testing.T) {
	for _, tc := range []struct {
		ref  cmmeta.IssuerReference
		want string
	}{
		{cmmeta.IssuerReference{Name: "ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}, "clusterissuers.cert-manager.io/ca"},
		{cmmeta.IssuerReference{Name: "ca"}, "issuers.cert-manager.io/team-a.ca"},
		{cmmeta.IssuerReference{Name: "step", Kind: "StepClusterIssuer", Group: "certmanager.step.sm"}, "stepclusterissuers.certmanager.step.sm/step"},
		{cmmeta.IssuerReference{Name: "x\n\x1b[31m", Kind: "ClusterIssuer"}, `clusterissuers.cert-manager.io/x\n\x1b[31m`},
	} {
		if got := Guess("team-a", tc.ref); got != tc.want {
			t.Errorf("Guess(%+v) = %q, want %q", tc.ref, got, tc.want)
		}
	}
}
