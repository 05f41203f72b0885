// Package app wires the approver: clients, the active issuer, the
// controller, leader election, and the health and metrics servers.
package app

import (
	"fmt"
	"net"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/internal/issuer"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Config holds the approver's settings, from flags.
type Config struct {
	TrustDomain                string
	CertificateRequestDuration time.Duration

	IssuerName               string
	IssuerKind               string
	IssuerGroup              string
	RuntimeIssuanceConfigMap string // <namespace>/<name>, optional
	DriverName               string

	LeaderElection              bool
	LeaderElectionNamespace     string
	LeaderElectionID            string
	LeaderElectionLeaseDuration time.Duration
	LeaderElectionRenewDeadline time.Duration
	LeaderElectionRetryPeriod   time.Duration

	Workers        int
	MetricsAddress string // empty disables
	HealthAddress  string

	Kubeconfig   string // in-cluster when empty
	KubeAPIQPS   float64
	KubeAPIBurst int
}

// DefaultConfig is the Config of a flag-less start.
func DefaultConfig() Config {
	return Config{
		TrustDomain:                 "cluster.local",
		CertificateRequestDuration:  time.Hour,
		IssuerKind:                  "ClusterIssuer",
		IssuerGroup:                 "cert-manager.io",
		DriverName:                  spiffe.DefaultDriverName,
		LeaderElection:              true,
		LeaderElectionNamespace:     "cert-manager",
		LeaderElectionID:            "svid-csi-approver",
		LeaderElectionLeaseDuration: 15 * time.Second,
		LeaderElectionRenewDeadline: 10 * time.Second,
		LeaderElectionRetryPeriod:   2 * time.Second,
		Workers:                     16,
		MetricsAddress:              ":9402",
		HealthAddress:               ":9403",
		KubeAPIQPS:                  100,
		KubeAPIBurst:                200,
	}
}

// Validate names the first bad field, as its flag.
func (c *Config) Validate() error {
	if _, err := spiffe.ParseTrustDomain(c.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if c.RuntimeIssuanceConfigMap != "" {
		if _, err := issuer.ParseConfigMap(c.RuntimeIssuanceConfigMap); err != nil {
			return fmt.Errorf("--runtime-issuance-configmap: %w", err)
		}
	}
	lec := c.LeaderElection
	switch {
	case c.CertificateRequestDuration <= 0:
		return fmt.Errorf("--certificate-request-duration: must be positive, got %s", c.CertificateRequestDuration)
	case c.IssuerName != "" && c.IssuerKind == "":
		return fmt.Errorf("--issuer-kind: required with --issuer-name")
	case c.IssuerName != "" && c.IssuerGroup == "":
		return fmt.Errorf("--issuer-group: required with --issuer-name")
	case c.DriverName == "":
		return fmt.Errorf("--driver-name: required")
	case len(validation.IsValidLabelValue(c.DriverName)) > 0:
		return fmt.Errorf("--driver-name: %q is not a valid label value: %s",
			c.DriverName, strings.Join(validation.IsValidLabelValue(c.DriverName), "; "))
	case lec && len(validation.IsDNS1123Label(c.LeaderElectionNamespace)) > 0:
		return fmt.Errorf("--leader-election-namespace: %q is not a namespace name", c.LeaderElectionNamespace)
	case lec && len(validation.IsDNS1123Subdomain(c.LeaderElectionID)) > 0:
		return fmt.Errorf("--leader-election-id: %q is not a valid Lease name", c.LeaderElectionID)
	case lec && c.LeaderElectionRetryPeriod <= 0:
		return fmt.Errorf("--leader-election-retry-period: must be positive, got %s", c.LeaderElectionRetryPeriod)
	case lec && float64(c.LeaderElectionRenewDeadline) <= 1.2*float64(c.LeaderElectionRetryPeriod):
		return fmt.Errorf("--leader-election-renew-deadline: must be more than 1.2 x --leader-election-retry-period, got %s", c.LeaderElectionRenewDeadline)
	case lec && c.LeaderElectionLeaseDuration <= c.LeaderElectionRenewDeadline:
		return fmt.Errorf("--leader-election-lease-duration: must be more than --leader-election-renew-deadline, got %s", c.LeaderElectionLeaseDuration)
	case c.Workers < 1:
		return fmt.Errorf("--workers: must be at least 1, got %d", c.Workers)
	case c.HealthAddress == "":
		return fmt.Errorf("--health-address: required")
	case !validAddress(c.HealthAddress):
		return fmt.Errorf("--health-address: %q is not host:port", c.HealthAddress)
	case c.MetricsAddress != "" && !validAddress(c.MetricsAddress):
		return fmt.Errorf("--metrics-address: %q is not host:port", c.MetricsAddress)
	case c.MetricsAddress != "" && c.MetricsAddress == c.HealthAddress && !strings.HasSuffix(c.MetricsAddress, ":0"):
		return fmt.Errorf("--metrics-address: must differ from --health-address")
	case c.KubeAPIQPS <= 0:
		return fmt.Errorf("--kube-api-qps: must be positive, got %g", c.KubeAPIQPS)
	case c.KubeAPIBurst < 1:
		return fmt.Errorf("--kube-api-burst: must be at least 1, got %d", c.KubeAPIBurst)
	}
	return nil
}

func validAddress(addr string) bool {
	_, _, err := net.SplitHostPort(addr)
	return err == nil
}
