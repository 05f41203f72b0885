package checks

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

const (
	testNS = "team-a"
	testSA = "web"
	testID = "spiffe://cluster.local/ns/team-a/sa/web"
)

const (
	testPod     = "web-0"
	testPodUID  = "0b5e-pod"
	testNode    = "node-a"
	testDriver  = "system:serviceaccount:cert-manager:svid-csi-driver"
	testCSIName = "spiffe.csi.cert-manager.io"
)

var testPolicy = Policy{
	TrustDomain:    spiffeid.RequireTrustDomainFromString("cluster.local"),
	Duration:       time.Hour,
	Issuer:         cmmeta.IssuerReference{Name: "spiffe", Kind: "ClusterIssuer", Group: "cert-manager.io"},
	Modes:          Modes{NodeBound: true, PodToken: true},
	DriverUsername: testDriver,
}

// Keys, generated once.
var (
	keyP256    = sync.OnceValue(func() crypto.Signer { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	keyP384    = sync.OnceValue(func() crypto.Signer { return must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)) })
	keyP521    = sync.OnceValue(func() crypto.Signer { return must(ecdsa.GenerateKey(elliptic.P521(), rand.Reader)) })
	keyP224    = sync.OnceValue(func() crypto.Signer { return must(ecdsa.GenerateKey(elliptic.P224(), rand.Reader)) })
	keyRSA2048 = sync.OnceValue(func() crypto.Signer { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	keyRSA1024 = sync.OnceValue(func() crypto.Signer { return must(rsa.GenerateKey(rand.Reader, 1024)) })
	keyEd25519 = sync.OnceValue(func() crypto.Signer {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return must(k, err)
	})
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// DER building blocks for hand-made requests.

func tlv(tag byte, parts ...[]byte) []byte {
	content := bytes.Join(parts, nil)
	n := len(content)
	switch {
	case n < 0x80:
		return append([]byte{tag, byte(n)}, content...)
	case n < 0x100:
		return append([]byte{tag, 0x81, byte(n)}, content...)
	default:
		return append([]byte{tag, 0x82, byte(n >> 8), byte(n)}, content...)
	}
}

func seq(parts ...[]byte) []byte { return tlv(0x30, parts...) }

func oid(ids ...int) []byte { return must(asn1.Marshal(asn1.ObjectIdentifier(ids))) }

var (
	oidSAN    = []int{2, 5, 29, 17}
	oidKU     = []int{2, 5, 29, 15}
	oidEKU    = []int{2, 5, 29, 37}
	oidBC     = []int{2, 5, 29, 19}
	oidExtReq = []int{1, 2, 840, 113549, 1, 9, 14}
)

// ext is an Extension; critical is encoded only when true (DER).
func ext(id []int, critical bool, value []byte) []byte {
	var crit []byte
	if critical {
		crit = []byte{0x01, 0x01, 0xff}
	}
	return seq(oid(id...), crit, tlv(0x04, value))
}

func uriName(s string) []byte { return tlv(0x86, []byte(s)) }

// san is a critical subjectAltName extension with the given GeneralNames.
func san(names ...[]byte) []byte { return ext(oidSAN, true, seq(names...)) }

// extReq is an extensionRequest attribute with one value holding exts.
func extReq(exts ...[]byte) []byte { return seq(oid(oidExtReq...), tlv(0x31, seq(exts...))) }

// keyUsage is a keyUsage extension with the given bits set (minimal DER bit string).
func keyUsage(bits ...int) []byte {
	var b [2]byte
	last := 0
	for _, i := range bits {
		b[i/8] |= 0x80 >> (i % 8)
		last = max(last, i)
	}
	n := last/8 + 1
	unused := 7 - last%8
	return ext(oidKU, true, tlv(0x03, []byte{byte(unused)}, b[:n]))
}

func extKeyUsage(ids ...[]int) []byte {
	var oids [][]byte
	for _, id := range ids {
		oids = append(oids, oid(id...))
	}
	return ext(oidEKU, false, seq(oids...))
}

var (
	ekuServer   = []int{1, 3, 6, 1, 5, 5, 7, 3, 1}
	ekuClient   = []int{1, 3, 6, 1, 5, 5, 7, 3, 2}
	ekuCodeSign = []int{1, 3, 6, 1, 5, 5, 7, 3, 3}
	ekuAny      = []int{2, 5, 29, 37, 0}
)

var emptyName = seq()

// tbs is a CertificationRequestInfo for key with a raw subject and attributes.
func tbs(key crypto.Signer, subject []byte, attrs ...[]byte) []byte {
	spki := must(x509.MarshalPKIXPublicKey(key.Public()))
	return seq([]byte{0x02, 0x01, 0x00}, subject, spki, tlv(0xa0, attrs...))
}

// signP256 signs a CertificationRequestInfo with a P-256 key, with SHA-256 or SHA-1.
func signP256(key crypto.Signer, info []byte, useSHA1 bool) []byte {
	var digest []byte
	alg := seq(oid(1, 2, 840, 10045, 4, 3, 2))
	if useSHA1 {
		h := sha1.Sum(info)
		digest, alg = h[:], seq(oid(1, 2, 840, 10045, 4, 1))
	} else {
		h := sha256.Sum256(info)
		digest = h[:]
	}
	sig := must(ecdsa.SignASN1(rand.Reader, key.(*ecdsa.PrivateKey), digest))
	return seq(info, alg, tlv(0x03, []byte{0}, sig))
}

// rawCSR is a hand-made, correctly signed P-256 request (DER).
func rawCSR(subject []byte, attrs ...[]byte) []byte {
	return signP256(keyP256(), tbs(keyP256(), subject, attrs...), false)
}

// rawURI is a hand-made request whose only SAN is a URI with exactly these bytes.
func rawURI(uri string) []byte { return rawCSR(emptyName, extReq(san(uriName(uri)))) }

// x509CSR is a request made by crypto/x509, as the driver makes it, with an
// optional subject; its SAN is the test ID (critical).
func x509CSR(key crypto.Signer, subject pkix.Name) []byte {
	tmpl := &x509.CertificateRequest{
		Subject: subject,
		ExtraExtensions: []pkix.Extension{{
			Id: asn1.ObjectIdentifier(oidSAN), Critical: true, Value: seq(uriName(testID)),
		}},
	}
	return must(x509.CreateCertificateRequest(rand.Reader, tmpl, key))
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

var validP256 = sync.OnceValue(func() []byte { return pemOf(x509CSR(keyP256(), pkix.Name{})) })

// request is a CertificateRequest as cert-manager stores the driver's in
// pod-token mode, for csr (PEM).
func request(csr []byte) *cmapi.CertificateRequest {
	return &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "svid-abc",
			Namespace: testNS,
			Annotations: map[string]string{
				spiffe.IdentityAnnotation:     testID,
				spiffe.PodNamespaceAnnotation: testNS,
				spiffe.PodNameAnnotation:      testPod,
				spiffe.PodUIDAnnotation:       testPodUID,
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: testPod, UID: testPodUID}},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			Duration:  &metav1.Duration{Duration: time.Hour},
			Usages:    slices.Clone(spiffe.Usages),
			IssuerRef: testPolicy.Issuer,
			Username:  spiffe.ServiceAccountUsername(testNS, testSA),
			Extra:     map[string][]string{ExtraPodName: {testPod}, ExtraPodUID: {testPodUID}, ExtraNodeName: {testNode}},
		},
	}
}

// nodeBound makes a request node-bound: created by the driver, whose token
// was bound to its own pod on testNode.
func nodeBound(cr *cmapi.CertificateRequest) {
	cr.Spec.Username = testDriver
	cr.Spec.Extra = map[string][]string{ExtraPodName: {"svid-csi-driver-x7"}, ExtraPodUID: {"drv-uid"}, ExtraNodeName: {testNode}}
}

// then composes mutations.
func then(fs ...func(*cmapi.CertificateRequest)) func(*cmapi.CertificateRequest) {
	return func(cr *cmapi.CertificateRequest) {
		for _, f := range fs {
			f(cr)
		}
	}
}

const (
	annotationMsg = `metadata.annotations["spiffe.csi.cert-manager.io/identity"]: `
	pemExp        = `spec.request: exp="one PEM block of type CERTIFICATE REQUEST" got=`
	usagesExp     = `spec.usages: exp="key encipherment, digital signature, client auth, server auth" got=`
	keyExp        = `public key: exp="ECDSA P-256/P-384/P-521, Ed25519 or RSA 2048..8192 bits" got=`
	extExp        = `CSR extension: exp="subjectAltName, keyUsage or extKeyUsage" got=`
	sanExp        = `CSR subjectAltName: exp="one URI" got=`
	idExp         = `URI SAN: exp="spiffe://cluster.local/ns/team-a/sa/web" got=`
	tdExp         = `URI SAN trust domain: exp="cluster.local" got=`
	usernameExp   = `spec.username: exp="system:serviceaccount:<namespace>:<name>" got=`
	parseExp      = `CSR: exp="a PKCS#10 certificate request" got=`
)

type testCase struct {
	name      string
	csr       func() []byte // PEM; nil means the valid P-256 request
	mutate    func(*cmapi.CertificateRequest)
	policy    func(*Policy)
	wantCheck string // empty means approve
	wantMsg   string
}

// build is the case's request and policy.
func (tc testCase) build() (*cmapi.CertificateRequest, Policy) {
	csr := validP256()
	if tc.csr != nil {
		csr = tc.csr()
	}
	cr := request(csr)
	if tc.mutate != nil {
		tc.mutate(cr)
	}
	p := testPolicy
	if tc.policy != nil {
		tc.policy(&p)
	}
	return cr, p
}

// der wraps a DER request maker into a PEM one.
func derCase(f func() []byte) func() []byte { return func() []byte { return pemOf(f()) } }

func testCases() []testCase {
	cases := []testCase{
		// Approved.
		{name: "valid P-256", csr: derCase(func() []byte { return x509CSR(keyP256(), pkix.Name{}) })},
		{name: "valid P-384", csr: derCase(func() []byte { return x509CSR(keyP384(), pkix.Name{}) })},
		{name: "valid P-521", csr: derCase(func() []byte { return x509CSR(keyP521(), pkix.Name{}) })},
		{name: "valid Ed25519", csr: derCase(func() []byte { return x509CSR(keyEd25519(), pkix.Name{}) })},
		{name: "valid RSA-2048", csr: derCase(func() []byte { return x509CSR(keyRSA2048(), pkix.Name{}) })},
		{name: "valid hand-made, non-critical SAN", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(ext(oidSAN, false, seq(uriName(testID)))))
		})},
		{name: "valid with allowed keyUsage, extKeyUsage", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), keyUsage(0, 2), extKeyUsage(ekuServer, ekuClient)))
		})},
		{name: "valid with usages in another order", mutate: func(cr *cmapi.CertificateRequest) {
			slices.Reverse(cr.Spec.Usages)
		}},
		{name: "valid with defaulted issuer kind and group in the request",
			mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef = cmmeta.IssuerReference{Name: "spiffe"} },
			policy: func(p *Policy) {
				p.Issuer = cmmeta.IssuerReference{Name: "spiffe", Kind: "Issuer", Group: "cert-manager.io"}
			}},
		{name: "valid with defaulted issuer kind and group in the policy",
			mutate: func(cr *cmapi.CertificateRequest) {
				cr.Spec.IssuerRef = cmmeta.IssuerReference{Name: "spiffe", Kind: "Issuer", Group: "cert-manager.io"}
			},
			policy: func(p *Policy) { p.Issuer = cmmeta.IssuerReference{Name: "spiffe"} }},
		{name: "valid with surrounding whitespace", csr: func() []byte {
			return append(append([]byte("\n\n"), validP256()...), "\n\n"...)
		}},

		// Annotation.
		{name: "annotation missing", mutate: func(cr *cmapi.CertificateRequest) { cr.Annotations = nil },
			wantCheck: CheckAnnotation, wantMsg: annotationMsg + `exp="a SPIFFE ID" got="missing"`},
		{name: "annotation differs from the SAN", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Annotations[spiffe.IdentityAnnotation] = "spiffe://cluster.local/ns/team-a/sa/admin"
		}, wantCheck: CheckAnnotation, wantMsg: annotationMsg + `exp="spiffe://cluster.local/ns/team-a/sa/web" got="spiffe://cluster.local/ns/team-a/sa/admin"`},
		{name: "annotation empty", mutate: func(cr *cmapi.CertificateRequest) { cr.Annotations[spiffe.IdentityAnnotation] = "" },
			wantCheck: CheckAnnotation, wantMsg: annotationMsg + `exp="spiffe://cluster.local/ns/team-a/sa/web" got=""`},

		// Issuer.
		{name: "issuerRef to another issuer", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef.Name = "other" },
			wantCheck: CheckIssuer, wantMsg: `spec.issuerRef: exp="ClusterIssuer.cert-manager.io/spiffe" got="ClusterIssuer.cert-manager.io/other"`},
		{name: "issuerRef of another kind", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef.Kind = "Issuer" },
			wantCheck: CheckIssuer, wantMsg: `spec.issuerRef: exp="ClusterIssuer.cert-manager.io/spiffe" got="Issuer.cert-manager.io/spiffe"`},
		{name: "issuerRef with empty kind is an Issuer", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef.Kind = "" },
			wantCheck: CheckIssuer, wantMsg: `spec.issuerRef: exp="ClusterIssuer.cert-manager.io/spiffe" got="Issuer.cert-manager.io/spiffe"`},
		{name: "issuerRef of another group", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IssuerRef.Group = "example.com" },
			wantCheck: CheckIssuer, wantMsg: `spec.issuerRef: exp="ClusterIssuer.cert-manager.io/spiffe" got="ClusterIssuer.example.com/spiffe"`},
		{name: "issuerRef whose kind and group split the same string elsewhere", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Spec.IssuerRef.Kind, cr.Spec.IssuerRef.Group = "ClusterIssuer.cert-manager", "io"
		}, wantCheck: CheckIssuer, wantMsg: `spec.issuerRef: exp="ClusterIssuer.cert-manager.io/spiffe" got="ClusterIssuer.cert-manager.io/spiffe"`},

		// Usages.
		{name: "wrong usage", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Usages[0] = cmapi.UsageSigning },
			wantCheck: CheckUsages, wantMsg: usagesExp + `"signing, digital signature, client auth, server auth"`},
		{name: "extra usage", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Spec.Usages = append(cr.Spec.Usages, cmapi.UsageCertSign)
		}, wantCheck: CheckUsages, wantMsg: usagesExp + `"key encipherment, digital signature, client auth, server auth, cert sign"`},
		{name: "missing usage", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Usages = cr.Spec.Usages[:3] },
			wantCheck: CheckUsages, wantMsg: usagesExp + `"key encipherment, digital signature, client auth"`},
		{name: "duplicate usage instead of one", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Usages[3] = cmapi.UsageClientAuth },
			wantCheck: CheckUsages, wantMsg: usagesExp + `"key encipherment, digital signature, client auth, client auth"`},
		{name: "duplicate usage on top", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Spec.Usages = append(cr.Spec.Usages, cmapi.UsageServerAuth)
		}, wantCheck: CheckUsages, wantMsg: usagesExp + `"key encipherment, digital signature, client auth, server auth, server auth"`},
		{name: "no usages", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Usages = nil },
			wantCheck: CheckUsages, wantMsg: usagesExp + `""`},

		// Duration and isCA.
		{name: "nil duration", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Duration = nil },
			wantCheck: CheckDuration, wantMsg: `spec.duration: exp="1h0m0s" got="unset"`},
		{name: "wrong duration", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Duration.Duration = 2 * time.Hour },
			wantCheck: CheckDuration, wantMsg: `spec.duration: exp="1h0m0s" got="2h0m0s"`},
		{name: "spec.isCA", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.IsCA = true },
			wantCheck: CheckBasicConstraints, wantMsg: `spec.isCA: exp="false" got="true"`},

		// PEM.
		{name: "not PEM", csr: func() []byte { return []byte("hello") },
			wantCheck: CheckCSR, wantMsg: pemExp + `"no PEM block"`},
		{name: "empty request", csr: func() []byte { return nil },
			wantCheck: CheckCSR, wantMsg: pemExp + `"no PEM block"`},
		{name: "two PEM blocks", csr: func() []byte { return append(validP256(), validP256()...) },
			wantCheck: CheckCSR, wantMsg: pemExp + `"more than one PEM block"`},
		{name: "trailing garbage", csr: func() []byte { return append(validP256(), "garbage\n"...) },
			wantCheck: CheckCSR, wantMsg: pemExp + `"data after the PEM block"`},
		{name: "leading garbage", csr: func() []byte { return append([]byte("garbage\n"), validP256()...) },
			wantCheck: CheckCSR, wantMsg: pemExp + `"data before the PEM block"`},
		{name: "PEM of another type", csr: func() []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x509CSR(keyP256(), pkix.Name{})})
		}, wantCheck: CheckCSR, wantMsg: pemExp + `"PEM block of type CERTIFICATE"`},
		{name: "PEM headers", csr: func() []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: x509CSR(keyP256(), pkix.Name{})})
		}, wantCheck: CheckCSR, wantMsg: pemExp + `"PEM block with headers"`},
		{name: "non-canonical PEM (one long base64 line)", csr: func() []byte {
			b64 := base64.StdEncoding.EncodeToString(x509CSR(keyP256(), pkix.Name{}))
			return []byte("-----BEGIN CERTIFICATE REQUEST-----\n" + b64 + "\n-----END CERTIFICATE REQUEST-----\n")
		}, wantCheck: CheckCSR, wantMsg: pemExp + `"non-canonical PEM encoding"`},
		{name: "oversized request", csr: func() []byte { return bytes.Repeat([]byte(" "), 17000) },
			wantCheck: CheckCSR, wantMsg: `spec.request: exp="at most 16384 bytes" got="more"`},

		// Parsing and signature.
		{name: "PEM of an empty SEQUENCE", csr: derCase(func() []byte { return seq() }),
			wantCheck: CheckCSR, wantMsg: parseExp + `"asn1: syntax error: sequence truncated"`},
		{name: "bad signature (flipped byte)", csr: derCase(func() []byte {
			der := x509CSR(keyP256(), pkix.Name{})
			der[len(der)-1] ^= 0x01
			return der
		}), wantCheck: CheckCSR, wantMsg: `CSR signature: exp="valid" got="x509: ECDSA verification failure"`},
		{name: "signature by another key", csr: derCase(func() []byte {
			return signP256(keyP256(), tbs(must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)), emptyName, extReq(san(uriName(testID)))), false)
		}), wantCheck: CheckCSR, wantMsg: `CSR signature: exp="valid" got="x509: ECDSA verification failure"`},
		{name: "SHA-1 signature", csr: derCase(func() []byte {
			return signP256(keyP256(), tbs(keyP256(), emptyName, extReq(san(uriName(testID)))), true)
		}), wantCheck: CheckCSR, wantMsg: `CSR signature algorithm: exp="SHA-256 or stronger" got="ECDSA-SHA1"`},
		{name: "version 1", csr: derCase(func() []byte {
			spki := must(x509.MarshalPKIXPublicKey(keyP256().Public()))
			info := seq([]byte{0x02, 0x01, 0x01}, emptyName, spki, tlv(0xa0, extReq(san(uriName(testID)))))
			return signP256(keyP256(), info, false)
		}), wantCheck: CheckCSR, wantMsg: `CSR version: exp="0" got="01"`},

		// Key.
		{name: "RSA-1024", csr: derCase(func() []byte { return x509CSR(keyRSA1024(), pkix.Name{}) }),
			wantCheck: CheckKey, wantMsg: keyExp + `"RSA 1024 bits"`},
		{name: "P-224", csr: derCase(func() []byte { return x509CSR(keyP224(), pkix.Name{}) }),
			wantCheck: CheckKey, wantMsg: keyExp + `"ECDSA P-224"`},

		// Subject.
		{name: "CN", csr: derCase(func() []byte { return x509CSR(keyP256(), pkix.Name{CommonName: "web"}) }),
			wantCheck: CheckSubject, wantMsg: `subject: exp="" got="CN=web"`},
		{name: "O and OU", csr: derCase(func() []byte {
			return x509CSR(keyP256(), pkix.Name{Organization: []string{"acme"}, OrganizationalUnit: []string{"dev"}})
		}), wantCheck: CheckSubject, wantMsg: `subject: exp="" got="OU=dev,O=acme"`},
		{name: "serialNumber", csr: derCase(func() []byte { return x509CSR(keyP256(), pkix.Name{SerialNumber: "1"}) }),
			wantCheck: CheckSubject, wantMsg: `subject: exp="" got="SERIALNUMBER=1"`},
		{name: "unknown subject attribute", csr: derCase(func() []byte {
			return x509CSR(keyP256(), pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: "x"}}})
		}), wantCheck: CheckSubject, wantMsg: `subject: exp="" got="1.2.3.4=#130178"`},
		{name: "empty but present RDN SET", csr: derCase(func() []byte {
			return rawCSR(seq(tlv(0x31)), extReq(san(uriName(testID))))
		}), wantCheck: CheckSubject, wantMsg: `subject: exp="" got="DER 30023100"`},
		{name: "two empty RDN SETs", csr: derCase(func() []byte {
			return rawCSR(seq(tlv(0x31), tlv(0x31)), extReq(san(uriName(testID))))
		}), wantCheck: CheckSubject, wantMsg: `subject: exp="" got="DER 300431003100"`},

		// Attributes and extensions.
		{name: "other extension (subjectKeyIdentifier)", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), ext([]int{2, 5, 29, 14}, false, tlv(0x04, []byte{1, 2, 3}))))
		}), wantCheck: CheckExtensions, wantMsg: extExp + `"2.5.29.14"`},
		{name: "other extension (private OID)", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), ext([]int{1, 3, 6, 1, 4, 1, 99999, 1}, false, []byte{0x05, 0x00})))
		}), wantCheck: CheckExtensions, wantMsg: extExp + `"1.3.6.1.4.1.99999.1"`},
		{name: "challengePassword attribute", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID))), seq(oid(1, 2, 840, 113549, 1, 9, 7), tlv(0x31, tlv(0x0c, []byte("pw")))))
		}), wantCheck: CheckExtensions, wantMsg: `CSR attribute: exp="extensionRequest" got="1.2.840.113549.1.9.7"`},
		{name: "two extensionRequest attributes", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID))), extReq(keyUsage(0)))
		}), wantCheck: CheckExtensions, wantMsg: `CSR attributes: exp="one extensionRequest" got="2 extensionRequest"`},
		{name: "extensionRequest with a second value (x509 reads only the first)", csr: derCase(func() []byte {
			attr := seq(oid(oidExtReq...), tlv(0x31, seq(san(uriName(testID))), seq(san(uriName("spiffe://cluster.local/ns/kube-system/sa/admin")))))
			return rawCSR(emptyName, attr)
		}), wantCheck: CheckExtensions, wantMsg: `CSR extensionRequest: exp="one value" got="more than one value"`},
		{name: "duplicate SAN extensions", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), san(uriName(testID))))
		}), wantCheck: CheckCSR, wantMsg: parseExp + `"x509: certificate request contains duplicate requested extensions"`},

		// Basic constraints: no such extension, whatever it says.
		{name: "basicConstraints empty (CA false)", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), ext(oidBC, true, seq())))
		}), wantCheck: CheckExtensions, wantMsg: extExp + `"basicConstraints"`},
		{name: "basicConstraints CA true", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), ext(oidBC, true, seq([]byte{0x01, 0x01, 0xff}))))
		}), wantCheck: CheckExtensions, wantMsg: extExp + `"basicConstraints"`},
		{name: "basicConstraints CA true with pathlen, made by x509", csr: derCase(func() []byte {
			value := must(asn1.Marshal(struct {
				IsCA    bool
				MaxPath int
			}{true, 0}))
			tmpl := &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
				{Id: asn1.ObjectIdentifier(oidSAN), Critical: true, Value: seq(uriName(testID))},
				{Id: asn1.ObjectIdentifier(oidBC), Critical: true, Value: value},
			}}
			return must(x509.CreateCertificateRequest(rand.Reader, tmpl, keyP256()))
		}), wantCheck: CheckExtensions, wantMsg: extExp + `"basicConstraints"`},
		{name: "basicConstraints CA false with pathlen", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), ext(oidBC, true, seq([]byte{0x02, 0x01, 0x00}))))
		}), wantCheck: CheckExtensions, wantMsg: extExp + `"basicConstraints"`},

		// Key usages in the CSR.
		{name: "keyUsage cert sign", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), keyUsage(0, 5)))
		}), wantCheck: CheckUsages, wantMsg: `CSR keyUsage: exp="digital signature, key encipherment" got="digital signature, cert sign"`},
		{name: "keyUsage decipher only (second byte)", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), keyUsage(0, 8)))
		}), wantCheck: CheckUsages, wantMsg: `CSR keyUsage: exp="digital signature, key encipherment" got="digital signature, decipher only"`},
		{name: "extKeyUsage code signing", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), extKeyUsage(ekuServer, ekuCodeSign)))
		}), wantCheck: CheckUsages, wantMsg: `CSR extKeyUsage: exp="client auth, server auth" got="server auth, code signing"`},
		{name: "extKeyUsage any", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID)), extKeyUsage(ekuAny)))
		}), wantCheck: CheckUsages, wantMsg: `CSR extKeyUsage: exp="client auth, server auth" got="any"`},

		// SANs.
		{name: "DNS SAN", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID), tlv(0x82, []byte("web.team-a.svc")))))
		}), wantCheck: CheckSANs, wantMsg: sanExp + `"URI, DNS"`},
		{name: "IP SAN", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID), tlv(0x87, []byte{10, 0, 0, 1}))))
		}), wantCheck: CheckSANs, wantMsg: sanExp + `"URI, IP"`},
		{name: "email SAN", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(tlv(0x81, []byte("a@b.c")), uriName(testID))))
		}), wantCheck: CheckSANs, wantMsg: sanExp + `"email, URI"`},
		{name: "otherName SAN only", csr: derCase(func() []byte {
			upn := tlv(0xa0, oid(1, 3, 6, 1, 4, 1, 311, 20, 2, 3), tlv(0xa0, tlv(0x0c, []byte("admin"))))
			return rawCSR(emptyName, extReq(san(upn)))
		}), wantCheck: CheckSANs, wantMsg: sanExp + `"otherName"`},
		{name: "no SAN extension", csr: derCase(func() []byte { return rawCSR(emptyName, extReq(keyUsage(0))) }),
			wantCheck: CheckSANs, wantMsg: sanExp + `"none"`},
		{name: "no attributes at all", csr: derCase(func() []byte { return rawCSR(emptyName) }),
			wantCheck: CheckSANs, wantMsg: sanExp + `"none"`},
		{name: "empty SAN", csr: derCase(func() []byte { return rawCSR(emptyName, extReq(san())) }),
			wantCheck: CheckSANs, wantMsg: sanExp + `"none"`},
		{name: "two URIs", csr: derCase(func() []byte {
			return rawCSR(emptyName, extReq(san(uriName(testID), uriName("spiffe://cluster.local/ns/team-a/sa/db"))))
		}), wantCheck: CheckSANs, wantMsg: sanExp + `"URI, URI"`},

		// Identity: the URI's bytes.
		{name: "wrong trust domain", csr: derCase(func() []byte { return rawURI("spiffe://evil.example/ns/team-a/sa/web") }),
			wantCheck: CheckTrustDomain, wantMsg: tdExp + `"evil.example"`},
		{name: "upper-case host", csr: derCase(func() []byte { return rawURI("spiffe://CLUSTER.LOCAL/ns/team-a/sa/web") }),
			wantCheck: CheckTrustDomain, wantMsg: tdExp + `"CLUSTER.LOCAL"`},
		{name: "userinfo", csr: derCase(func() []byte { return rawURI("spiffe://x@cluster.local/ns/team-a/sa/web") }),
			wantCheck: CheckTrustDomain, wantMsg: tdExp + `"x@cluster.local"`},
		{name: "port", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local:443/ns/team-a/sa/web") }),
			wantCheck: CheckTrustDomain, wantMsg: tdExp + `"cluster.local:443"`},
		{name: "empty authority", csr: derCase(func() []byte { return rawURI("spiffe:///ns/team-a/sa/web") }),
			wantCheck: CheckTrustDomain, wantMsg: tdExp + `""`},
		{name: "wrong namespace path", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-b/sa/web") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-b/sa/web"`},
		{name: "wrong ServiceAccount", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/db") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/db"`},
		{name: "path differing in case", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/Web") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/Web"`},
		{name: "upper-case scheme", csr: derCase(func() []byte { return rawURI("SPIFFE://cluster.local/ns/team-a/sa/web") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"SPIFFE://cluster.local/ns/team-a/sa/web"`},
		{name: "percent-encoded path", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/w%65b") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/w%65b"`},
		{name: "percent-encoded slash", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a%2Fsa/web") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a%2Fsa/web"`},
		{name: "trailing slash", csr: derCase(func() []byte { return rawURI(testID + "/") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/web/"`},
		{name: "empty segment", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a//sa/web") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a//sa/web"`},
		{name: "dot segment", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/../sa/web") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/../sa/web"`},
		{name: "query", csr: derCase(func() []byte { return rawURI(testID + "?x=1") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/web?x=1"`},
		{name: "empty query", csr: derCase(func() []byte { return rawURI(testID + "?") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/web?"`},
		{name: "fragment", csr: derCase(func() []byte { return rawURI(testID + "#frag") }),
			wantCheck: CheckIdentity, wantMsg: idExp + `"spiffe://cluster.local/ns/team-a/sa/web#frag"`},
		{name: "NUL byte", csr: derCase(func() []byte { return rawURI(testID + "\x00") }),
			wantCheck: CheckCSR, wantMsg: parseExp + `"x509: cannot parse URI \"spiffe://cluster.local/ns/team-a/sa/web\\x00\": parse \"spiffe://cluster.local/ns/team-a/sa/web\\x00\": net/url: invalid control character in URL"`},
		{name: "non-ASCII URI", csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/wéb") }),
			wantCheck: CheckCSR, wantMsg: parseExp + `"x509: SAN uniformResourceIdentifier is malformed"`},

		// Identity: who asked.
		{name: "username of a user", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Username = "alice" },
			wantCheck: CheckIdentity, wantMsg: usernameExp + `"alice"`},
		{name: "username of a node", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Username = "system:node:node-1" },
			wantCheck: CheckIdentity, wantMsg: usernameExp + `"system:node:node-1"`},
		{name: "username empty", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Username = "" },
			wantCheck: CheckIdentity, wantMsg: usernameExp + `""`},
		{name: "username with an extra colon", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Spec.Username = "system:serviceaccount:team-a:web:x"
		}, wantCheck: CheckIdentity, wantMsg: usernameExp + `"system:serviceaccount:team-a:web:x"`},
		{name: "username without a name", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Username = "system:serviceaccount:team-a:" },
			wantCheck: CheckIdentity, wantMsg: usernameExp + `"system:serviceaccount:team-a:"`},
		{name: "request in another namespace than the ServiceAccount", mutate: func(cr *cmapi.CertificateRequest) { cr.Namespace = "team-b" },
			wantCheck: CheckIdentity, wantMsg: `spec.username namespace: exp="team-b" got="team-a"`},
		{name: "ServiceAccount of the ID in another namespace", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Namespace = "team-b"
			cr.Spec.Username = spiffe.ServiceAccountUsername("team-b", testSA)
		}, wantCheck: CheckIdentity, wantMsg: idExp[:len(`URI SAN: exp=`)] + `"spiffe://cluster.local/ns/team-b/sa/web" got="spiffe://cluster.local/ns/team-a/sa/web"`},
		{name: "another ServiceAccount", mutate: func(cr *cmapi.CertificateRequest) {
			cr.Spec.Username = spiffe.ServiceAccountUsername(testNS, "db")
		}, wantCheck: CheckIdentity, wantMsg: `URI SAN: exp="spiffe://cluster.local/ns/team-a/sa/db" got="spiffe://cluster.local/ns/team-a/sa/web"`},
		{name: "policy trust domain differs", policy: func(p *Policy) { p.TrustDomain = spiffeid.RequireTrustDomainFromString("prod.example") },
			wantCheck: CheckTrustDomain, wantMsg: `URI SAN trust domain: exp="prod.example" got="cluster.local"`},
	}
	return append(cases, bindingCases()...)
}

