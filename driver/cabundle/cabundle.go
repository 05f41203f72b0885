// Package cabundle holds the CA bundle the driver writes into every volume,
// read from --source-ca-bundle: one or more PEM CERTIFICATE blocks.
package cabundle

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Bundle is the CA bundle. A nil *Bundle holds none.
type Bundle struct {
	pem []byte
}

// Load reads and validates the bundle at path; an empty path means none (a
// nil Bundle).
func Load(path string) (*Bundle, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	if err := validate(data); err != nil {
		return nil, fmt.Errorf("CA bundle %s: %w", path, err)
	}
	return &Bundle{pem: data}, nil
}

// PEM is the bundle to write; nil when there is none.
func (b *Bundle) PEM() []byte {
	if b == nil {
		return nil
	}
	return b.pem
}

// validate accepts one or more PEM CERTIFICATE blocks, each a parsable
// certificate. Like every PEM reader, it skips text around the blocks.
func validate(data []byte) error {
	n := 0
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		n++
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("block %d: unexpected PEM block %q", n, block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("block %d: %w", n, err)
		}
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}
