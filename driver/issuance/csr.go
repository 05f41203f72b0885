// Package issuance obtains a certificate for a pod: a fresh key in memory, a
// CSR carrying only the pod's SPIFFE ID, a cert-manager CertificateRequest
// created with the pod's own token, and an event-driven wait for its outcome.
package issuance

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	// oidSubjectAltName is id-ce-subjectAltName (RFC 5280 4.2.1.6).
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	// emptySubject is the DER of an empty RDNSequence: SEQUENCE {}.
	emptySubject = []byte{0x30, 0x00}
)

// newKey generates a private key in memory: ECDSA P-256.
func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
	}
	return key, nil
}

// createCSR returns a PEM CSR with an empty subject and a SubjectAltName
// extension, marked critical as RFC 5280 requires with an empty subject,
// holding exactly one URI: the SPIFFE ID.
func createCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	san, err := sanExtension(id.String())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{
		RawSubject:      emptySubject,
		ExtraExtensions: []pkix.Extension{san},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// sanExtension encodes GeneralNames with one uniformResourceIdentifier [6].
func sanExtension(uri string) (pkix.Extension, error) {
	names := []asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(uri)}}
	value, err := asn1.Marshal(names)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode SubjectAltName %q: %w", uri, err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: value}, nil
}

// EncodeKey returns key as a PKCS#8 PEM block.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