// bindingCases are the modes and the binding of a request to its pod.
func bindingCases() []testCase {
	ownerMsg := `metadata.ownerReferences: exp="one v1/Pod" got=`
	return []testCase{
		// Pod-token mode.
		{name: "pod-token: not accepted", policy: func(p *Policy) { p.Modes.PodToken = false },
			wantCheck: CheckRequester, wantMsg: `spec.username: exp="` + testDriver + `" got="system:serviceaccount:team-a:web"`},
		{name: "pod-token: token bound to another pod", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Extra[ExtraPodUID] = []string{"other-uid"} },
			wantCheck: CheckBinding, wantMsg: `spec.extra["authentication.kubernetes.io/pod-uid"]: exp="0b5e-pod" got="other-uid"`},
		{name: "pod-token: token bound to no pod (a controller copying the label and annotation)", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Extra = nil },
			wantCheck: CheckBinding, wantMsg: `spec.extra["authentication.kubernetes.io/pod-uid"]: exp="0b5e-pod" got=""`},
		{name: "pod-token: two pod UIDs", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Extra[ExtraPodUID] = []string{testPodUID, "x"} },
			wantCheck: CheckBinding, wantMsg: `spec.extra["authentication.kubernetes.io/pod-uid"]: exp="0b5e-pod" got="0b5e-pod,x"`},
		{name: "pod-token: token of a pod of the same UID but another name", mutate: func(cr *cmapi.CertificateRequest) { cr.Spec.Extra[ExtraPodName] = []string{"web-1"} },
			wantCheck: CheckBinding, wantMsg: `spec.extra["authentication.kubernetes.io/pod-name"]: exp="web-0" got="web-1"`},
		{name: "pod-token: owned by a Certificate (cert-manager's own requests)", mutate: func(cr *cmapi.CertificateRequest) {
			cr.OwnerReferences = []metav1.OwnerReference{{APIVersion: "cert-manager.io/v1", Kind: "Certificate", Name: "web", UID: "c"}}
		}, wantCheck: CheckBinding, wantMsg: ownerMsg + `"cert-manager.io/v1/Certificate web"`},
		{name: "pod-token: no owner", mutate: func(cr *cmapi.CertificateRequest) { cr.OwnerReferences = nil },
			wantCheck: CheckBinding, wantMsg: ownerMsg + `""`},
		{name: "pod-token: two owners", mutate: func(cr *cmapi.CertificateRequest) {
			cr.OwnerReferences = append(cr.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "web-1", UID: "u"})
		}, wantCheck: CheckBinding, wantMsg: ownerMsg + `"v1/Pod web-0, v1/Pod web-1"`},
		{name: "pod-token: owner Pod without UID", mutate: func(cr *cmapi.CertificateRequest) { cr.OwnerReferences[0].UID = "" },
			wantCheck: CheckBinding, wantMsg: ownerMsg + `"v1/Pod web-0"`},

		// Node-bound mode.
		{name: "node-bound: valid", mutate: nodeBound},
		{name: "node-bound: not accepted", mutate: nodeBound, policy: func(p *Policy) { p.Modes.NodeBound = false },
			wantCheck: CheckRequester, wantMsg: `request mode: exp="pod-token" got="node-bound"`},
		{name: "node-bound: the driver's token named no node", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { delete(cr.Spec.Extra, ExtraNodeName) }),
			wantCheck: CheckRequester, wantMsg: `spec.extra["authentication.kubernetes.io/node-name"]: exp="the node of the driver's pod-bound token" got=""`},
		{name: "node-bound: a token bound to a Node, not a pod", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) {
			delete(cr.Spec.Extra, ExtraPodName)
			delete(cr.Spec.Extra, ExtraPodUID)
		}), wantCheck: CheckRequester, wantMsg: `spec.extra["authentication.kubernetes.io/pod-name"]: exp="the driver's pod, from its pod-bound token" got=""`},
		{name: "node-bound: two driver pods", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { cr.Spec.Extra[ExtraPodUID] = []string{"a", "b"} }),
			wantCheck: CheckRequester, wantMsg: `spec.extra["authentication.kubernetes.io/pod-uid"]: exp="the driver's pod, from its pod-bound token" got="a,b"`},
		{name: "node-bound: two nodes", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { cr.Spec.Extra[ExtraNodeName] = []string{testNode, "node-b"} }),
			wantCheck: CheckRequester, wantMsg: `spec.extra["authentication.kubernetes.io/node-name"]: exp="the node of the driver's pod-bound token" got="node-a,node-b"`},
		{name: "node-bound: pod UID annotation differs from the owner", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { cr.Annotations[spiffe.PodUIDAnnotation] = "x" }),
			wantCheck: CheckBinding, wantMsg: `metadata.annotations["spiffe.csi.cert-manager.io/pod-uid"]: exp="0b5e-pod" got="x"`},
		{name: "node-bound: pod name annotation missing", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { delete(cr.Annotations, spiffe.PodNameAnnotation) }),
			wantCheck: CheckBinding, wantMsg: `metadata.annotations["spiffe.csi.cert-manager.io/pod-name"]: exp="web-0" got=""`},
		{name: "node-bound: pod of another namespace", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { cr.Annotations[spiffe.PodNamespaceAnnotation] = "kube-system" }),
			wantCheck: CheckBinding, wantMsg: `metadata.annotations["spiffe.csi.cert-manager.io/pod-namespace"]: exp="team-a" got="kube-system"`},
		{name: "node-bound: owner name that is no pod name", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) {
			cr.OwnerReferences[0].Name = "web-0/../../nodes/x"
			cr.Annotations[spiffe.PodNameAnnotation] = "web-0/../../nodes/x"
		}), wantCheck: CheckBinding, wantMsg: `metadata.ownerReferences[0].name: exp="a pod name" got="web-0/../../nodes/x"`},
		{name: "node-bound: no owner", mutate: then(nodeBound, func(cr *cmapi.CertificateRequest) { cr.OwnerReferences = nil }),
			wantCheck: CheckBinding, wantMsg: ownerMsg + `""`},
		{name: "node-bound: ID of another namespace", mutate: nodeBound, csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/kube-system/sa/web") }),
			wantCheck: CheckIdentity, wantMsg: `URI SAN: exp="spiffe://<trust domain>/ns/team-a/sa/<name>" got="spiffe://cluster.local/ns/kube-system/sa/web"`},
		{name: "node-bound: ID with a longer path", mutate: nodeBound, csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/web/x") }),
			wantCheck: CheckIdentity, wantMsg: `URI SAN: exp="spiffe://<trust domain>/ns/team-a/sa/<name>" got="spiffe://cluster.local/ns/team-a/sa/web/x"`},
		{name: "node-bound: ID of another ServiceAccount than the annotation", mutate: nodeBound, csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/db") }),
			wantCheck: CheckAnnotation, wantMsg: annotationMsg + `exp="spiffe://cluster.local/ns/team-a/sa/db" got="spiffe://cluster.local/ns/team-a/sa/web"`},
		{name: "node-bound: ServiceAccount name that is no name", mutate: nodeBound, csr: derCase(func() []byte { return rawURI("spiffe://cluster.local/ns/team-a/sa/Web%2F") }),
			wantCheck: CheckIdentity, wantMsg: `SPIFFE ID: exp="spiffe://<trust domain>/ns/<namespace>/sa/<name>" got="SPIFFE ID for ServiceAccount team-a/Web%2F: path segment characters are limited to letters, numbers, dots, dashes, and underscores"`},
		{name: "node-bound: other trust domain", mutate: nodeBound, csr: derCase(func() []byte { return rawURI("spiffe://evil.example/ns/team-a/sa/web") }),
			wantCheck: CheckTrustDomain, wantMsg: `URI SAN trust domain: exp="cluster.local" got="evil.example"`},
		{name: "node-bound: with no driver configured, the driver is a pod-token requester of another namespace", mutate: nodeBound,
			policy: func(p *Policy) { p.DriverUsername = "" }, wantCheck: CheckIdentity, wantMsg: `spec.username namespace: exp="team-a" got="cert-manager"`},
	}
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	denials := 0
	for _, tc := range testCases() {
		if tc.wantCheck != "" {
			denials++
		}
		t.Run(tc.name, func(t *testing.T) {
			cr, p := tc.build()
			before := cr.DeepCopy()
			d := Evaluate(cr, p)
			switch {
			case tc.wantCheck == "" && d != nil:
				t.Fatalf("Evaluate() = %s %q, want approval", d.Check, d.Message)
			case tc.wantCheck != "" && d == nil:
				t.Fatalf("Evaluate() approved, want %s %q", tc.wantCheck, tc.wantMsg)
			case d != nil && (d.Check != tc.wantCheck || d.Message != tc.wantMsg):
				t.Fatalf("Evaluate() =\n  %s %s\nwant\n  %s %s", d.Check, d.Message, tc.wantCheck, tc.wantMsg)
			}
			if d != nil && d.Error() != d.Message {
				t.Errorf("Error() = %q, want the message", d.Error())
			}
			if !equalRequests(before, cr) {
				t.Errorf("Evaluate modified the request")
			}
		})
	}
	if denials < 30 {
		t.Errorf("only %d crafted denials", denials)
	}
}

