package app

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	valid := func() Config { c := Defaults(); c.NodeID = "node-1"; return c }
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"no node", func(c *Config) { c.NodeID = "" }, "--node-id is required"},
		{"bad driver name", func(c *Config) { c.DriverName = "Not_A_Name" }, "--driver-name="},
		{"relative data root", func(c *Config) { c.DataRoot = "run/x" }, "--data-root="},
		{"relative kubelet dir", func(c *Config) { c.KubeletRootDir = "kubelet" }, "--kubelet-root-dir="},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "spiffe://x" }, "--trust-domain:"},
		{"bad endpoint", func(c *Config) { c.Endpoint = "tcp://1.2.3.4:5" }, "--endpoint:"},
		{"zero duration", func(c *Config) { c.CertificateRequestDuration = 0 }, "--certificate-request-duration="},
		{"issuer without kind", func(c *Config) { c.IssuerName = "ca"; c.IssuerKind = "" }, "--issuer-name needs"},
		{"file name with slash", func(c *Config) { c.FileNameKey = "a/b" }, "--file-name-key="},
		{"same file names", func(c *Config) { c.FileNameCA = c.FileNameKey }, "--file-name-certificate, --file-name-key and --file-name-ca must differ"},
		{"bad configmap", func(c *Config) { c.RuntimeIssuanceConfigMap = "nonamespace" }, "--runtime-issuance-configmap:"},
		{"qps", func(c *Config) { c.KubeAPIQPS = 0 }, "--kube-api-qps="},
		{"burst", func(c *Config) { c.KubeAPIBurst = 0 }, "--kube-api-burst="},
		{"concurrency", func(c *Config) { c.MaxConcurrentIssuances = 0 }, "--max-concurrent-issuances="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q...", err, tc.want)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("error is not one line: %q", err)
			}
		})
	}
	c := valid()
	if p, _ := c.SocketPath(); p != "/var/lib/kubelet/plugins/spiffe.csi.cert-manager.io/csi.sock" {
		t.Errorf("default socket %s", p)
	}
}
