package app

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/internal/config"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := DefaultConfig()
	if _, err := cfg.Complete(); err != nil {
		t.Fatalf("DefaultConfig().Complete() = %v", err)
	}
}

func TestDefaultConfigKeepsTheFlagDefaults(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.TrustDomain != "cluster.local" || cfg.CertificateRequestDuration != time.Hour ||
		cfg.IssuerName != "" || cfg.IssuerKind != "ClusterIssuer" || cfg.IssuerGroup != "cert-manager.io" ||
		cfg.DriverName != spiffe.DefaultDriverName || cfg.RuntimeIssuanceConfigMap != "" ||
		cfg.Kubeconfig != "" || cfg.KubeAPIQPS != 100 || cfg.KubeAPIBurst != 200 {
		t.Errorf("shared defaults = %+v", cfg.Shared)
	}
}

func TestCompleteNamesTheBadField(t *testing.T) {
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
		// A valid label value, but not a CSIDriver (DNS-1123 subdomain) name.
		{"--driver-name", func(c *Config) { c.DriverName = "Svid.CSI.example.com" }},
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
		{"--request-modes", func(c *Config) { c.RequestModes = "" }},
		{"--request-modes", func(c *Config) { c.RequestModes = "node-bound,kubelet" }},
		{"--driver-service-account", func(c *Config) { c.RequestModes = "node-bound" }},
		{"--driver-service-account", func(c *Config) { c.RequestModes = "node-bound"; c.DriverServiceAccount = "svid-csi-driver" }},
		{"--driver-service-account", func(c *Config) { c.DriverServiceAccount = "cert-manager/Bad_SA" }},
	} {
		cfg := DefaultConfig()
		tc.mutate(&cfg)
		_, err := cfg.Complete()
		if err == nil {
			t.Errorf("%s: Complete accepted %+v", tc.flag, cfg)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.flag+":") {
			t.Errorf("%s: Complete = %q, want it to start with %q", tc.flag, err, tc.flag+":")
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Complete = %q, want one line", tc.flag, err)
		}
		if fe := (*config.FlagError)(nil); !errors.As(err, &fe) || "--"+fe.Flag != tc.flag {
			t.Errorf("%s: Complete = %#v, want a *config.FlagError for it", tc.flag, err)
		}
	}
}

func TestCompleteAcceptsOptionalSettings(t *testing.T) {
	cfg := DefaultConfig()
	cfg.IssuerName = "spiffe-ca"
	cfg.RuntimeIssuanceConfigMap = "cert-manager/svid-csi-issuer"
	cfg.MetricsAddress = ""
	c, err := cfg.Complete()
	if err != nil {
		t.Fatalf("Complete = %v", err)
	}
	// Run takes these parsed; it parses nothing again.
	if got := c.Parsed.Settings.TrustDomain.Name(); got != "cluster.local" {
		t.Errorf("parsed trust domain = %q", got)
	}
	if got := c.Parsed.IssuerConfigMap.String(); got != "cert-manager/svid-csi-issuer" {
		t.Errorf("parsed ConfigMap = %q", got)
	}
	if got := c.Parsed.Settings.Issuer; got.Name != "spiffe-ca" || got.Kind != "ClusterIssuer" || got.Group != "cert-manager.io" {
		t.Errorf("parsed issuer = %+v", got)
	}
	if c.Config != cfg {
		t.Errorf("Completed.Config = %+v, want %+v", c.Config, cfg)
	}

	cfg = DefaultConfig()
	cfg.RequestModes = "node-bound, pod-token"
	cfg.DriverServiceAccount = "cert-manager/svid-csi-driver"
	if c, err = cfg.Complete(); err != nil {
		t.Fatalf("Complete with both modes = %v", err)
	}
	if want := (checks.Modes{NodeBound: true, PodToken: true}); c.Modes != want || c.DriverUsername != "system:serviceaccount:cert-manager:svid-csi-driver" {
		t.Errorf("parsed modes = %+v, driver user %q", c.Modes, c.DriverUsername)
	}

	cfg = DefaultConfig()
	cfg.LeaderElection = false
	cfg.LeaderElectionNamespace = "" // unused without leader election
	if _, err := cfg.Complete(); err != nil {
		t.Fatalf("Complete without leader election = %v", err)
	}
}