// The checks before the requester's do not depend on the mode: every such
// crafted denial is the same for a node-bound request.
func TestEvaluateNodeBoundSameDenials(t *testing.T) {
	t.Parallel()
	modeFree := map[string]bool{CheckIssuer: true, CheckUsages: true, CheckDuration: true, CheckBasicConstraints: true,
		CheckCSR: true, CheckKey: true, CheckSubject: true, CheckExtensions: true, CheckSANs: true}
	n := 0
	for _, tc := range testCases() {
		if !modeFree[tc.wantCheck] {
			continue
		}
		n++
		cr, p := tc.build()
		nodeBound(cr)
		if d := Evaluate(cr, p); d == nil || d.Check != tc.wantCheck || d.Message != tc.wantMsg {
			t.Errorf("%s, node-bound: Evaluate() = %+v, want %s %q", tc.name, d, tc.wantCheck, tc.wantMsg)
		}
	}
	if n < 50 {
		t.Errorf("only %d mode-free denials", n)
	}
}

func equalRequests(a, b *cmapi.CertificateRequest) bool {
	return bytes.Equal(a.Spec.Request, b.Spec.Request) && slices.Equal(a.Spec.Usages, b.Spec.Usages) &&
		a.Spec.IssuerRef == b.Spec.IssuerRef && a.Namespace == b.Namespace && a.Spec.Username == b.Spec.Username
}

