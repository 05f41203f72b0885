package checks

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
)

const (
	// MaxRequestBytes bounds spec.request: a PEM CSR for the largest key the
	// checks accept (RSA 8192) with one URI SAN of the longest SPIFFE ID is
	// under 8 KiB.
	MaxRequestBytes = 16 << 10
	pemType         = "CERTIFICATE REQUEST"
)

// emptySubject is the DER of an empty SEQUENCE: a Name with no RDN at all.
var emptySubject = []byte{tagSequence, 0x00}

// checkCSR runs the checks on spec.request in order and returns the bytes of
// its one URI SAN.
func checkCSR(request []byte) (string, *Denial) {
	raw, d := decodePEM(request)
	if d != nil {
		return "", d
	}
	csr, err := x509.ParseCertificateRequest(raw)
	if err != nil {
		return "", deny(CheckCSR, "CSR", "a PKCS#10 certificate request", err.Error())
	}
	if d := checkKey(csr); d != nil {
		return "", d
	}
	if d := checkSignature(csr); d != nil {
		return "", d
	}
	if !bytes.Equal(csr.RawSubject, emptySubject) {
		got := csr.Subject.String()
		if got == "" {
			got = "DER " + hex.EncodeToString(csr.RawSubject)
		}
		return "", deny(CheckSubject, "subject", "", got)
	}
	exts, d := parseExtensions(csr.RawTBSCertificateRequest)
	if d != nil {
		return "", d
	}
	if d := checkKeyUsage(exts); d != nil {
		return "", d
	}
	if d := checkExtKeyUsage(exts); d != nil {
		return "", d
	}
	return checkSANs(exts)
}

// decodePEM returns the DER of the one canonical CERTIFICATE REQUEST block
// that must make up the whole of data, surrounding whitespace aside.
func decodePEM(data []byte) ([]byte, *Denial) {
	const field, exp = "spec.request", "one PEM block of type " + pemType
	if len(data) > MaxRequestBytes {
		return nil, deny(CheckCSR, field, fmt.Sprintf("at most %d bytes", MaxRequestBytes), "more") // the cache keeps no more than one byte over
	}
	block, rest := pem.Decode(data)
	switch {
	case block == nil:
		return nil, deny(CheckCSR, field, exp, "no PEM block")
	case block.Type != pemType:
		return nil, deny(CheckCSR, field, exp, "PEM block of type "+block.Type)
	case len(block.Headers) != 0:
		return nil, deny(CheckCSR, field, exp, "PEM block with headers")
	case len(bytes.TrimSpace(rest)) != 0:
		if next, _ := pem.Decode(rest); next != nil {
			return nil, deny(CheckCSR, field, exp, "more than one PEM block")
		}
		return nil, deny(CheckCSR, field, exp, "data after the PEM block")
	}
	consumed := bytes.TrimSpace(data[:len(data)-len(rest)])
	if !bytes.HasPrefix(consumed, []byte("-----BEGIN ")) {
		return nil, deny(CheckCSR, field, exp, "data before the PEM block")
	}
	if !bytes.Equal(consumed, bytes.TrimSpace(pem.EncodeToMemory(block))) {
		return nil, deny(CheckCSR, field, exp, "non-canonical PEM encoding")
	}
	return block.Bytes, nil
}

func checkKey(csr *x509.CertificateRequest) *Denial {
	var got string
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() || k.Curve == elliptic.P521() {
			return nil
		}
		got = "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits >= 2048 && bits <= 8192 {
			return nil
		}
		got = fmt.Sprintf("RSA %d bits", k.N.BitLen())
	default:
		got = fmt.Sprintf("algorithm %s", csr.PublicKeyAlgorithm)
	}
	return deny(CheckKey, "public key", "ECDSA P-256/P-384/P-521, Ed25519 or RSA 2048..8192 bits", got)
}

