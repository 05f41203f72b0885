// Package app turns the driver's flags into a running driver: it validates
// the Config, wires the Kubernetes clients, issuance, volume store, CSI server,
// kubelet registration, health and metrics, and runs them until stopped.
package app

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/driver/csi"
	"github.com/svid-csi/svid-csi/internal/issuer"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Config is everything set by flags.
type Config struct {
	DriverName     string
	NodeID         string
	Endpoint       string // unix:///path; empty: <kubelet-root-dir>/plugins/<driver-name>/csi.sock
	DataRoot       string
	KubeletRootDir string
	TrustDomain    string

	CertificateRequestDuration time.Duration
	IssuerName                 string
	IssuerKind                 string
	IssuerGroup                string
	RuntimeIssuanceConfigMap   string
	SourceCABundle             string

	FileNameCertificate string
	FileNameKey         string
	FileNameCA          string

	Kubeconfig   string
	KubeAPIQPS   float64
	KubeAPIBurst int

	MetricsAddress         string
	HealthAddress          string
	MaxConcurrentIssuances int

	Version string
}

// Defaults returns the flags' defaults.
func Defaults() Config {
	return Config{
		DriverName:                 spiffe.DefaultDriverName,
		DataRoot:                   "/run/svid-csi",
		KubeletRootDir:             "/var/lib/kubelet",
		TrustDomain:                "cluster.local",
		CertificateRequestDuration: time.Hour,
		IssuerKind:                 "ClusterIssuer",
		IssuerGroup:                "cert-manager.io",
		FileNameCertificate:        "tls.crt",
		FileNameKey:                "tls.key",
		FileNameCA:                 "ca.crt",
		KubeAPIQPS:                 20,
		KubeAPIBurst:               40,
		MetricsAddress:             ":9402",
		HealthAddress:              ":9809",
		MaxConcurrentIssuances:     10,
	}
}

// SocketPath is the CSI socket's path: from --endpoint, or under the kubelet's
// plugins directory.
func (c *Config) SocketPath() (string, error) {
	if c.Endpoint == "" {
		return filepath.Join(c.KubeletRootDir, "plugins", c.DriverName, "csi.sock"), nil
	}
	return csi.ParseEndpoint(c.Endpoint)
}

// Validate names the first bad setting.
func (c *Config) Validate() error {
	names := map[string]bool{}
	for _, n := range []string{c.FileNameCertificate, c.FileNameKey, c.FileNameCA} {
		names[n] = true
	}
	switch {
	case c.NodeID == "":
		return errors.New("--node-id is required (the node's name, e.g. from spec.nodeName)")
	case len(validation.IsDNS1123Subdomain(c.DriverName)) > 0:
		return fmt.Errorf("--driver-name=%q: %s", c.DriverName, strings.Join(validation.IsDNS1123Subdomain(c.DriverName), "; "))
	case !filepath.IsAbs(c.KubeletRootDir):
		return fmt.Errorf("--kubelet-root-dir=%q: must be an absolute path", c.KubeletRootDir)
	case !filepath.IsAbs(c.DataRoot):
		return fmt.Errorf("--data-root=%q: must be an absolute path (on a host tmpfs, not /tmp)", c.DataRoot)
	case c.CertificateRequestDuration <= 0:
		return fmt.Errorf("--certificate-request-duration=%s: must be positive", c.CertificateRequestDuration)
	case c.IssuerName != "" && (c.IssuerKind == "" || c.IssuerGroup == ""):
		return errors.New("--issuer-name needs a non-empty --issuer-kind and --issuer-group")
	case badFileName(c.FileNameCertificate):
		return fmt.Errorf("--file-name-certificate=%q: want a plain file name", c.FileNameCertificate)
	case badFileName(c.FileNameKey):
		return fmt.Errorf("--file-name-key=%q: want a plain file name", c.FileNameKey)
	case badFileName(c.FileNameCA):
		return fmt.Errorf("--file-name-ca=%q: want a plain file name", c.FileNameCA)
	case len(names) != 3:
		return errors.New("--file-name-certificate, --file-name-key and --file-name-ca must differ")
	case c.KubeAPIQPS <= 0:
		return fmt.Errorf("--kube-api-qps=%v: must be positive", c.KubeAPIQPS)
	case c.KubeAPIBurst <= 0:
		return fmt.Errorf("--kube-api-burst=%d: must be positive", c.KubeAPIBurst)
	case c.MaxConcurrentIssuances <= 0:
		return fmt.Errorf("--max-concurrent-issuances=%d: must be positive", c.MaxConcurrentIssuances)
	case c.SourceCABundle != "" && !filepath.IsAbs(c.SourceCABundle):
		return fmt.Errorf("--source-ca-bundle=%q: must be an absolute path", c.SourceCABundle)
	}
	if _, err := spiffe.ParseTrustDomain(c.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if _, err := c.SocketPath(); err != nil {
		return fmt.Errorf("--endpoint: %w", err)
	}
	if c.RuntimeIssuanceConfigMap != "" {
		if _, err := issuer.ParseConfigMap(c.RuntimeIssuanceConfigMap); err != nil {
			return fmt.Errorf("--runtime-issuance-configmap: %w", err)
		}
	}
	return nil
}

func badFileName(n string) bool {
	return n == "" || strings.ContainsRune(n, '/') || strings.HasPrefix(n, "..")
}
