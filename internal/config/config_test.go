package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

func TestSharedDefaultsComplete(t *testing.T) {
	s := SharedDefaults(20, 40)
	if s.KubeAPIQPS != 20 || s.KubeAPIBurst != 40 {
		t.Errorf("SharedDefaults(20, 40): qps %g, burst %d", s.KubeAPIQPS, s.KubeAPIBurst)
	}
	if s.DriverName != spiffe.DefaultDriverName || s.TrustDomain != defaultTrustDomain ||
		s.CertificateRequestDuration != defaultDuration || s.IssuerKind != defaultIssuerKind ||
		s.IssuerGroup != defaultIssuerGroup || s.IssuerName != "" || s.RuntimeIssuanceConfigMap != "" ||
		s.Kubeconfig != "" {
		t.Errorf("SharedDefaults = %+v", s)
	}
	p, err := s.Complete()
	if err != nil {
		t.Fatalf("SharedDefaults(20, 40).Complete(): %v", err)
	}
	if p.Settings.TrustDomain.Name() != defaultTrustDomain {
		t.Errorf("trust domain %q, want %q", p.Settings.TrustDomain.Name(), defaultTrustDomain)
	}
	if p.Settings.Issuer != (cmmeta.IssuerReference{}) {
		t.Errorf("Issuer = %+v without --issuer-name, want empty", p.Settings.Issuer)
	}
	if p.IssuerConfigMap != (types.NamespacedName{}) {
		t.Errorf("ConfigMap = %v without --runtime-issuance-configmap, want empty", p.IssuerConfigMap)
	}
}