// checkSignature verifies the CSR's signature, made with SHA-256 or stronger
// (x509 still accepts SHA-1 on certificate requests).
func checkSignature(csr *x509.CertificateRequest) *Denial {
	switch csr.SignatureAlgorithm {
	case x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
		x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS,
		x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512,
		x509.PureEd25519:
	default:
		return deny(CheckCSR, "CSR signature algorithm", "SHA-256 or stronger", csr.SignatureAlgorithm.String())
	}
	if err := csr.CheckSignature(); err != nil {
		return deny(CheckCSR, "CSR signature", "valid", err.Error())
	}
	return nil
}

func malformedAttributes() *Denial {
	return deny(CheckCSR, "CSR attributes", "well-formed DER", "malformed")
}

// parseExtensions reads the attributes of the raw CertificationRequestInfo:
// none but one extensionRequest with one value, whose extensions are all
// known and each present at most once. It maps OID contents to extnValue.
func parseExtensions(tbs []byte) (map[string][]byte, *Denial) {
	in := der(tbs)
	info, ok := in.read(tagSequence)
	if !ok || len(in) != 0 {
		return nil, malformedAttributes()
	}
	version, ok := info.read(tagInteger)
	if !ok {
		return nil, malformedAttributes()
	}
	if !bytes.Equal(version, []byte{0}) {
		return nil, deny(CheckCSR, "CSR version", "0", hex.EncodeToString(version))
	}
	if _, ok := info.read(tagSequence); !ok { // subject, checked raw by the caller
		return nil, malformedAttributes()
	}
	if _, ok := info.read(tagSequence); !ok { // subjectPKInfo, parsed by x509
		return nil, malformedAttributes()
	}
	attrs := der(nil)
	if len(info) != 0 {
		if attrs, ok = info.read(tagAttributes); !ok || len(info) != 0 {
			return nil, malformedAttributes()
		}
	}
	exts := map[string][]byte{}
	for seen := 0; len(attrs) != 0; seen++ {
		attr, ok := attrs.read(tagSequence)
		if !ok {
			return nil, malformedAttributes()
		}
		oid, ok1 := attr.read(tagOID)
		values, ok2 := attr.read(tagSet)
		if !ok1 || !ok2 || len(attr) != 0 {
			return nil, malformedAttributes()
		}
		if string(oid) != oidExtensionRequest {
			return nil, deny(CheckExtensions, "CSR attribute", "extensionRequest", oidString(oid))
		}
		if seen > 0 {
			return nil, deny(CheckExtensions, "CSR attributes", "one extensionRequest", fmt.Sprintf("%d extensionRequest", seen+1))
		}
		list, ok := values.read(tagSequence)
		if !ok {
			return nil, malformedAttributes()
		}
		if len(values) != 0 {
			return nil, deny(CheckExtensions, "CSR extensionRequest", "one value", "more than one value")
		}
		for len(list) != 0 {
			ext, ok := list.read(tagSequence)
			if !ok {
				return nil, malformedAttributes()
			}
			id, ok := ext.read(tagOID)
			if ok && ext.peek() == tagBoolean {
				_, ok = ext.readBool() // critical: either way is fine
			}
			value, ok2 := ext.read(tagOctetString)
			if !ok || !ok2 || len(ext) != 0 {
				return nil, malformedAttributes()
			}
			switch string(id) {
			case oidSubjectAltName, oidKeyUsage, oidExtKeyUsage:
			default:
				// No other extension, however harmless (an empty
				// basicConstraints among them): what the issuer would
				// make of it is not this approver's to guess.
				return nil, deny(CheckExtensions, "CSR extension", "subjectAltName, keyUsage or extKeyUsage", oidString(id))
			}
			if _, dup := exts[string(id)]; dup {
				return nil, deny(CheckExtensions, "CSR extension "+oidString(id), "once", "more than once")
			}
			exts[string(id)] = value
		}
	}
	return exts, nil
}

