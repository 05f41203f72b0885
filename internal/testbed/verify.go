package testbed

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// VerifySVID parses a PEM certificate chain and checks that its leaf chains to
// the bed's CA ClusterIssuer and names exactly one identity, the URI wantID,
// and nothing else.
func (b *Bed) VerifySVID(chainPEM []byte, wantID string) (*x509.Certificate, error) {
	return VerifySVIDTo(b.IssuerCAPEM, chainPEM, wantID)
}

// VerifySVIDTo is VerifySVID against the given root CAs: the leaf (with the
// chain's other certificates as intermediates) chains to them and names only
// the URI wantID.
func VerifySVIDTo(rootsPEM, chainPEM []byte, wantID string) (*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a %q PEM block in a certificate chain", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("not a PEM certificate: %q", chainPEM)
	}
	cert := certs[0]
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		return nil, fmt.Errorf("no root CA certificate to verify against")
	}
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("does not chain to the CA: %w", err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != wantID ||
		len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		return nil, fmt.Errorf("names URIs %v DNS %v IP %v email %v, want only %s",
			cert.URIs, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, wantID)
	}
	return cert, nil
}

// Usage is a process's resident memory and CPU time so far, from /proc.
type Usage struct {
	RSSKiB int
	// CPUTicks is user plus system time in USER_HZ (100 a second on Linux).
	CPUTicks int
}

// Usage reads the running process's memory and CPU time.
func (p *Process) Usage() (Usage, error) {
	pid := p.PID()
	var u Usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("%s: %w", p.Name, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if u.RSSKiB, err = strconv.Atoi(strings.Fields(rest)[0]); err != nil {
				return u, fmt.Errorf("%s: VmRSS: %w", p.Name, err)
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("%s: %w", p.Name, err)
	}
	// Fields after the command name (which may hold spaces) start at the state.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, err1 := strconv.Atoi(f[11])
	stime, err2 := strconv.Atoi(f[12])
	if err1 != nil || err2 != nil {
		return u, fmt.Errorf("%s: parse /proc stat", p.Name)
	}
	u.CPUTicks = utime + stime
	return u, nil
}