func TestFlagError(t *testing.T) {
	err := Bad("some-flag", "got %d, want %s", 3, "more")
	var fe *FlagError
	if !errors.As(err, &fe) {
		t.Fatalf("Bad returned %T, want *FlagError", err)
	}
	if fe.Flag != "some-flag" || fe.Problem != "got 3, want more" {
		t.Errorf("Bad = %+v", fe)
	}
	if got, want := err.Error(), "--some-flag: got 3, want more"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestCompleteBadFlag(t *testing.T) {
	for _, c := range []struct {
		name    string
		flag    string
		problem string // a part of the problem after "--flag: "
		edit    func(*Shared)
	}{
		{"trust domain with scheme", "trust-domain", `"spiffe://cluster.local"`, func(s *Shared) { s.TrustDomain = "spiffe://cluster.local" }},
		{"trust domain empty", "trust-domain", `trust domain ""`, func(s *Shared) { s.TrustDomain = "" }},
		{"trust domain upper case", "trust-domain", `"Cluster.Local"`, func(s *Shared) { s.TrustDomain = "Cluster.Local" }},
		{"configmap without namespace", "runtime-issuance-configmap", `"just-a-name"`, func(s *Shared) { s.RuntimeIssuanceConfigMap = "just-a-name" }},
		{"configmap bad namespace", "runtime-issuance-configmap", `"Bad_NS/cm": namespace`, func(s *Shared) { s.RuntimeIssuanceConfigMap = "Bad_NS/cm" }},
		{"configmap too many parts", "runtime-issuance-configmap", `"ns/cm/x"`, func(s *Shared) { s.RuntimeIssuanceConfigMap = "ns/cm/x" }},
		{"config configmap without namespace", "config-configmap", `"svid-csi-config"`, func(s *Shared) { s.ConfigConfigMap = "svid-csi-config" }},
		{"config configmap bad name", "config-configmap", `"ns/Bad_Name": name`, func(s *Shared) { s.ConfigConfigMap = "ns/Bad_Name" }},
		{"driver name empty", "driver-name", "required", func(s *Shared) { s.DriverName = "" }},
		{"driver name not a DNS subdomain", "driver-name", `"Spiffe_CSI" is not a CSIDriver name`, func(s *Shared) { s.DriverName = "Spiffe_CSI" }},
		{"driver name neither a subdomain nor short", "driver-name", "is not a CSIDriver name", func(s *Shared) {
			s.DriverName = "X" + strings.Repeat("a", 260) // two validation errors, still one line
		}},
		{"driver name longer than a label value", "driver-name", "is not a valid label value", func(s *Shared) {
			s.DriverName = strings.Repeat("a", 60) + ".example.io" // a subdomain, 71 characters
		}},
		{"duration zero", "certificate-request-duration", "must be positive", func(s *Shared) { s.CertificateRequestDuration = 0 }},
		{"duration negative", "certificate-request-duration", "-1m0s", func(s *Shared) { s.CertificateRequestDuration = -time.Minute }},
		{"issuer without kind", "issuer-kind", "required with --issuer-name", func(s *Shared) { s.IssuerName = "ca"; s.IssuerKind = "" }},
		{"issuer without group", "issuer-group", "required with --issuer-name", func(s *Shared) { s.IssuerName = "ca"; s.IssuerGroup = "" }},
		{"issuer kind not a kind", "issuer-kind", "want a kind", func(s *Shared) { s.IssuerName = "ca"; s.IssuerKind = "Cluster Issuer" }},
		{"issuer name not a name", "issuer-name", "lowercase", func(s *Shared) { s.IssuerName = "CA" }},
		{"issuer group not a group", "issuer-group", "\"cert_manager.io\"", func(s *Shared) { s.IssuerName = "ca"; s.IssuerGroup = "cert_manager.io" }},
		{"qps zero", "kube-api-qps", "must be positive, got 0", func(s *Shared) { s.KubeAPIQPS = 0 }},
		{"qps negative", "kube-api-qps", "got -1.5", func(s *Shared) { s.KubeAPIQPS = -1.5 }},
		{"burst zero", "kube-api-burst", "must be at least 1, got 0", func(s *Shared) { s.KubeAPIBurst = 0 }},
		{"burst negative", "kube-api-burst", "got -5", func(s *Shared) { s.KubeAPIBurst = -5 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := SharedDefaults(5, 10)
			c.edit(&s)
			p, err := s.Complete()
			if err == nil {
				t.Fatalf("Complete() = %+v, want an error for --%s", p, c.flag)
			}
			var fe *FlagError
			if !errors.As(err, &fe) {
				t.Fatalf("Complete() error %q is a %T, want *FlagError", err, err)
			}
			if fe.Flag != c.flag {
				t.Errorf("Complete() error names --%s, want --%s: %q", fe.Flag, c.flag, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "--"+c.flag+": ") || len(msg) <= len("--"+c.flag+": ") {
				t.Errorf("Complete() error %q does not start with %q and a problem", msg, "--"+c.flag+": ")
			}
			if !strings.Contains(msg, c.problem) {
				t.Errorf("Complete() error %q does not say %q", msg, c.problem)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("Complete() error is not one line: %q", msg)
			}
			if p != (Parsed{}) {
				t.Errorf("Complete() returned %+v with its error, want the zero Parsed", p)
			}
		})
	}
}

// Without --issuer-name, the kind and group are not checked: they only
// qualify a name.
func TestCompleteIssuerKindGroupOnlyWithName(t *testing.T) {
	s := SharedDefaults(5, 10)
	s.IssuerKind, s.IssuerGroup = "", ""
	p, err := s.Complete()
	if err != nil {
		t.Fatalf("Complete() without --issuer-name and with no kind and group: %v", err)
	}
	if p.Settings.Issuer != (cmmeta.IssuerReference{}) {
		t.Errorf("Issuer = %+v, want empty", p.Settings.Issuer)
	}
}

func TestCompleteIssuer(t *testing.T) {
	s := SharedDefaults(5, 10)
	s.IssuerName = "my-ca"
	p, err := s.Complete()
	if err != nil {
		t.Fatal(err)
	}
	if want := (cmmeta.IssuerReference{Name: "my-ca", Kind: defaultIssuerKind, Group: defaultIssuerGroup}); p.Settings.Issuer != want {
		t.Errorf("Issuer = %+v, want %+v", p.Settings.Issuer, want)
	}

	s.IssuerKind, s.IssuerGroup = "Issuer", "example.io"
	if p, err = s.Complete(); err != nil {
		t.Fatal(err)
	}
	if want := (cmmeta.IssuerReference{Name: "my-ca", Kind: "Issuer", Group: "example.io"}); p.Settings.Issuer != want {
		t.Errorf("Issuer = %+v, want %+v", p.Settings.Issuer, want)
	}
}

func TestCompleteParses(t *testing.T) {
	s := SharedDefaults(5, 10)
	s.TrustDomain = "example.org"
	s.RuntimeIssuanceConfigMap = "cert-manager/svid-csi-issuer"
	s.ConfigConfigMap = "cert-manager/svid-csi-config"
	s.CertificateRequestDuration = 2 * time.Hour
	s.DriverName = "svid.example.io"
	p, err := s.Complete()
	if err != nil {
		t.Fatal(err)
	}
	if p.Settings.TrustDomain.Name() != "example.org" {
		t.Errorf("TrustDomain = %q, want example.org", p.Settings.TrustDomain.Name())
	}
	if want := (types.NamespacedName{Namespace: "cert-manager", Name: "svid-csi-issuer"}); p.IssuerConfigMap != want {
		t.Errorf("ConfigMap = %v, want %v", p.IssuerConfigMap, want)
	}
	opts := p.SettingsOptions()
	if opts.ConfigConfigMap.String() != "cert-manager/svid-csi-config" || opts.IssuerConfigMap != p.IssuerConfigMap ||
		opts.Flags.Duration != 2*time.Hour || opts.Flags.TrustDomain != p.Settings.TrustDomain {
		t.Errorf("SettingsOptions = %+v", opts)
	}
}

// A 63-character driver name is both a DNS subdomain and a label value.
func TestCompleteDriverNameAt63(t *testing.T) {
	s := SharedDefaults(5, 10)
	s.DriverName = strings.Repeat("a", 52) + ".example.io"
	if len(s.DriverName) != 63 {
		t.Fatalf("test name has %d characters", len(s.DriverName))
	}
	if _, err := s.Complete(); err != nil {
		t.Errorf("Complete() with a 63-character driver name: %v", err)
	}
}

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:6443
users:
- name: test
  user:
    token: abc123
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
`

func TestRESTConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	s := SharedDefaults(12.5, 34)
	s.Kubeconfig = path
	rc, err := s.RESTConfig("svid-csi-test/v1")
	if err != nil {
		t.Fatalf("RESTConfig: %v", err)
	}
	if rc.Host != "https://127.0.0.1:6443" {
		t.Errorf("Host = %q, want https://127.0.0.1:6443", rc.Host)
	}
	if rc.BearerToken != "abc123" {
		t.Errorf("BearerToken = %q, want the kubeconfig's token", rc.BearerToken)
	}
	if rc.QPS != 12.5 || rc.Burst != 34 {
		t.Errorf("QPS %g, Burst %d; want 12.5 and 34", rc.QPS, rc.Burst)
	}
	if rc.UserAgent != "svid-csi-test/v1" {
		t.Errorf("UserAgent = %q, want svid-csi-test/v1", rc.UserAgent)
	}
}

func TestRESTConfigMissingKubeconfig(t *testing.T) {
	s := SharedDefaults(5, 10)
	s.Kubeconfig = filepath.Join(t.TempDir(), "does-not-exist")
	rc, err := s.RESTConfig("x")
	if err == nil {
		t.Fatalf("RESTConfig with a missing kubeconfig = %+v, want an error", rc)
	}
	if rc != nil {
		t.Errorf("RESTConfig returned a config with its error")
	}
	if !strings.Contains(err.Error(), "--kubeconfig") || !strings.Contains(err.Error(), s.Kubeconfig) {
		t.Errorf("error %q does not mention --kubeconfig and the file", err)
	}
}