// keyUsageBits names the bits of the keyUsage BIT STRING (RFC 5280 4.2.1.3)
// as cert-manager does.
var keyUsageBits = []string{
	"digital signature", "content commitment", "key encipherment", "data encipherment",
	"key agreement", "cert sign", "crl sign", "encipher only", "decipher only",
}

// checkKeyUsage allows a keyUsage extension with no bit but digital
// signature and key encipherment. Every set bit counts, padding included.
func checkKeyUsage(exts map[string][]byte) *Denial {
	value, present := exts[oidKeyUsage]
	if !present {
		return nil
	}
	const field, exp = "CSR keyUsage", "digital signature, key encipherment"
	in := der(value)
	bits, ok := in.read(tagBitString)
	if !ok || len(in) != 0 || len(bits) == 0 || bits[0] > 7 || (len(bits) == 1 && bits[0] != 0) {
		return deny(CheckUsages, field, exp, "malformed")
	}
	var got []string
	allowed := true
	for i := range (len(bits) - 1) * 8 {
		if bits[1+i/8]&(0x80>>(i%8)) == 0 {
			continue
		}
		if i != 0 && i != 2 {
			allowed = false
		}
		if i < len(keyUsageBits) {
			got = append(got, keyUsageBits[i])
		} else {
			got = append(got, fmt.Sprintf("bit %d", i))
		}
	}
	if !allowed {
		return deny(CheckUsages, field, exp, strings.Join(got, ", "))
	}
	return nil
}

// checkExtKeyUsage allows an extKeyUsage extension with no purpose but
// client auth and server auth.
func checkExtKeyUsage(exts map[string][]byte) *Denial {
	value, present := exts[oidExtKeyUsage]
	if !present {
		return nil
	}
	const field, exp = "CSR extKeyUsage", "client auth, server auth"
	in := der(value)
	list, ok := in.read(tagSequence)
	if !ok || len(in) != 0 || len(list) == 0 {
		return deny(CheckUsages, field, exp, "malformed")
	}
	var got []string
	allowed := true
	for len(list) != 0 {
		oid, ok := list.read(tagOID)
		if !ok {
			return deny(CheckUsages, field, exp, "malformed")
		}
		if s := string(oid); s != oidClientAuth && s != oidServerAuth {
			allowed = false
		}
		got = append(got, oidString(oid))
	}
	if !allowed {
		return deny(CheckUsages, field, exp, strings.Join(got, ", "))
	}
	return nil
}

// generalNames names the GeneralName choices (RFC 5280 4.2.1.6) by DER tag.
var generalNames = map[byte]string{
	0xa0: "otherName", 0x81: "email", 0x82: "DNS", 0xa3: "x400Address", 0xa4: "directoryName",
	0xa5: "ediPartyName", 0x86: "URI", 0x87: "IP", 0x88: "registeredID",
}

// checkSANs requires a subjectAltName extension with exactly one name, a URI,
// and returns that URI's bytes as they are.
func checkSANs(exts map[string][]byte) (string, *Denial) {
	const field, exp = "CSR subjectAltName", "one URI"
	value, present := exts[oidSubjectAltName]
	if !present {
		return "", deny(CheckSANs, field, exp, "none")
	}
	in := der(value)
	names, ok := in.read(tagSequence)
	if !ok || len(in) != 0 {
		return "", deny(CheckSANs, field, exp, "malformed")
	}
	var kinds []string
	var uri []byte
	for len(names) != 0 {
		tag, content, ok := names.next()
		if !ok {
			return "", deny(CheckSANs, field, exp, "malformed")
		}
		kind, known := generalNames[tag]
		if !known {
			kind = fmt.Sprintf("tag 0x%02x", tag)
		}
		kinds = append(kinds, kind)
		uri = content
	}
	if len(kinds) != 1 || kinds[0] != "URI" {
		got := strings.Join(kinds, ", ")
		if got == "" {
			got = "none"
		}
		return "", deny(CheckSANs, field, exp, got)
	}
	return string(uri), nil
}
