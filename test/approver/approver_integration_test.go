//go:build integration

package approver

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/approver/controller"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// TestApproveThenIssue: a valid request created as a ServiceAccount is
// approved by the real approver, then signed by the CA ClusterIssuer.
func TestApproveThenIssue(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	startApprover(t, "approver-issue", "--leader-election=false")
	tn := newTenant(t, "issue")

	cr := tn.create(t, ctx, tn.request(t, requestOpts{}))
	c := decision(ctx, t, tn.ns, cr.Name)
	if c.Type != cmapi.CertificateRequestConditionApproved || c.Reason != spiffe.ConditionReason {
		t.Fatalf("condition = %s/%s %q, want Approved/%s", c.Type, c.Reason, c.Message, spiffe.ConditionReason)
	}
	var issued *cmapi.CertificateRequest
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Get(ctx, cr.Name, metav1.GetOptions{})
		issued = got
		return err == nil && len(got.Status.Certificate) > 0, nil
	}); err != nil {
		t.Fatalf("approved request never issued: %v", err)
	}
	if _, err := bed.VerifySVID(issued.Status.Certificate, tn.id()); err != nil {
		t.Fatalf("issued certificate: %v", err)
	}
	// The approver decides on a trimmed copy of the request (no labels,
	// only the annotations it reads) and writes the status from it: the
	// status write changes nothing else.
	if !maps.Equal(issued.Labels, cr.Labels) || !maps.Equal(issued.Annotations, cr.Annotations) ||
		!bytes.Equal(issued.Spec.Request, cr.Spec.Request) || len(issued.OwnerReferences) != 1 {
		t.Errorf("the decision changed the request: labels %v annotations %v owners %v, created with %v %v %v",
			issued.Labels, issued.Annotations, issued.OwnerReferences, cr.Labels, cr.Annotations, cr.OwnerReferences)
	}
	// The decision is recorded as an Event on the request.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := bed.Kube.CoreV1().Events(tn.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + cr.Name})
		return err == nil && len(evs.Items) > 0, nil
	}); err != nil {
		t.Fatalf("no Event recorded on the request: %v", err)
	}
}

