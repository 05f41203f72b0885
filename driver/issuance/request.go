package issuance

import (
	"slices"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// requestParams are the inputs of a CertificateRequest.
type requestParams struct {
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

// maxGenerateName keeps "<pod>-" plus the API server's 5 random characters
// well inside a name's 253.
const maxGenerateName = 200

// buildRequest returns the CertificateRequest to create in the pod's
// namespace: named after the pod (generateName, so names never collide),
// annotated with the identity and the pod, labelled for the approver and for this node's
// informer, owned by the pod so it is garbage-collected with it. The owner
// reference sets neither controller nor blockOwnerDeletion: the latter needs
// delete permission on pods, which a pod's ServiceAccount does not have.
func buildRequest(p requestParams) *cmapi.CertificateRequest {
	prefix := p.PodName
	if len(prefix) > maxGenerateName {
		prefix = prefix[:maxGenerateName]
	}
	return &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: prefix + "-",
			Namespace:    p.Namespace,
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
