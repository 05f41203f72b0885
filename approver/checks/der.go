package checks

import (
	"encoding/asn1"
	"encoding/hex"
)

// DER tags read by this package.
const (
	tagBoolean     = 0x01
	tagInteger     = 0x02
	tagBitString   = 0x03
	tagOctetString = 0x04
	tagOID         = 0x06
	tagSequence    = 0x30
	tagSet         = 0x31
	tagAttributes  = 0xa0 // [0] IMPLICIT SET OF Attribute in CertificationRequestInfo
)

// der is a strict DER reader: single-byte tags, definite and minimal lengths.
// Anything else fails, so what is checked is exactly what is encoded.
type der []byte

// next reads one element and returns its tag and contents.
func (d *der) next() (tag byte, content der, ok bool) {
	b := *d
	if len(b) < 2 || b[0]&0x1f == 0x1f {
		return 0, nil, false
	}
	n, off := int(b[1]), 2
	if n&0x80 != 0 {
		size := n & 0x7f
		if size == 0 || size > 3 || len(b) < 2+size || b[2] == 0 {
			return 0, nil, false
		}
		n = 0
		for _, c := range b[2 : 2+size] {
			n = n<<8 | int(c)
		}
		if n < 0x80 {
			return 0, nil, false
		}
		off += size
	}
	if len(b)-off < n {
		return 0, nil, false
	}
	*d = b[off+n:]
	return b[0], b[off : off+n], true
}

// read reads one element that must carry tag.
func (d *der) read(tag byte) (der, bool) {
	t, c, ok := d.next()
	return c, ok && t == tag
}

// readBool reads a DER BOOLEAN (0x00 or 0xff).
func (d *der) readBool() (value, ok bool) {
	c, ok := d.read(tagBoolean)
	if !ok || len(c) != 1 || (c[0] != 0x00 && c[0] != 0xff) {
		return false, false
	}
	return c[0] == 0xff, true
}

// peek is the tag of the next element, or 0 at the end.
func (d der) peek() byte {
	if len(d) == 0 {
		return 0
	}
	return d[0]
}

// Encoded OBJECT IDENTIFIER contents, compared byte for byte.
var (
	oidExtensionRequest = string([]byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e}) // 1.2.840.113549.1.9.14
	oidSubjectAltName   = string([]byte{0x55, 0x1d, 0x11})                                     // 2.5.29.17
	oidKeyUsage         = string([]byte{0x55, 0x1d, 0x0f})                                     // 2.5.29.15
	oidExtKeyUsage      = string([]byte{0x55, 0x1d, 0x25})                                     // 2.5.29.37
	oidBasicConstraints = string([]byte{0x55, 0x1d, 0x13})                                     // 2.5.29.19
	oidServerAuth       = string([]byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01})       // 1.3.6.1.5.5.7.3.1
	oidClientAuth       = string([]byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02})       // 1.3.6.1.5.5.7.3.2
)

// oidNames names the OIDs that appear in messages.
var oidNames = map[string]string{
	oidExtensionRequest: "extensionRequest",
	oidSubjectAltName:   "subjectAltName",
	oidKeyUsage:         "keyUsage",
	oidExtKeyUsage:      "extKeyUsage",
	oidBasicConstraints: "basicConstraints",
	oidServerAuth:       "server auth",
	oidClientAuth:       "client auth",
	string([]byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03}): "code signing",
	string([]byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04}): "email protection",
	string([]byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08}): "timestamping",
	string([]byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09}): "ocsp signing",
	string([]byte{0x55, 0x1d, 0x25, 0x00}):                         "any",
}

// oidString names an OID for a message: a known name, else dotted decimal,
// else hex when the contents are not a valid OID.
func oidString(content []byte) string {
	if name, ok := oidNames[string(content)]; ok {
		return name
	}
	full, err := asn1.Marshal(asn1.RawValue{Tag: asn1.TagOID, Bytes: content})
	if err == nil {
		var oid asn1.ObjectIdentifier
		if rest, err := asn1.Unmarshal(full, &oid); err == nil && len(rest) == 0 {
			return oid.String()
		}
	}
	return "OID " + hex.EncodeToString(content)
}