// TestDenyCrafted: crafted requests created as a ServiceAccount (so the
// webhook's username is real) are denied naming the failed check. One that
// names an issuer the approver may not approve for is left undecided: the
// approver's RBAC names its issuers' signers only, and cert-manager refuses
// any decision from it on another's; an Event says why.
func TestDenyCrafted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	startApprover(t, "approver-deny", "--leader-election=false")
	tn := newTenant(t, "deny")
	other := "spiffe://cluster.local/ns/" + tn.ns + "/sa/someone-else"
	otherTD := "spiffe://evil.example/ns/" + tn.ns + "/sa/" + tn.sa
	cases := []struct {
		name string
		opts requestOpts
		want string // part of the Denied message
	}{
		{"other ServiceAccount", requestOpts{uris: []string{other}, annotation: &other}, other},
		{"other trust domain", requestOpts{uris: []string{otherTD}, annotation: &otherTD}, "evil.example"},
		{"extra DNS SAN", requestOpts{dnsNames: []string{"db.example.com"}}, "DNS"},
		{"two URIs", requestOpts{uris: []string{"", ""}}, "URI"},
		{"isCA", requestOpts{isCA: true}, "isCA"},
		{"wrong duration", requestOpts{duration: 24 * time.Hour}, "duration"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.uris != nil && tc.opts.uris[0] == "" {
				tc.opts.uris = []string{tn.id(), tn.id() + "x"}
			}
			cr := tn.create(t, ctx, tn.request(t, tc.opts))
			c := decision(ctx, t, tn.ns, cr.Name)
			if c.Type != cmapi.CertificateRequestConditionDenied || c.Reason != spiffe.ConditionReason {
				t.Fatalf("condition = %s/%s %q, want Denied/%s", c.Type, c.Reason, c.Message, spiffe.ConditionReason)
			}
			if !strings.Contains(c.Message, tc.want) {
				t.Fatalf("denial %q does not mention %q", c.Message, tc.want)
			}
		})
	}
	t.Run("other issuer", func(t *testing.T) {
		foreign := tn.create(t, ctx, tn.request(t, requestOpts{issuer: "not-spiffe"}))
		t.Cleanup(func() {
			_ = bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Delete(context.Background(), foreign.Name, metav1.DeleteOptions{})
		})
		// Decided after it: the approver has seen the foreign one by then.
		later := tn.create(t, ctx, tn.request(t, requestOpts{}))
		if c := decision(ctx, t, tn.ns, later.Name); c.Type != cmapi.CertificateRequestConditionApproved {
			t.Fatalf("valid request: %s %q", c.Type, c.Message)
		}
		time.Sleep(time.Second) // a margin for a decision to land
		got, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Get(ctx, foreign.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c := decided(got); c != nil {
			t.Fatalf("a request for another issuer was decided (%s: %q)", c.Type, c.Message)
		}
		// An Event tells the requester why: the issuer is not this approver's.
		var ours []string
		err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			events, err := bed.Kube.CoreV1().Events(tn.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + foreign.Name})
			if err != nil {
				return false, nil
			}
			ours = ours[:0]
			for _, e := range events.Items {
				if e.Source.Component == "svid-csi-approver" {
					ours = append(ours, e.Reason+": "+e.Message)
				}
			}
			return len(ours) > 0, nil
		})
		if err != nil || len(ours) != 1 || !strings.HasPrefix(ours[0], controller.EventRefused+": ") ||
			!strings.Contains(ours[0], "clusterissuers.cert-manager.io/not-spiffe, which is not the active SPIFFE issuer") {
			t.Fatalf("the approver's Events on the foreign request: %q, want one %s naming its issuer", ours, controller.EventRefused)
		}
	})
}

// TestForeignRequestsUntouched: a request without the identity annotation,
// and one without the driver label, are never decided by the approver.
func TestForeignRequestsUntouched(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	startApprover(t, "approver-foreign", "--leader-election=false")
	tn := newTenant(t, "foreign")
	empty := ""
	noAnnotation := tn.create(t, ctx, tn.request(t, requestOpts{annotation: &empty}))
	noLabel := tn.create(t, ctx, tn.request(t, requestOpts{noLabel: true}))
	// A valid request created after them is decided; the approver has then
	// seen the other two and must have left them alone.
	later := tn.create(t, ctx, tn.request(t, requestOpts{}))
	if c := decision(ctx, t, tn.ns, later.Name); c.Type != cmapi.CertificateRequestConditionApproved {
		t.Fatalf("valid request: %s %q", c.Type, c.Message)
	}
	time.Sleep(time.Second) // a margin for a wrongly queued decision to land
	for _, cr := range []*cmapi.CertificateRequest{noAnnotation, noLabel} {
		got, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Get(ctx, cr.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c := decided(got); c != nil {
			t.Fatalf("%s was decided (%s: %q); it is not the approver's", cr.Name, c.Type, c.Message)
		}
	}
}

// TestAPIServerRestart: the approver keeps working after kube-apiserver goes
// away and comes back under it.
func TestAPIServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	p := startApprover(t, "approver-restart", "--leader-election-id=restart")
	tn := newTenant(t, "restart")
	before := tn.create(t, ctx, tn.request(t, requestOpts{}))
	decision(ctx, t, tn.ns, before.Name)
	if err := bed.RestartAPIServer(ctx, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if exited, err := p.Exited(); exited {
		t.Fatalf("approver exited while the API server was down: %v", err)
	}
	// The tenant's token is still valid: same signing key.
	after := tn.create(t, ctx, tn.request(t, requestOpts{}))
	if c := decision(ctx, t, tn.ns, after.Name); c.Type != cmapi.CertificateRequestConditionApproved {
		t.Fatalf("after restart: %s %q", c.Type, c.Message)
	}
}
