// Package checks decides whether the approver approves one CertificateRequest
// of the driver: pure functions over the request and the policy, no I/O.
//
// Checks compare what the request really carries, not what a parser makes of
// it: the CSR's raw subject must be an empty SEQUENCE, and the bytes of its one
// URI SAN must equal the expected SPIFFE ID string exactly.
package checks

import (
	"fmt"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Check names: short, stable and low-cardinality, usable as metric labels.
// Evaluate runs the checks in this order and reports the first that fails.
const (
	// CheckAnnotation: the identity annotation is present, and (last) equals
	// the expected SPIFFE ID.
	CheckAnnotation = "annotation"
	// CheckIssuer: spec.issuerRef is the active issuer (empty kind means
	// "Issuer", empty group "cert-manager.io", on both sides).
	CheckIssuer = "issuer"
	// CheckUsages: spec.usages are exactly the driver's four usages; the CSR's
	// keyUsage and extKeyUsage extensions, if present, allow nothing more.
	CheckUsages = "usages"
	// CheckDuration: spec.duration is set and equals the enforced duration.
	CheckDuration = "duration"
	// CheckBasicConstraints: spec.isCA is false (the CSR may not carry a
	// basicConstraints extension at all: CheckExtensions).
	CheckBasicConstraints = "basic-constraints"
	// CheckCSR: spec.request is at most MaxRequestBytes, one PEM
	// "CERTIFICATE REQUEST" block and nothing else, the CSR parses (strict DER), and its signature verifies with
	// SHA-256 or stronger.
	CheckCSR = "csr"
	// CheckKey: the public key is ECDSA P-256/P-384/P-521, Ed25519 or RSA 2048..8192 bits.
	CheckKey = "key"
	// CheckSubject: the raw subject is an empty SEQUENCE (30 00).
	CheckSubject = "subject"
	// CheckExtensions: the CSR has no attribute but one extensionRequest with
	// one value, and it requests no extension but subjectAltName, keyUsage
	// and extKeyUsage, each at most once.
	CheckExtensions = "extensions"
	// CheckSANs: the subjectAltName extension holds exactly one name, a URI.
	CheckSANs = "sans"
	// CheckRequester: the request comes in an accepted mode: from the
	// driver's ServiceAccount (node-bound), whose token named its node, or
	// from another ServiceAccount (pod-token).
	CheckRequester = "requester"
	// CheckBinding: the request is owned by one Pod; pod-token: the
	// requester's token was bound to that pod (spec.extra); node-bound: the
	// pod annotations name that pod.
	CheckBinding = "binding"
	// CheckIdentity: the URI's bytes are the SPIFFE ID of a ServiceAccount of
	// the request's own namespace: pod-token, the requester (spec.username);
	// node-bound, the one the URI names, which EvaluatePod compares with the pod's.
	CheckIdentity = "identity"
	// CheckTrustDomain: the URI is the expected ID except for its authority,
	// which is not the configured trust domain.
	CheckTrustDomain = "trust-domain"
	// CheckPod (node-bound only, after every other check, by the
	// controller): the pod exists with that UID on the driver's node, is
	// neither terminating nor finished, runs as the ID's ServiceAccount and
	// mounts a volume of the driver.
	CheckPod = "pod"
)

// Policy is what the approver enforces: the settings active at decision
// time, and the modes fixed at startup.
type Policy struct {
	TrustDomain spiffeid.TrustDomain
	// Duration is the enforced spec.duration.
	Duration time.Duration
	Issuer   cmmeta.IssuerReference
	Modes    Modes
	// DriverUsername is the user of the driver's ServiceAccount
	// (system:serviceaccount:<ns>:<name>): its requests are node-bound.
	DriverUsername string
}

// Denial says which check failed and why; nil from Evaluate means approve.
type Denial struct {
	// Check is one of the Check* constants.
	Check string
	// Message names the failed field with what was expected and what came,
	// e.g. `spec.duration: exp="1h0m0s" got="2h0m0s"`.
	Message string
}

// Error is the message.
func (d *Denial) Error() string {
	if d == nil {
		return ""
	}
	return d.Message
}

// Evaluate runs every check in order and returns the first failure, or nil
// when all pass.
func Evaluate(cr *cmapi.CertificateRequest, p Policy) *Denial {
	if cr == nil {
		return deny(CheckCSR, "CertificateRequest", "a request", "nil")
	}
	if _, ok := cr.Annotations[spiffe.IdentityAnnotation]; !ok {
		return deny(CheckAnnotation, annotationField, "a SPIFFE ID", "missing")
	}
	if d := checkIssuer(cr.Spec.IssuerRef, p.Issuer); d != nil {
		return d
	}
	if d := checkSpecUsages(cr.Spec.Usages); d != nil {
		return d
	}
	if d := checkDuration(cr, p.Duration); d != nil {
		return d
	}
	if cr.Spec.IsCA {
		return deny(CheckBasicConstraints, "spec.isCA", "false", "true")
	}
	uri, d := checkCSR(cr.Spec.Request)
	if d != nil {
		return d
	}
	ns, sa, d := checkRequester(cr, p, uri)
	if d != nil {
		return d
	}
	return checkIdentity(cr, p.TrustDomain, ns, sa, uri)
}

var annotationField = fmt.Sprintf("metadata.annotations[%q]", spiffe.IdentityAnnotation)

// maxGot bounds how much of a value the request chose is quoted back.
const maxGot = 256

// deny builds a Denial in cert-manager's evaluator style.
func deny(check, field, exp, got string) *Denial {
	if len(got) > maxGot {
		got = got[:maxGot] + "..."
	}
	return &Denial{Check: check, Message: fmt.Sprintf("%s: exp=%q got=%q", field, exp, got)}
}

// checkIssuer compares the references field by field, with cert-manager's
// defaults filled in: joined into one string, a kind and group split
// elsewhere ("ClusterIssuer.cert-manager" in group "io") would read the same.
func checkIssuer(got, exp cmmeta.IssuerReference) *Denial {
	if got, exp := Defaulted(got), Defaulted(exp); got != exp {
		return deny(CheckIssuer, "spec.issuerRef", issuerString(exp), issuerString(got))
	}
	return nil
}

// SameIssuer reports whether two references name the same issuer once
// cert-manager's defaults are filled in.
func SameIssuer(a, b cmmeta.IssuerReference) bool { return Defaulted(a) == Defaulted(b) }

// Defaulted fills in cert-manager's defaults: kind Issuer, group cert-manager.io.
func Defaulted(r cmmeta.IssuerReference) cmmeta.IssuerReference {
	if r.Kind == "" {
		r.Kind = cmapi.IssuerKind
	}
	if r.Group == "" {
		r.Group = "cert-manager.io"
	}
	return r
}

// issuerString is kind.group/name, for messages only.
func issuerString(r cmmeta.IssuerReference) string {
	return r.Kind + "." + r.Group + "/" + r.Name
}

func checkSpecUsages(got []cmapi.KeyUsage) *Denial {
	ok := len(got) == len(spiffe.Usages)
	for i, u := range got {
		if !slices.Contains(spiffe.Usages, u) || slices.Contains(got[:i], u) {
			ok = false
		}
	}
	if !ok {
		return deny(CheckUsages, "spec.usages", joinUsages(spiffe.Usages), joinUsages(got))
	}
	return nil
}

func joinUsages(us []cmapi.KeyUsage) string {
	s := make([]string, len(us))
	for i, u := range us {
		s[i] = string(u)
	}
	return strings.Join(s, ", ")
}

func checkDuration(cr *cmapi.CertificateRequest, exp time.Duration) *Denial {
	switch {
	case cr.Spec.Duration == nil:
		return deny(CheckDuration, "spec.duration", exp.String(), "unset")
	case cr.Spec.Duration.Duration != exp:
		return deny(CheckDuration, "spec.duration", exp.String(), cr.Spec.Duration.Duration.String())
	}
	return nil
}

// checkIdentity checks the URI SAN against the SPIFFE ID of the
// ServiceAccount ns/sa, then the annotation against it.
func checkIdentity(cr *cmapi.CertificateRequest, td spiffeid.TrustDomain, ns, sa, uri string) *Denial {
	id, err := spiffe.ID(td, ns, sa)
	if err != nil {
		return deny(CheckIdentity, "SPIFFE ID", "spiffe://<trust domain>/ns/<namespace>/sa/<name>", err.Error())
	}
	exp := id.String()
	if uri != exp {
		// Everything right but the authority: report the trust domain.
		if rest, ok := strings.CutPrefix(uri, "spiffe://"); ok {
			if i := strings.IndexByte(rest, '/'); i >= 0 && rest[i:] == id.Path() {
				return deny(CheckTrustDomain, "URI SAN trust domain", td.Name(), rest[:i])
			}
		}
		return deny(CheckIdentity, "URI SAN", exp, uri)
	}
	if got := cr.Annotations[spiffe.IdentityAnnotation]; got != exp {
		return deny(CheckAnnotation, annotationField, exp, got)
	}
	return nil
}
