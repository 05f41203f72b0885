package app

import (
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/internal/config"
	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Config holds the approver's settings, from flags: the flags it shares with
// the driver, then its own.
type Config struct {
	config.Shared

	LeaderElection              bool
	LeaderElectionNamespace     string
	LeaderElectionID            string
	LeaderElectionLeaseDuration time.Duration
	LeaderElectionRenewDeadline time.Duration
	LeaderElectionRetryPeriod   time.Duration

	Workers        int
	MetricsAddress string // empty disables
	HealthAddress  string

	// RequestModes are the accepted request modes, comma-separated.
	RequestModes string
	// DriverServiceAccount is <namespace>/<name> of the driver's
	// ServiceAccount: its requests are node-bound.
	DriverServiceAccount string
}

// DefaultConfig is the Config of a flag-less start.
func DefaultConfig() Config {
	return Config{
		Shared:                      config.SharedDefaults(100, 200),
		LeaderElection:              true,
		LeaderElectionNamespace:     "cert-manager",
		LeaderElectionID:            "svid-csi-approver",
		LeaderElectionLeaseDuration: 15 * time.Second,
		LeaderElectionRenewDeadline: 10 * time.Second,
		LeaderElectionRetryPeriod:   2 * time.Second,
		// Each decision is one status write that cert-manager's webhook
		// authorises with SubjectAccessReviews from a client limited to 5
		// a second, cached for 1 s: every write in flight when that cache
		// expires asks again, and past about 4 at once the webhook
		// throttles itself for seconds (docs/approver.md, measured).
		Workers:        4,
		MetricsAddress: ":9402",
		HealthAddress:  ":9403",
		RequestModes:   spiffe.ModePodToken,
	}
}

// Completed is a validated Config with the shared flags parsed: what Run
// takes.
type Completed struct {
	Config
	Parsed config.Parsed
	Modes  checks.Modes
	// DriverUsername is the user of --driver-service-account ("" without).
	DriverUsername string
}

// Complete validates the Config, naming the first bad flag
// ("--flag: problem"), and returns it with the shared flags parsed.
func (c *Config) Complete() (Completed, error) {
	parsed, err := c.Shared.Complete()
	if err != nil {
		return Completed{}, err
	}
	lec := c.LeaderElection
	switch {
	case lec && len(validation.IsDNS1123Label(c.LeaderElectionNamespace)) > 0:
		return Completed{}, config.Bad("leader-election-namespace", "%q is not a namespace name", c.LeaderElectionNamespace)
	case lec && len(validation.IsDNS1123Subdomain(c.LeaderElectionID)) > 0:
		return Completed{}, config.Bad("leader-election-id", "%q is not a valid Lease name", c.LeaderElectionID)
	case lec && c.LeaderElectionRetryPeriod <= 0:
		return Completed{}, config.Bad("leader-election-retry-period", "must be positive, got %s", c.LeaderElectionRetryPeriod)
	case lec && float64(c.LeaderElectionRenewDeadline) <= 1.2*float64(c.LeaderElectionRetryPeriod):
		return Completed{}, config.Bad("leader-election-renew-deadline", "must be more than 1.2 x --leader-election-retry-period, got %s", c.LeaderElectionRenewDeadline)
	case lec && c.LeaderElectionLeaseDuration <= c.LeaderElectionRenewDeadline:
		return Completed{}, config.Bad("leader-election-lease-duration", "must be more than --leader-election-renew-deadline, got %s", c.LeaderElectionLeaseDuration)
	case c.Workers < 1:
		return Completed{}, config.Bad("workers", "must be at least 1, got %d", c.Workers)
	case c.HealthAddress == "":
		return Completed{}, config.Bad("health-address", "required")
	}
	if err := config.Address("health-address", c.HealthAddress); err != nil {
		return Completed{}, err
	}
	if err := config.Address("metrics-address", c.MetricsAddress); err != nil {
		return Completed{}, err
	}
	if c.MetricsAddress != "" && c.MetricsAddress == c.HealthAddress && !strings.HasSuffix(c.MetricsAddress, ":0") {
		return Completed{}, config.Bad("metrics-address", "must differ from --health-address")
	}
	modes, err := parseModes(c.RequestModes)
	if err != nil {
		return Completed{}, err
	}
	out := Completed{Config: *c, Parsed: parsed, Modes: modes}
	if c.DriverServiceAccount != "" {
		sa, err := settings.ParseNamespacedName(c.DriverServiceAccount)
		if err != nil {
			return Completed{}, config.Bad("driver-service-account", "%v", err)
		}
		out.DriverUsername = spiffe.ServiceAccountUsername(sa.Namespace, sa.Name)
	}
	if modes.NodeBound && out.DriverUsername == "" {
		return Completed{}, config.Bad("driver-service-account", "required with --request-modes=%s: the approver must know whose requests are node-bound", spiffe.ModeNodeBound)
	}
	return out, nil
}

// parseModes reads --request-modes: node-bound, pod-token or both.
func parseModes(s string) (checks.Modes, error) {
	var m checks.Modes
	for _, name := range strings.Split(s, ",") {
		switch strings.TrimSpace(name) {
		case spiffe.ModeNodeBound:
			m.NodeBound = true
		case spiffe.ModePodToken:
			m.PodToken = true
		default:
			return m, config.Bad("request-modes", "%q is not a mode: want %s, %s or both, comma-separated", name, spiffe.ModeNodeBound, spiffe.ModePodToken)
		}
	}
	return m, nil
}
