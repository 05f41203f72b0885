package app

import (
	"errors"
	"strings"
	"testing"

	"github.com/svid-csi/svid-csi/internal/config"
)

func TestComplete(t *testing.T) {
	valid := func() Config { c := Defaults(); c.NodeID = "node-1"; return c }
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		flag   string // the flag the error must name first; empty: valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no node", func(c *Config) { c.NodeID = "" }, "node-id"},
		{"bad driver name", func(c *Config) { c.DriverName = "Not_A_Name" }, "driver-name"},
		{"relative data root", func(c *Config) { c.DataRoot = "run/x" }, "data-root"},
		{"relative kubelet dir", func(c *Config) { c.KubeletRootDir = "kubelet" }, "kubelet-root-dir"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "spiffe://x" }, "trust-domain"},
		{"bad endpoint", func(c *Config) { c.Endpoint = "tcp://1.2.3.4:5" }, "endpoint"},
		{"zero duration", func(c *Config) { c.CertificateRequestDuration = 0 }, "certificate-request-duration"},
		{"issuer without kind", func(c *Config) { c.IssuerName = "ca"; c.IssuerKind = "" }, "issuer-kind"},
		{"issuer without group", func(c *Config) { c.IssuerName = "ca"; c.IssuerGroup = "" }, "issuer-group"},
		{"file name with slash", func(c *Config) { c.FileNameKey = "a/b" }, "file-name-key"},
		{"same file names", func(c *Config) { c.FileNameCA = c.FileNameKey }, "file-name-certificate"},
		{"bad configmap", func(c *Config) { c.RuntimeIssuanceConfigMap = "nonamespace" }, "runtime-issuance-configmap"},
		{"qps", func(c *Config) { c.KubeAPIQPS = 0 }, "kube-api-qps"},
		{"burst", func(c *Config) { c.KubeAPIBurst = 0 }, "kube-api-burst"},
		{"concurrency", func(c *Config) { c.MaxConcurrentIssuances = 0 }, "max-concurrent-issuances"},
		{"request mode", func(c *Config) { c.RequestMode = "kubelet" }, "request-mode"},
		{"request mode empty", func(c *Config) { c.RequestMode = "" }, "request-mode"},
		{"relative CA bundle", func(c *Config) { c.SourceCABundle = "ca.pem" }, "source-ca-bundle"},
		{"health address", func(c *Config) { c.HealthAddress = "9809" }, "health-address"},
		{"metrics address", func(c *Config) { c.MetricsAddress = "localhost" }, "metrics-address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			_, err := c.Complete()
			var fe *config.FlagError
			switch {
			case tc.flag == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.flag != "" && (!errors.As(err, &fe) || fe.Flag != tc.flag || !strings.HasPrefix(err.Error(), "--"+tc.flag+": ")):
				t.Fatalf("got %v, want an error naming --%s first", err, tc.flag)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
	c := valid()
	c.HealthAddress, c.MetricsAddress = "", "" // off
	completed, err := c.Complete()
	if err != nil {
		t.Fatal(err)
	}
	if completed.Socket != "/var/lib/kubelet/plugins/spiffe.csi.cert-manager.io/csi.sock" {
		t.Errorf("default socket %s", completed.Socket)
	}
	if completed.Parsed.Settings.TrustDomain.Name() != "cluster.local" || completed.Parsed.Settings.Issuer.Name != "" {
		t.Errorf("parsed %+v", completed.Parsed)
	}
	c.Endpoint = "unix:///run/csi/x.sock"
	if completed, err = c.Complete(); err != nil || completed.Socket != "/run/csi/x.sock" {
		t.Errorf("endpoint socket %v, %v", completed, err)
	}
}