func TestEvaluateNil(t *testing.T) {
	d := Evaluate(nil, testPolicy)
	if d == nil || d.Check != CheckCSR || d.Message != `CertificateRequest: exp="a request" got="nil"` {
		t.Fatalf("Evaluate(nil) = %+v", d)
	}
	if (*Denial)(nil).Error() != "" {
		t.Fatalf("nil Denial has a message")
	}
}

// TestLongValuesAreClipped: what the request chose is quoted back at most maxGot bytes.
func TestLongValuesAreClipped(t *testing.T) {
	cr := request(validP256())
	cr.Spec.Username = strings.Repeat("a", 1000)
	d := Evaluate(cr, testPolicy)
	want := usernameExp + `"` + strings.Repeat("a", maxGot) + `..."`
	if d == nil || d.Message != want {
		t.Fatalf("Evaluate() = %+v, want message %q", d, want)
	}
}

// TestDERReader covers the strictness of the reader on non-minimal encodings.
func TestDERReader(t *testing.T) {
	for _, tc := range []struct {
		in []byte
		ok bool
	}{
		{[]byte{0x30, 0x00}, true},
		{[]byte{0x30, 0x81, 0x00}, false},       // long form for a short length
		{[]byte{0x30, 0x80, 0x00, 0x00}, false}, // indefinite length
		{[]byte{0x30, 0x82, 0x00, 0x80}, false}, // leading zero byte
		{[]byte{0x1f, 0x01, 0x00}, false},       // high tag number
		{[]byte{0x30, 0x02, 0x00}, false},       // truncated
		{append([]byte{0x30, 0x81, 0x80}, make([]byte, 0x80)...), true},
	} {
		d := der(tc.in)
		if _, _, ok := d.next(); ok != tc.ok {
			t.Errorf("next(% x) ok = %v, want %v", tc.in, ok, tc.ok)
		}
	}
}

