//go:build integration

package approver

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/approver/controller"
)

// TestRefusedDecisionIsFinal: with an issuer outside cert-manager.io that
// cert-manager's webhook will not let the approver approve (here: no such
// signer), the refusal is final for the request: one Warning Event on it
// saying why and what to grant, one log line, and no retries, where the
// approver used to retry with backoff for ever.
func TestRefusedDecisionIsFinal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := startApprover(t, "approver-refused", "--leader-election=false",
		"--issuer-name=ext", "--issuer-kind=ExternalIssuer", "--issuer-group=issuers.example.com")
	tn := newTenant(t, "refused")
	cr := tn.create(t, ctx, tn.request(t, requestOpts{issuer: "ext", issuerKind: "ExternalIssuer", issuerGroup: "issuers.example.com"}))

	var event *corev1.Event
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := bed.Kube.CoreV1().Events(tn.ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", cr.Name),
				fields.OneTermEqualSelector("reason", controller.EventRefused)).String()})
		if err != nil || len(list.Items) == 0 {
			return false, nil
		}
		event = &list.Items[0]
		return true, nil
	})
	if err != nil {
		t.Fatalf("no %s Event on the request: %v\n%s", controller.EventRefused, err, p.Tail(4096))
	}
	if event.Type != corev1.EventTypeWarning || !strings.Contains(event.Message, "add externalissuers.issuers.example.com/"+tn.ns+".ext to the resourceNames of ClusterRole svid-csi-approver:signers") ||
		!strings.Contains(event.Message, "denied the request") {
		t.Errorf("event %s %q", event.Type, event.Message)
	}
	// Nothing more happens: no retry, no second line, no decision.
	time.Sleep(5 * time.Second)
	logs := p.Tail(1 << 20)
	if n := strings.Count(logs, "cert-manager refused the decision"); n != 1 {
		t.Errorf("%d refusal lines in the approver's log, want 1 (no retries)", n)
	}
	if strings.Contains(logs, "Cannot decide CertificateRequest yet") {
		t.Error("the approver retried the refused decision")
	}
	got, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Get(ctx, cr.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := decided(got); c != nil {
		t.Errorf("request decided (%s) although cert-manager refused it", c.Type)
	}
	if event.Count > 1 {
		t.Errorf("the Event was recorded %d times", event.Count)
	}
}
