package issuance

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

func parseCSR(t *testing.T, csrPEM []byte) *x509.CertificateRequest {
	t.Helper()
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		t.Fatalf("not a PEM CSR: %q", csrPEM)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("CSR signature: %v", err)
	}
	return csr
}

func TestCreateCSRShape(t *testing.T) {
	key, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/team-a/sa/app")
	csrPEM, err := createCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr := parseCSR(t, csrPEM)
	if !bytes.Equal(csr.RawSubject, []byte{0x30, 0x00}) {
		t.Errorf("raw subject = %x, want an empty SEQUENCE (3000)", csr.RawSubject)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want exactly %s", csr.URIs, id)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Errorf("unexpected SANs: %v %v %v", csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if len(csr.Extensions) != 1 {
		t.Fatalf("extensions = %d, want only the SAN", len(csr.Extensions))
	}
	ext := csr.Extensions[0]
	if !ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) || !ext.Critical {
		t.Errorf("extension %v critical=%v, want a critical SubjectAltName", ext.Id, ext.Critical)
	}
	// The URI's bytes are exactly the ID: GeneralNames { [6] IA5String }.
	var names []asn1.RawValue
	if _, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(names) != 1 || names[0].Tag != 6 || string(names[0].Bytes) != id.String() {
		t.Errorf("SAN value = %x", ext.Value)
	}
	if csr.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm = %v", csr.PublicKeyAlgorithm)
	}
}

// Request names are the pod's, cut to stay a valid name, then 10 random
// characters: distinct on every call.
func TestRequestName(t *testing.T) {
	for _, tc := range []struct{ pod, prefix string }{
		{"app-0", "app-0-"},
		{strings.Repeat("a", 199) + ".b", strings.Repeat("a", 199) + "-"}, // cut after the dot
		{strings.Repeat("a", 250), strings.Repeat("a", 200) + "-"},
	} {
		a, b := requestName(tc.pod), requestName(tc.pod)
		if a == b || !strings.HasPrefix(a, tc.prefix) || len(a) != len(tc.prefix)+10 {
			t.Errorf("requestName(%d chars) = %q, %q; want %q and 10 random characters, twice different", len(tc.pod), a, b, tc.prefix)
		}
		if errs := validation.IsDNS1123Subdomain(a); len(errs) > 0 {
			t.Errorf("requestName(%d chars) = %q: %v", len(tc.pod), a, errs)
		}
	}
}

func TestBuildRequest(t *testing.T) {
	issuer := cmmeta.IssuerReference{Name: "spiffe-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	long := string(bytes.Repeat([]byte("n"), 70))
	cr := buildRequest(requestParams{
		Name:       "app-0-abcdefghij",
		DriverName: spiffe.DefaultDriverName, NodeName: long, ID: "spiffe://cluster.local/ns/team-a/sa/app",
		Namespace: "team-a", PodName: "app-0", PodUID: "uid-1", CSR: []byte("csr"), Duration: time.Hour, Issuer: issuer,
	})
	switch {
	case cr.Name != "app-0-abcdefghij" || cr.GenerateName != "":
		t.Errorf("name %q generateName %q", cr.Name, cr.GenerateName)
	case cr.Namespace != "team-a":
		t.Errorf("namespace %q", cr.Namespace)
	case cr.Annotations[spiffe.IdentityAnnotation] != "spiffe://cluster.local/ns/team-a/sa/app" || cr.Annotations[spiffe.PodNamespaceAnnotation] != "team-a" ||
		cr.Annotations[spiffe.PodNameAnnotation] != "app-0" || cr.Annotations[spiffe.PodUIDAnnotation] != "uid-1" || len(cr.Annotations) != 4:
		t.Errorf("annotations %v", cr.Annotations)
	case cr.Labels[spiffe.DriverLabel] != spiffe.DefaultDriverName || cr.Labels[spiffe.NodeLabel] != spiffe.NodeLabelValue(long) || len(cr.Labels[spiffe.NodeLabel]) != 63:
		t.Errorf("labels %v", cr.Labels)
	case len(cr.OwnerReferences) != 1:
		t.Errorf("owners %v", cr.OwnerReferences)
	case cr.Spec.Duration.Duration != time.Hour || cr.Spec.IsCA || cr.Spec.IssuerRef != issuer || string(cr.Spec.Request) != "csr":
		t.Errorf("spec %+v", cr.Spec)
	}
	o := cr.OwnerReferences[0]
	if o.APIVersion != "v1" || o.Kind != "Pod" || o.Name != "app-0" || o.UID != "uid-1" || o.Controller != nil || o.BlockOwnerDeletion != nil {
		t.Errorf("owner %+v", o)
	}
	want := []cmapi.KeyUsage{cmapi.UsageKeyEncipherment, cmapi.UsageDigitalSignature, cmapi.UsageClientAuth, cmapi.UsageServerAuth}
	if len(cr.Spec.Usages) != len(want) {
		t.Fatalf("usages %v", cr.Spec.Usages)
	}
	for i := range want {
		if cr.Spec.Usages[i] != want[i] {
			t.Errorf("usages %v, want %v", cr.Spec.Usages, want)
		}
	}
}