// approvedIdentity independently (encoding/asn1 and x509) checks an approved
// request: one URI SAN whose bytes are testID, nothing else identifying.
func approvedIdentity(t *testing.T, der []byte) {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("approved a request x509 cannot parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("approved a request with a bad signature: %v", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != testID || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Fatalf("approved SANs: URIs %v DNS %v IP %v email %v", csr.URIs, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if !bytes.Equal(csr.RawSubject, []byte{0x30, 0x00}) {
		t.Fatalf("approved subject % x", csr.RawSubject)
	}
	sans := 0
	for _, e := range csr.Extensions {
		if !e.Id.Equal(asn1.ObjectIdentifier(oidSAN)) {
			continue
		}
		sans++
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(e.Value, &names); err != nil || len(rest) != 0 {
			t.Fatalf("approved SAN that encoding/asn1 cannot parse: %v", err)
		}
		if len(names) != 1 || names[0].Class != asn1.ClassContextSpecific || names[0].Tag != 6 || string(names[0].Bytes) != testID {
			t.Fatalf("approved SAN %+v", names)
		}
	}
	if sans != 1 {
		t.Fatalf("approved %d SAN extensions", sans)
	}
}

// FuzzEvaluate feeds arbitrary requests: as spec.request (mode 0), as a DER
// CSR (mode 1), or as a CertificationRequestInfo that the harness signs with
// the test P-256 key (mode 2, so that mutated structures can reach approval).
// Nothing panics, every denial is well-formed, and anything approved carries
// exactly the expected URI.
func FuzzEvaluate(f *testing.F) {
	for _, tc := range testCases() {
		if tc.csr == nil {
			continue
		}
		data := tc.csr()
		f.Add(data, uint8(0))
		if block, _ := pem.Decode(data); block != nil {
			f.Add(block.Bytes, uint8(1))
			var csr struct {
				TBS  asn1.RawValue
				Rest []asn1.RawValue `asn1:"optional"`
			}
			if _, err := asn1.Unmarshal(block.Bytes, &csr); err == nil {
				f.Add(csr.TBS.FullBytes, uint8(2))
			}
		}
	}
	checks := []string{CheckAnnotation, CheckIssuer, CheckUsages, CheckDuration, CheckBasicConstraints, CheckCSR,
		CheckKey, CheckSubject, CheckExtensions, CheckSANs, CheckRequester, CheckBinding, CheckIdentity, CheckTrustDomain}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		var request0 []byte
		var derBytes []byte
		switch mode % 3 {
		case 0:
			request0 = data
		case 1:
			derBytes = data
			request0 = pemOf(data)
		case 2:
			derBytes = signP256(keyP256(), data, false)
			request0 = pemOf(derBytes)
		}
		d := Evaluate(request(request0), testPolicy)
		if d != nil {
			if !slices.Contains(checks, d.Check) || !strings.Contains(d.Message, " exp=") {
				t.Fatalf("malformed denial %+v", d)
			}
			return
		}
		if derBytes == nil {
			block, _ := pem.Decode(request0)
			derBytes = block.Bytes
		}
		approvedIdentity(t, derBytes)
	})
}

func BenchmarkEvaluate(b *testing.B) {
	cr := request(validP256())
	b.ReportAllocs()
	for b.Loop() {
		if d := Evaluate(cr, testPolicy); d != nil {
			b.Fatal(d)
		}
	}
}
