package app

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
}

func TestValidateNamesTheBadField(t *testing.T) {
	for _, tc := range []struct {
		flag   string
		mutate func(*Config)
	}{
		{"--trust-domain", func(c *Config) { c.TrustDomain = "bad domain" }},
		{"--trust-domain", func(c *Config) { c.TrustDomain = "spiffe://cluster.local" }},
		{"--trust-domain", func(c *Config) { c.TrustDomain = "" }},
		{"--runtime-issuance-configmap", func(c *Config) { c.RuntimeIssuanceConfigMap = "no-namespace" }},
		{"--runtime-issuance-configmap", func(c *Config) { c.RuntimeIssuanceConfigMap = "ns/Bad_Name" }},
		{"--certificate-request-duration", func(c *Config) { c.CertificateRequestDuration = 0 }},
		{"--issuer-kind", func(c *Config) { c.IssuerName = "ca"; c.IssuerKind = "" }},
		{"--issuer-group", func(c *Config) { c.IssuerName = "ca"; c.IssuerGroup = "" }},
		{"--driver-name", func(c *Config) { c.DriverName = "" }},
		{"--driver-name", func(c *Config) { c.DriverName = "not a label value" }},
		{"--leader-election-namespace", func(c *Config) { c.LeaderElectionNamespace = "" }},
		{"--leader-election-id", func(c *Config) { c.LeaderElectionID = "Bad ID" }},
		{"--leader-election-retry-period", func(c *Config) { c.LeaderElectionRetryPeriod = 0 }},
		{"--leader-election-renew-deadline", func(c *Config) { c.LeaderElectionRenewDeadline = 2 * time.Second }},
		{"--leader-election-lease-duration", func(c *Config) { c.LeaderElectionLeaseDuration = 10 * time.Second }},
		{"--workers", func(c *Config) { c.Workers = 0 }},
		{"--health-address", func(c *Config) { c.HealthAddress = "" }},
		{"--health-address", func(c *Config) { c.HealthAddress = "9403" }},
		{"--metrics-address", func(c *Config) { c.MetricsAddress = "localhost" }},
		{"--metrics-address", func(c *Config) { c.MetricsAddress = c.HealthAddress }},
		{"--kube-api-qps", func(c *Config) { c.KubeAPIQPS = 0 }},
		{"--kube-api-burst", func(c *Config) { c.KubeAPIBurst = 0 }},
	} {
		cfg := DefaultConfig()
		tc.mutate(&cfg)
		err := cfg.Validate()
		if err == nil {
			t.Errorf("%s: Validate accepted %+v", tc.flag, cfg)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.flag+":") {
			t.Errorf("%s: Validate = %q, want it to start with %q", tc.flag, err, tc.flag+":")
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Validate = %q, want one line", tc.flag, err)
		}
	}
}

func TestValidateAcceptsOptionalSettings(t *testing.T) {
	cfg := DefaultConfig()
	cfg.IssuerName = "spiffe-ca"
	cfg.RuntimeIssuanceConfigMap = "cert-manager/svid-csi-issuer"
	cfg.MetricsAddress = ""
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate = %v", err)
	}
	cfg = DefaultConfig()
	cfg.LeaderElection = false
	cfg.LeaderElectionNamespace = "" // unused without leader election
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate without leader election = %v", err)
	}
}
