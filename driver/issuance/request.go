package issuance

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// requestParams are the inputs of a CertificateRequest.
type requestParams struct {
	Name       string
	DriverName string
	NodeName   string
	ID         string
	Namespace  string
	PodName    string
	PodUID     string
	CSR        []byte
	Duration   time.Duration
	Issuer     cmmeta.IssuerReference
}

// maxNamePrefix keeps "<pod>-" plus the random suffix well inside a name's
// 253 characters.
const maxNamePrefix = 200

// requestName is a new request's name: the pod's, then 10 random characters
// (50 bits). The driver names requests itself rather than through
// generateName, so that a create whose answer was lost can be sent again
// without making a second request.
func requestName(podName string) string {
	prefix := podName
	if len(prefix) > maxNamePrefix {
		prefix = prefix[:maxNamePrefix]
	}
	// A cut may end a DNS label with '.' or '-'.
	prefix = strings.TrimRight(prefix, ".-")
	return prefix + "-" + strings.ToLower(rand.Text()[:10])
}

// buildRequest returns the CertificateRequest to create in the pod's
// namespace: annotated with the identity and the pod, labelled for the
// approver and for this node's informer, owned by the pod so it is
// garbage-collected with it. The owner reference sets neither controller nor
// blockOwnerDeletion: the latter needs delete permission on pods, which a
// pod's ServiceAccount does not have.
func buildRequest(p requestParams) *cmapi.CertificateRequest {
	return &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:      p.Name,
			Namespace: p.Namespace,
			Annotations: map[string]string{
				spiffe.IdentityAnnotation:     p.ID,
				spiffe.PodNamespaceAnnotation: p.Namespace,
				spiffe.PodNameAnnotation:      p.PodName,
				spiffe.PodUIDAnnotation:       p.PodUID,
			},
			Labels: map[string]string{
				spiffe.DriverLabel: p.DriverName,
				spiffe.NodeLabel:   spiffe.NodeLabelValue(p.NodeName),
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1",
				Kind:       "Pod",
				Name:       p.PodName,
				UID:        types.UID(p.PodUID),
			}},
		},
		Spec: cmapi.CertificateRequestSpec{
			Duration:  &metav1.Duration{Duration: p.Duration},
			IssuerRef: p.Issuer,
			Request:   p.CSR,
			IsCA:      false,
			Usages:    slices.Clone(spiffe.Usages),
		},
	}
}

// outcome is where a CertificateRequest stands.
type outcome int

const (
	pending outcome = iota
	issued
	denied
	failed
)

// outcomeOf reads a request's conditions; message is the approver's or the
// issuer's own words.
func outcomeOf(cr *cmapi.CertificateRequest) (outcome, string) {
	var ready *cmapi.CertificateRequestCondition
	for i := range cr.Status.Conditions {
		c := &cr.Status.Conditions[i]
		switch {
		case c.Type == cmapi.CertificateRequestConditionDenied && c.Status == cmmeta.ConditionTrue:
			return denied, c.Message
		case c.Type == cmapi.CertificateRequestConditionInvalidRequest && c.Status == cmmeta.ConditionTrue:
			return failed, c.Message
		case c.Type == cmapi.CertificateRequestConditionReady:
			ready = c
		}
	}
	switch {
	case ready == nil:
		return pending, ""
	case ready.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
		return issued, ""
	case ready.Status == cmmeta.ConditionFalse && ready.Reason == cmapi.CertificateRequestReasonFailed:
		return failed, ready.Message
	case ready.Status == cmmeta.ConditionFalse && ready.Reason == cmapi.CertificateRequestReasonDenied:
		return denied, ready.Message
	}
	return pending, ""
}

// maxEcho bounds a condition message echoed in a driver message.
const maxEcho = 200

// pendingState says, for a timed-out wait, where the request stood when it
// was last seen: with the approver, or with the issuer and its own words.
func pendingState(cr *cmapi.CertificateRequest) string {
	if cr == nil {
		return "not yet seen in the driver's cache"
	}
	var approved, ready *cmapi.CertificateRequestCondition
	for i := range cr.Status.Conditions {
		switch c := &cr.Status.Conditions[i]; c.Type {
		case cmapi.CertificateRequestConditionApproved:
			approved = c
		case cmapi.CertificateRequestConditionReady:
			ready = c
		}
	}
	switch {
	case approved == nil || approved.Status != cmmeta.ConditionTrue:
		return "not yet approved or denied: is the approver running?"
	case ready == nil:
		return "approved; the issuer has not reported yet"
	}
	return fmt.Sprintf("approved; the issuer says %q: %q", echo(ready.Reason), echo(ready.Message))
}

// echo cuts a message from the API to maxEcho bytes.
func echo(s string) string {
	if len(s) > maxEcho {
		return s[:maxEcho] + "..."
	}
	return s
}
