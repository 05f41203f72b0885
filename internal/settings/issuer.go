package settings

import (
	"fmt"
	"strings"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Settings are the values a request must carry to be approved.
type Settings struct {
	TrustDomain spiffeid.TrustDomain
	Duration    time.Duration
	// Issuer is the issuer of new requests; an empty Name means none.
	Issuer cmmeta.IssuerReference
}

// HasIssuer reports whether an issuer is set.
func (s Settings) HasIssuer() bool { return s.Issuer.Name != "" }

// String names the settings in logs.
func (s Settings) String() string {
	return fmt.Sprintf("trustDomain=%s duration=%s issuer=%s", s.TrustDomain.Name(), s.Duration, s.issuerString())
}

// logValues are the settings as structured-log key/value pairs.
func (s Settings) logValues() []any {
	return []any{"trustDomain", s.TrustDomain.Name(), "duration", s.Duration, "issuer", s.issuerString()}
}

func (s Settings) issuerString() string {
	if !s.HasIssuer() {
		return "none"
	}
	return RefString(s.Issuer)
}

// Keys of the runtime issuance ConfigMap; all are required and non-empty.
const (
	keyName  = "issuer-name"
	keyKind  = "issuer-kind"
	keyGroup = "issuer-group"
)

// Keys of the shared configuration ConfigMap (svid-csi-config, generated
// from config.env) that are read live; each one present and non-empty
// replaces the flag of the same meaning.
const (
	KeyTrustDomain = "TRUST_DOMAIN"
	KeyDuration    = "CERTIFICATE_REQUEST_DURATION"
	KeyIssuerName  = "ISSUER_NAME"
	KeyIssuerKind  = "ISSUER_KIND"
	KeyIssuerGroup = "ISSUER_GROUP"
)

var (
	runtimeKeys = issuerKeys{keyName, keyKind, keyGroup}
	configKeys  = issuerKeys{KeyIssuerName, KeyIssuerKind, KeyIssuerGroup}
)

type issuerKeys struct{ name, kind, group string }

// layer is what one ConfigMap sets; zero fields set nothing.
type layer struct {
	td       spiffeid.TrustDomain
	duration time.Duration
	issuer   cmmeta.IssuerReference
}

func (l layer) over(s Settings) Settings {
	if !l.td.IsZero() {
		s.TrustDomain = l.td
	}
	if l.duration > 0 {
		s.Duration = l.duration
	}
	if l.issuer.Name != "" {
		s.Issuer = l.issuer
	}
	return s
}

// fromRuntimeConfigMap reads the runtime issuance ConfigMap: an issuer,
// every key present and non-empty.
func fromRuntimeConfigMap(cm *corev1.ConfigMap, _ Settings) (layer, error) {
	var missing []string
	get := func(key string) string {
		v := cm.Data[key]
		if v == "" {
			missing = append(missing, key)
		}
		return v
	}
	ref := cmmeta.IssuerReference{Name: get(keyName), Kind: get(keyKind), Group: get(keyGroup)}
	if len(missing) > 0 {
		return layer{}, fmt.Errorf("missing or empty keys: %s", strings.Join(missing, ", "))
	}
	if err := validate(ref, runtimeKeys); err != nil {
		return layer{}, err
	}
	return layer{issuer: ref}, nil
}

// fromConfigConfigMap reads the shared configuration ConfigMap: each of its
// live keys that is set, validated; ISSUER_KIND and ISSUER_GROUP apply with
// ISSUER_NAME and default to the flags'. Its other keys are not read.
func fromConfigConfigMap(cm *corev1.ConfigMap, flags Settings) (layer, error) {
	var l layer
	var err error
	if v := cm.Data[KeyTrustDomain]; v != "" {
		if l.td, err = spiffe.ParseTrustDomain(v); err != nil {
			return layer{}, &KeyError{KeyTrustDomain, fmt.Sprintf("%q is not a trust domain", bounded(v))}
		}
	}
	if v := cm.Data[KeyDuration]; v != "" {
		if l.duration, err = time.ParseDuration(v); err != nil || l.duration <= 0 {
			return layer{}, &KeyError{KeyDuration, fmt.Sprintf("%q: want a positive duration such as 1h", bounded(v))}
		}
	}
	if name := cm.Data[KeyIssuerName]; name != "" {
		ref := cmmeta.IssuerReference{Name: name, Kind: cm.Data[KeyIssuerKind], Group: cm.Data[KeyIssuerGroup]}
		if ref.Kind == "" {
			ref.Kind = flags.Issuer.Kind
		}
		if ref.Group == "" {
			ref.Group = flags.Issuer.Group
		}
		if err := validate(ref, configKeys); err != nil {
			return layer{}, err
		}
		l.issuer = ref
	}
	return l, nil
}

// ParseNamespacedName parses the value of a flag naming a namespaced object
// (a ConfigMap, a ServiceAccount),
// "<namespace>/<name>".
func ParseNamespacedName(s string) (types.NamespacedName, error) {
	ns, name, found := strings.Cut(s, "/")
	if !found || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("%q: want <namespace>/<name>", s)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return types.NamespacedName{}, fmt.Errorf("%q: namespace: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return types.NamespacedName{}, fmt.Errorf("%q: name: %s", s, strings.Join(errs, "; "))
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}

// KeyError says which key (or the flag of the same name) of an issuer
// reference is wrong, and how.
type KeyError struct{ Key, Problem string }

func (e *KeyError) Error() string { return e.Key + ": " + e.Problem }

// Validate checks that an issuer reference could name a cert-manager issuer:
// the name and the group are DNS subdomains, the kind an identifier. It
// keeps what an operator mistyped out of requests and logs. Its KeyError
// names the runtime ConfigMap's keys, which are also the flags' names.
func Validate(ref cmmeta.IssuerReference) error { return validate(ref, runtimeKeys) }

func validate(ref cmmeta.IssuerReference, keys issuerKeys) error {
	if errs := validation.IsDNS1123Subdomain(ref.Name); len(errs) > 0 {
		return &KeyError{keys.name, fmt.Sprintf("%q: %s", bounded(ref.Name), strings.Join(errs, "; "))}
	}
	if !isKind(ref.Kind) {
		return &KeyError{keys.kind, fmt.Sprintf("%q: want a kind such as ClusterIssuer (letters and digits, starting with a letter, at most 63)", bounded(ref.Kind))}
	}
	if errs := validation.IsDNS1123Subdomain(ref.Group); len(errs) > 0 {
		return &KeyError{keys.group, fmt.Sprintf("%q: %s", bounded(ref.Group), strings.Join(errs, "; "))}
	}
	return nil
}

func isKind(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, r := range s {
		letter := (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !letter && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// bounded cuts a value echoed in a message to a readable length.
func bounded(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// RefString names an issuer in logs: <kind>.<group>/<name>.
func RefString(ref cmmeta.IssuerReference) string {
	return ref.Kind + "." + ref.Group + "/" + ref.Name
}
