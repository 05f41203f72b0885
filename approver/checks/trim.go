package checks

import (
	"bytes"
	"slices"
	"strconv"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Field bounds for Trim: each is more than the most a request that passes
// every check can carry (a Kubernetes name is at most 253 bytes, a SPIFFE ID
// under 600 since a trust domain is at most spiffe.MaxTrustDomainLength, a
// username of a ServiceAccount 22+63+1+253), so a cut value fails the check
// that reads it as the whole value would, never passes it.
const (
	maxName       = 254
	maxID         = 2049
	maxUsername   = 512
	maxListLength = 2 // the checks want exactly one of each extra and owner
)

// trimmedAnnotations are the annotations the checks read.
var trimmedAnnotations = []string{
	spiffe.IdentityAnnotation,
	spiffe.PodNamespaceAnnotation,
	spiffe.PodNameAnnotation,
	spiffe.PodUIDAnnotation,
}

// trimmedExtra are the keys of spec.extra the checks read.
var trimmedExtra = []string{ExtraPodName, ExtraPodUID, ExtraNodeName}

// Trim returns a copy of a request holding only what Evaluate, NodeBinding
// and a status write read, each field cut to a bound the request's author
// cannot raise: a cache of undecided requests costs at most a few KiB for
// each, whatever their authors put in them (anyone who may create a
// CertificateRequest may set a megabyte of annotations or CSR). What is
// kept: name, namespace, UID, resourceVersion, creationTimestamp, the owner
// references, the annotations in trimmedAnnotations, the spec but groups and
// the extra keys not read, and the status. A decision made on the copy is
// the decision made on the request: every value cut is already longer than
// any that passes, so the same check denies it (its message quoting less).
func Trim(cr *cmapi.CertificateRequest) *cmapi.CertificateRequest {
	out := &cmapi.CertificateRequest{
		TypeMeta: cr.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              cr.Name,
			Namespace:         cr.Namespace,
			UID:               cr.UID,
			ResourceVersion:   cr.ResourceVersion,
			CreationTimestamp: cr.CreationTimestamp,
			DeletionTimestamp: cr.DeletionTimestamp,
		},
		Spec: cmapi.CertificateRequestSpec{
			Duration: cr.Spec.Duration,
			IssuerRef: cmmeta.IssuerReference{
				Name:  cut(cr.Spec.IssuerRef.Name, maxName),
				Kind:  cut(cr.Spec.IssuerRef.Kind, maxName),
				Group: cut(cr.Spec.IssuerRef.Group, maxName),
			},
			Request:  cutBytes(cr.Spec.Request, MaxRequestBytes+1),
			IsCA:     cr.Spec.IsCA,
			Usages:   slices.Clone(cr.Spec.Usages[:min(len(cr.Spec.Usages), len(spiffe.Usages)+1)]),
			Username: cut(cr.Spec.Username, maxUsername),
			UID:      cut(cr.Spec.UID, maxName),
		},
		Status: cr.Status,
	}
	// The API server checks only that an owner's fields are not empty.
	for _, r := range cr.OwnerReferences[:min(len(cr.OwnerReferences), maxListLength)] {
		r.APIVersion, r.Kind, r.Name = cut(r.APIVersion, maxName), cut(r.Kind, maxName), cut(r.Name, maxName)
		r.UID = types.UID(cut(string(r.UID), maxName))
		out.OwnerReferences = append(out.OwnerReferences, r)
	}
	for _, k := range trimmedAnnotations {
		if v, ok := cr.Annotations[k]; ok {
			if out.Annotations == nil {
				out.Annotations = make(map[string]string, len(trimmedAnnotations))
			}
			out.Annotations[k] = cut(v, maxID)
		}
	}
	for _, k := range trimmedExtra {
		if v, ok := cr.Spec.Extra[k]; ok {
			if out.Spec.Extra == nil {
				out.Spec.Extra = make(map[string][]string, len(trimmedExtra))
			}
			vs := make([]string, min(len(v), maxListLength))
			for i := range vs {
				vs[i] = cut(v[i], maxName)
			}
			out.Spec.Extra[k] = vs
		}
	}
	return out
}

// Printable is a value from a request (or an error quoting one) for a
// message or a log line: cut to max bytes ("..." marks the cut) and escaped
// to printable ASCII, without surrounding quotes, so that no line break or
// terminal escape its author wrote reaches a log.
func Printable(s string, max int) string {
	c := cut(s, max)
	q := strconv.QuoteToASCII(c)
	q = q[1 : len(q)-1]
	if len(c) < len(s) {
		q += "..."
	}
	return q
}

// cut returns s cut to n bytes, copied when cut: a prefix would keep the
// whole of a large value alive.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.Clone(s[:n])
}

func cutBytes(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return bytes.Clone(b[:n])
}
