package checks

import (
	"bytes"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// A trimmed request is decided as the request is: every crafted case, in
// both modes, gets the same decision and message from its trimmed copy.
func TestTrimKeepsEveryDecision(t *testing.T) {
	t.Parallel()
	n := 0
	for _, tc := range testCases() {
		for _, bound := range []bool{false, true} {
			cr, p := tc.build()
			if bound {
				nodeBound(cr)
			}
			want, got := Evaluate(cr, p), Evaluate(Trim(cr), p)
			if (want == nil) != (got == nil) || want != nil && *want != *got {
				t.Errorf("%s (node-bound %t): trimmed %+v, whole %+v", tc.name, bound, got, want)
			}
			b1, ok1 := NodeBinding(cr, p)
			b2, ok2 := NodeBinding(Trim(cr), p)
			if b1 != b2 || ok1 != ok2 {
				t.Errorf("%s (node-bound %t): NodeBinding trimmed %+v %t, whole %+v %t", tc.name, bound, b2, ok2, b1, ok1)
			}
			n++
		}
	}
	if n < 100 {
		t.Errorf("only %d cases", n)
	}
}

// What anyone who may create a request can make large is cut or dropped,
// and a cut value fails the check that reads it as the whole one does.
func TestTrimBoundsWhatTheAuthorControls(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("x", 1<<20)
	cr, p := testCases()[0].build()
	if d := Evaluate(cr, p); d != nil {
		t.Fatalf("base case denied: %v", d)
	}
	cr.Labels = map[string]string{"junk": huge[:63]}
	cr.Annotations["junk"] = huge
	cr.Annotations[spiffe.PodNameAnnotation] = huge
	cr.Finalizers = []string{huge}
	cr.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: huge}}
	cr.Spec.Groups = []string{huge}
	cr.Spec.Username += huge
	cr.Spec.IssuerRef.Kind += huge
	cr.Spec.Extra = map[string][]string{"junk": {huge}, ExtraPodName: {huge, huge, huge}}
	cr.OwnerReferences[0].Kind += huge
	cr.OwnerReferences[0].Name += huge
	cr.OwnerReferences[0].APIVersion += huge
	cr.OwnerReferences[0].UID += types.UID(huge)
	cr.OwnerReferences = append(cr.OwnerReferences, make([]metav1.OwnerReference, 1000)...)
	cr.Spec.Usages = append(cr.Spec.Usages, make([]cmapi.KeyUsage, 1000)...)

	tr := Trim(cr)
	if size := trimmedSize(tr); size > 16<<10 {
		t.Errorf("trimmed request holds %d bytes of values, want at most 16 KiB", size)
	}
	if tr.Labels != nil || tr.Finalizers != nil || tr.ManagedFields != nil || tr.Spec.Groups != nil {
		t.Errorf("kept labels, finalizers, managed fields or groups: %+v", tr.ObjectMeta)
	}
	if _, ok := tr.Annotations["junk"]; ok {
		t.Error("kept an annotation no check reads")
	}
	if _, ok := tr.Spec.Extra["junk"]; ok {
		t.Error("kept an extra no check reads")
	}
	if len(tr.Spec.Extra[ExtraPodName]) != maxListLength || len(tr.OwnerReferences) != maxListLength {
		t.Errorf("extra %d values, %d owners, want %d", len(tr.Spec.Extra[ExtraPodName]), len(tr.OwnerReferences), maxListLength)
	}
	if got, want := Evaluate(tr, p), Evaluate(cr, p); got == nil || got.Check != want.Check {
		t.Errorf("trimmed: %v, whole: %v: want the same check to deny both", got, want)
	}

	// Each field cut on its own is still denied by its own check.
	for name, mutate := range map[string]func(*cmapi.CertificateRequest){
		"request":     func(cr *cmapi.CertificateRequest) { cr.Spec.Request = bytes.Repeat(cr.Spec.Request, 200) },
		"issuer name": func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef.Name = cr.Spec.IssuerRef.Name + huge },
		"identity":    func(cr *cmapi.CertificateRequest) { cr.Annotations[spiffe.IdentityAnnotation] += huge },
		"username":    func(cr *cmapi.CertificateRequest) { cr.Spec.Username += huge },
		"owner name":  func(cr *cmapi.CertificateRequest) { cr.OwnerReferences[0].Name += huge },
		"owner uid":   func(cr *cmapi.CertificateRequest) { cr.OwnerReferences[0].UID += types.UID(huge) },
	} {
		cr, p := testCases()[0].build()
		mutate(cr)
		want, got := Evaluate(cr, p), Evaluate(Trim(cr), p)
		if want == nil || got == nil || want.Check != got.Check {
			t.Errorf("%s: trimmed %+v, whole %+v: want the same check to deny both", name, got, want)
		}
	}
}

func trimmedSize(cr *cmapi.CertificateRequest) int {
	n := len(cr.Name) + len(cr.Namespace) + len(cr.Spec.Request) + len(cr.Spec.Username) +
		len(cr.Spec.IssuerRef.Name) + len(cr.Spec.IssuerRef.Kind) + len(cr.Spec.IssuerRef.Group)
	for k, v := range cr.Annotations {
		n += len(k) + len(v)
	}
	for k, vs := range cr.Spec.Extra {
		n += len(k)
		for _, v := range vs {
			n += len(v)
		}
	}
	for _, r := range cr.OwnerReferences {
		n += len(r.Name) + len(r.Kind) + len(r.APIVersion) + len(r.UID)
	}
	return n
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"spiffe-ca":                  "spiffe-ca",
		"a\nb\x1b[1m\"":              `a\nb\x1b[1m\"`,
		strings.Repeat("x", 12):      "xxxxxxxxxx...",
		"é" + strings.Repeat("x", 9): `\u00e9xxxxxxxx...`,
	} {
		if got := Printable(in, 10); got != want {
			t.Errorf("Printable(%q, 10) = %q, want %q", in, got, want)
		}
	}
}
