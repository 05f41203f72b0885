package cabundle

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newCertPEM returns a self-signed CA certificate, PEM encoded.
func newCertPEM(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// newKeyPEM returns a PKCS#8 private key, PEM encoded.
func newKeyPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadEmptyPath(t *testing.T) {
	b, err := Load("")
	if err != nil || b != nil {
		t.Fatalf(`Load("") = %v, %v; want nil, nil`, b, err)
	}
	if got := b.PEM(); got != nil {
		t.Errorf("nil Bundle PEM() = %q, want nil", got)
	}
	if got := (&Bundle{}).PEM(); got != nil {
		t.Errorf("zero Bundle PEM() = %q, want nil", got)
	}
}

func TestLoadValid(t *testing.T) {
	one := newCertPEM(t, "root one")
	two := newCertPEM(t, "root two")

	tests := []struct {
		name string
		data []byte
	}{
		{"one certificate", one},
		{"two certificates", concat(one, two)},
		{"two certificates with blank lines", concat(one, []byte("\n\n"), two, []byte("\n"))},
		{"no trailing newline", bytes.TrimSuffix(one, []byte("\n"))},
		{"CRLF line endings", bytes.ReplaceAll(one, []byte("\n"), []byte("\r\n"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.data)
			b, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if b == nil {
				t.Fatal("Load returned a nil Bundle")
			}
			if got := b.PEM(); !bytes.Equal(got, tt.data) {
				t.Errorf("PEM() differs from the file's bytes: %d bytes, want %d\ngot:  %q\nwant: %q",
					len(got), len(tt.data), tail(got), tail(tt.data))
			}
			if err := validate(tt.data); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestLoadInvalid(t *testing.T) {
	cert := newCertPEM(t, "root")
	key := newKeyPEM(t)
	garbage := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not a certificate")})

	tests := []struct {
		name string
		data []byte // nil: no file at all
		// wantLoad are parts of Load's error besides the path; wantValidate
		// those of Validate's (none for a missing file).
		wantLoad     []string
		wantValidate []string
	}{
		{
			name:     "missing file",
			wantLoad: []string{"read CA bundle", "no such file"},
		},
		{
			name:         "empty file",
			data:         []byte{},
			wantLoad:     []string{"no PEM certificate"},
			wantValidate: []string{"no PEM certificate"},
		},
		{
			name:         "whitespace only",
			data:         []byte(" \n\t\n"),
			wantLoad:     []string{"no PEM certificate"},
			wantValidate: []string{"no PEM certificate"},
		},
		{
			name:         "text only",
			data:         []byte("this is not a CA bundle\n"),
			wantLoad:     []string{"text outside a PEM block at byte 0"},
			wantValidate: []string{"text outside a PEM block at byte 0"},
		},
		{
			name:         "text before a certificate",
			data:         concat([]byte("# Issuer: root\n"), cert),
			wantValidate: []string{"text outside a PEM block at byte 0"},
		},
		{
			name:         "text between certificates",
			data:         concat(cert, []byte("junk\n"), cert),
			wantValidate: []string{fmt.Sprintf("text outside a PEM block at byte %d", len(cert))},
		},
		{
			name:         "text after the last certificate",
			data:         concat(cert, []byte("trailing")),
			wantValidate: []string{"text outside a PEM block"},
		},
		{
			name:         "a truncated second certificate",
			data:         concat(cert, cert[:len(cert)/2]),
			wantValidate: []string{"block 2: not a complete PEM block"},
		},
		{
			name:         "a certificate without its END line, then a good one",
			data:         concat(cert[:bytes.Index(cert, []byte("-----END"))], cert),
			wantValidate: []string{"block 1: not a complete PEM block"},
		},
		{
			name:         "a mismatched END line, then a good one",
			data:         concat(bytes.Replace(cert, []byte("-----END CERTIFICATE-----"), []byte("-----END FOO-----"), 1), cert),
			wantValidate: []string{"block 1: not a complete PEM block"},
		},
		{
			name:         "a broken BEGIN line, then a good one",
			data:         concat([]byte("-----BEGIN garbage\n"), cert),
			wantValidate: []string{"block 1: not a complete PEM block"},
		},
		{
			name:         "PEM headers",
			data:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: mustBlock(t, cert).Bytes}),
			wantValidate: []string{"block 1: PEM headers are not allowed"},
		},
		{
			name:         "private key only",
			data:         key,
			wantLoad:     []string{"block 1", `unexpected PEM block "PRIVATE KEY"`},
			wantValidate: []string{"block 1", `unexpected PEM block "PRIVATE KEY"`},
		},
		{
			name:         "certificate block with garbage bytes",
			data:         garbage,
			wantLoad:     []string{"block 1", "x509"},
			wantValidate: []string{"block 1", "x509"},
		},
		{
			name:         "certificate then private key",
			data:         concat(cert, key),
			wantLoad:     []string{"block 2", `unexpected PEM block "PRIVATE KEY"`},
			wantValidate: []string{"block 2", `unexpected PEM block "PRIVATE KEY"`},
		},
		{
			name:         "certificate then garbage certificate",
			data:         concat(cert, garbage),
			wantLoad:     []string{"block 2", "x509"},
			wantValidate: []string{"block 2", "x509"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ca.crt")
			if tt.data != nil {
				if err := os.WriteFile(path, tt.data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b, err := Load(path)
			if err == nil {
				t.Fatalf("Load = %v, nil; want an error", b)
			}
			if b != nil {
				t.Errorf("Load returned a Bundle with its error: %v", b)
			}
			msg := err.Error()
			for _, want := range append([]string{path}, tt.wantLoad...) {
				if !strings.Contains(msg, want) {
					t.Errorf("Load error %q does not contain %q", msg, want)
				}
			}

			if tt.data == nil {
				return
			}
			err = validate(tt.data)
			if err == nil {
				t.Fatal("Validate = nil, want an error")
			}
			for _, want := range tt.wantValidate {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func mustBlock(t *testing.T, data []byte) *pem.Block {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("no PEM block")
	}
	return b
}

// tail is the end of a PEM bundle, where PEM() mismatches show.
func tail(b []byte) []byte { return b[max(0, len(b)-40):] }
