// Package config holds what the driver's and the approver's configurations
// share: the settings both must agree on and their defaults, one format for
// a bad flag, their parsing, and the Kubernetes client configuration.
package config

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Defaults both binaries must agree on: a request the driver makes with
// its defaults passes the approver's with its own.
const (
	defaultTrustDomain = "cluster.local"
	defaultDuration    = time.Hour
	defaultIssuerKind  = "ClusterIssuer"
	defaultIssuerGroup = "cert-manager.io"
)

// FlagError is a bad flag, printed the same way by both binaries:
// "--name: what is wrong".
type FlagError struct {
	Flag    string // without the dashes
	Problem string
}

func (e *FlagError) Error() string { return "--" + e.Flag + ": " + e.Problem }

// Bad returns a *FlagError for flag.
func Bad(flag, format string, args ...any) error {
	return &FlagError{Flag: flag, Problem: fmt.Sprintf(format, args...)}
}

// Address checks the host:port of a server's flag; empty means off.
func Address(flag, addr string) error {
	if addr == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return Bad(flag, "%q is not host:port", addr)
	}
	return nil
}

// Shared are the flags both binaries have, with the same meaning.
type Shared struct {
	DriverName                 string
	TrustDomain                string
	CertificateRequestDuration time.Duration
	IssuerName                 string
	IssuerKind                 string
	IssuerGroup                string
	RuntimeIssuanceConfigMap   string // <namespace>/<name>; empty: none
	// ConfigConfigMap is <namespace>/<name> of the shared configuration
	// ConfigMap whose keys replace the trust domain, duration and issuer
	// flags while the process runs; empty: none.
	ConfigConfigMap string

	Kubeconfig   string // empty: in-cluster
	KubeAPIQPS   float64
	KubeAPIBurst int
}

// SharedDefaults are the defaults of the shared flags; the client limits
// are each binary's own.
func SharedDefaults(qps float64, burst int) Shared {
	return Shared{
		DriverName:                 spiffe.DefaultDriverName,
		TrustDomain:                defaultTrustDomain,
		CertificateRequestDuration: defaultDuration,
		IssuerKind:                 defaultIssuerKind,
		IssuerGroup:                defaultIssuerGroup,
		KubeAPIQPS:                 qps,
		KubeAPIBurst:               burst,
	}
}

// Parsed are the shared flags, parsed once.
type Parsed struct {
	// Settings are the flags' trust domain, duration and issuer (an empty
	// Issuer.Name means none): the start values of a settings.Tracker.
	Settings settings.Settings
	// IssuerConfigMap names the runtime issuance ConfigMap; empty means none.
	IssuerConfigMap types.NamespacedName
	// ConfigConfigMap names the shared configuration ConfigMap; empty
	// means none.
	ConfigConfigMap types.NamespacedName
}

// SettingsOptions are the options of the settings.Tracker these flags
// configure.
func (p Parsed) SettingsOptions() settings.Options {
	return settings.Options{Flags: p.Settings, ConfigConfigMap: p.ConfigConfigMap, IssuerConfigMap: p.IssuerConfigMap}
}

// Complete validates the shared flags, naming the first bad one, and
// returns them parsed.
func (s *Shared) Complete() (Parsed, error) {
	var p Parsed
	var err error
	if p.Settings.TrustDomain, err = spiffe.ParseTrustDomain(s.TrustDomain); err != nil {
		return Parsed{}, Bad("trust-domain", "%v", err)
	}
	p.Settings.Duration = s.CertificateRequestDuration
	if s.RuntimeIssuanceConfigMap != "" {
		if p.IssuerConfigMap, err = settings.ParseNamespacedName(s.RuntimeIssuanceConfigMap); err != nil {
			return Parsed{}, Bad("runtime-issuance-configmap", "%v", err)
		}
	}
	if s.ConfigConfigMap != "" {
		if p.ConfigConfigMap, err = settings.ParseNamespacedName(s.ConfigConfigMap); err != nil {
			return Parsed{}, Bad("config-configmap", "%v", err)
		}
	}
	switch {
	case s.DriverName == "":
		return Parsed{}, Bad("driver-name", "required")
	case len(validation.IsDNS1123Subdomain(s.DriverName)) > 0:
		return Parsed{}, Bad("driver-name", "%q is not a CSIDriver name: %s", s.DriverName, strings.Join(validation.IsDNS1123Subdomain(s.DriverName), "; "))
	case len(validation.IsValidLabelValue(s.DriverName)) > 0:
		return Parsed{}, Bad("driver-name", "%q is not a valid label value: %s", s.DriverName, strings.Join(validation.IsValidLabelValue(s.DriverName), "; "))
	case s.CertificateRequestDuration <= 0:
		return Parsed{}, Bad("certificate-request-duration", "must be positive, got %s", s.CertificateRequestDuration)
	case s.IssuerName != "" && s.IssuerKind == "":
		return Parsed{}, Bad("issuer-kind", "required with --issuer-name")
	case s.IssuerName != "" && s.IssuerGroup == "":
		return Parsed{}, Bad("issuer-group", "required with --issuer-name")
	case s.KubeAPIQPS <= 0:
		return Parsed{}, Bad("kube-api-qps", "must be positive, got %g", s.KubeAPIQPS)
	case s.KubeAPIBurst < 1:
		return Parsed{}, Bad("kube-api-burst", "must be at least 1, got %d", s.KubeAPIBurst)
	}
	if s.IssuerName != "" {
		p.Settings.Issuer = cmmeta.IssuerReference{Name: s.IssuerName, Kind: s.IssuerKind, Group: s.IssuerGroup}
		var bad *settings.KeyError
		if err := settings.Validate(p.Settings.Issuer); errors.As(err, &bad) {
			return Parsed{}, Bad(bad.Key, "%s", bad.Problem)
		}
	}
	return p, nil
}

// RESTConfig is the client configuration: from --kubeconfig, else
// in-cluster, with the client limits and a user agent.
func (s *Shared) RESTConfig(userAgent string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if s.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration (--kubeconfig=%q): %w", s.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = float32(s.KubeAPIQPS), s.KubeAPIBurst
	rc.UserAgent = userAgent
	return rc, nil
}
