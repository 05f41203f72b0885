// Package app turns the driver's flags into a running driver: it completes
// the Config, then builds and runs the clients, the issuer, issuance, the
// volume manager, the CSI server, kubelet registration and the health and
// metrics servers.
package app

import (
	"path/filepath"
	"strings"

	"github.com/svid-csi/svid-csi/driver/socket"
	"github.com/svid-csi/svid-csi/internal/config"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Config is everything set by flags.
type Config struct {
	config.Shared

	NodeID         string
	Endpoint       string // unix:///path; empty: <kubelet-root-dir>/plugins/<driver-name>/csi.sock
	DataRoot       string
	KubeletRootDir string
	SourceCABundle string

	FileNameCertificate string
	FileNameKey         string
	FileNameCA          string

	MetricsAddress         string // empty: off
	HealthAddress          string // empty: off
	MaxConcurrentIssuances int
	// RequestMode is who creates requests: node-bound (the driver, with its
	// own pod-bound token) or pod-token (the driver, with the pod's token).
	RequestMode string

	Version string
}

// Defaults returns the flags' defaults.
func Defaults() Config {
	return Config{
		Shared:                 config.SharedDefaults(20, 40),
		DataRoot:               "/run/svid-csi",
		KubeletRootDir:         "/var/lib/kubelet",
		FileNameCertificate:    "tls.crt",
		FileNameKey:            "tls.key",
		FileNameCA:             "ca.crt",
		MetricsAddress:         ":9402",
		HealthAddress:          ":9809",
		MaxConcurrentIssuances: 10,
		RequestMode:            spiffe.ModePodToken,
	}
}

// Completed is a valid Config with its values parsed once.
type Completed struct {
	Config
	Parsed config.Parsed
	// Socket is the CSI socket's path: from --endpoint, or under the
	// kubelet's plugins directory.
	Socket string
	// NodeBound is --request-mode=node-bound.
	NodeBound bool
	// PodsDir is the kubelet's pods directory, under which every target
	// path must be.
	PodsDir string
}

// Complete validates the Config, naming the first bad flag, and parses it.
func (c *Config) Complete() (Completed, error) {
	parsed, err := c.Shared.Complete()
	if err != nil {
		return Completed{}, err
	}
	names := map[string]bool{c.FileNameCertificate: true, c.FileNameKey: true, c.FileNameCA: true}
	switch {
	case c.NodeID == "":
		return Completed{}, config.Bad("node-id", "required (the node's name, e.g. from spec.nodeName)")
	case !filepath.IsAbs(c.KubeletRootDir):
		return Completed{}, config.Bad("kubelet-root-dir", "must be an absolute path, got %q", c.KubeletRootDir)
	case !filepath.IsAbs(c.DataRoot):
		return Completed{}, config.Bad("data-root", "must be an absolute path (on a host tmpfs, not /tmp), got %q", c.DataRoot)
	case badFileName(c.FileNameCertificate):
		return Completed{}, config.Bad("file-name-certificate", "want a plain file name, got %q", c.FileNameCertificate)
	case badFileName(c.FileNameKey):
		return Completed{}, config.Bad("file-name-key", "want a plain file name, got %q", c.FileNameKey)
	case badFileName(c.FileNameCA):
		return Completed{}, config.Bad("file-name-ca", "want a plain file name, got %q", c.FileNameCA)
	case len(names) != 3:
		return Completed{}, config.Bad("file-name-certificate", "must differ from --file-name-key and --file-name-ca, and they from each other")
	case c.MaxConcurrentIssuances <= 0:
		return Completed{}, config.Bad("max-concurrent-issuances", "must be positive, got %d", c.MaxConcurrentIssuances)
	case c.SourceCABundle != "" && !filepath.IsAbs(c.SourceCABundle):
		return Completed{}, config.Bad("source-ca-bundle", "must be an absolute path, got %q", c.SourceCABundle)
	case c.RequestMode != spiffe.ModeNodeBound && c.RequestMode != spiffe.ModePodToken:
		return Completed{}, config.Bad("request-mode", "want %s or %s, got %q", spiffe.ModeNodeBound, spiffe.ModePodToken, c.RequestMode)
	}
	if err := config.Address("health-address", c.HealthAddress); err != nil {
		return Completed{}, err
	}
	if err := config.Address("metrics-address", c.MetricsAddress); err != nil {
		return Completed{}, err
	}
	sock := filepath.Join(c.KubeletRootDir, "plugins", c.DriverName, "csi.sock")
	if c.Endpoint != "" {
		if sock, err = socket.ParseEndpoint(c.Endpoint); err != nil {
			return Completed{}, config.Bad("endpoint", "%v", err)
		}
	}
	return Completed{Config: *c, Parsed: parsed, Socket: sock, NodeBound: c.RequestMode == spiffe.ModeNodeBound,
		PodsDir: filepath.Join(c.KubeletRootDir, "pods")}, nil
}

func badFileName(n string) bool {
	return n == "" || strings.ContainsRune(n, '/') || strings.HasPrefix(n, "..")
}
