// Package main builds cert-manager-webhook for the svid-csi integration test
// bed: cert-manager v1.21's own admission chain (the CertificateRequest
// identity mutation that fills spec.username/uid/groups/extra, the approval
// permission check, and resource validation) served over HTTPS at /mutate and
// /validate on one host:port, with a static serving certificate read from files.
// Unlike upstream's server it binds only --listen-host, has no dynamic CA
// Secret, no conversion endpoint, and no metrics.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/client-go/kubernetes"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	acmeinstall "github.com/cert-manager/cert-manager/internal/apis/acme/install"
	cminstall "github.com/cert-manager/cert-manager/internal/apis/certmanager/install"
	metainstall "github.com/cert-manager/cert-manager/internal/apis/meta/install"
	"github.com/cert-manager/cert-manager/internal/kube"
	crapproval "github.com/cert-manager/cert-manager/internal/webhook/admission/certificaterequest/approval"
	cridentity "github.com/cert-manager/cert-manager/internal/webhook/admission/certificaterequest/identity"
	"github.com/cert-manager/cert-manager/internal/webhook/admission/resourcevalidation"
	_ "github.com/cert-manager/cert-manager/internal/webhook/feature" // registers the webhook feature gates
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	servertls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"github.com/cert-manager/cert-manager/pkg/util"
	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"
	"github.com/cert-manager/cert-manager/pkg/webhook/admission"
)

// Config holds the flag-derived settings.
type Config struct {
	Kubeconfig    string
	APIServerHost string
	ListenHost    string
	SecurePort    int
	HealthzPort   int
	TLSCertFile   string
	TLSKeyFile    string
	TLSMinVersion string
	FeatureGates  map[string]bool
	Logging       *logsapi.LoggingConfiguration
}

// Validate names each bad field.
func (c *Config) Validate() error {
	switch {
	case c.TLSCertFile == "":
		return errors.New("--tls-cert-file is required")
	case c.TLSKeyFile == "":
		return errors.New("--tls-private-key-file is required")
	case c.SecurePort < 1 || c.SecurePort > 65535:
		return fmt.Errorf("--secure-port must be 1-65535, got %d", c.SecurePort)
	case c.HealthzPort < 0 || c.HealthzPort > 65535:
		return fmt.Errorf("--healthz-port must be 0-65535, got %d", c.HealthzPort)
	}
	return nil
}

func main() {
	logf.InitLogs()
	cfg := Config{Logging: logsapi.NewLoggingConfiguration(), FeatureGates: map[string]bool{}}
	fs := pflag.NewFlagSet("cert-manager-webhook", pflag.ContinueOnError)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty means in-cluster config")
	fs.StringVar(&cfg.APIServerHost, "master", "", "optional API server address, overrides the kubeconfig's")
	fs.StringVar(&cfg.ListenHost, "listen-host", "127.0.0.1", "address the HTTPS and healthz listeners bind")
	fs.IntVar(&cfg.SecurePort, "secure-port", 10260, "HTTPS port serving /mutate and /validate")
	fs.IntVar(&cfg.HealthzPort, "healthz-port", 0, "plain HTTP port serving /healthz and /livez; 0 disables")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "PEM serving certificate (chain); re-read when it changes")
	fs.StringVar(&cfg.TLSKeyFile, "tls-private-key-file", "", "PEM private key for --tls-cert-file")
	fs.StringVar(&cfg.TLSMinVersion, "tls-min-version", "VersionTLS12", "minimum TLS version")
	fs.Var(cliflag.NewMapStringBool(&cfg.FeatureGates), "feature-gates", "cert-manager webhook feature gates, key=value pairs")
	showVersion := fs.Bool("version", false, "print the version and exit")
	logf.AddFlags(cfg.Logging, fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(util.VersionInfo().GitVersion)
		return
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "cert-manager-webhook:", err)
		logf.FlushLogs()
		os.Exit(1)
	}
	logf.FlushLogs()
}

func run(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := logf.ValidateAndApply(cfg.Logging); err != nil {
		return fmt.Errorf("logging flags: %w", err)
	}
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(cfg.FeatureGates); err != nil {
		return fmt.Errorf("--feature-gates: %w", err)
	}
	minVersion, err := cliflag.TLSVersion(cfg.TLSMinVersion)
	if err != nil {
		return fmt.Errorf("--tls-min-version: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "cert-manager-webhook")
	log := logf.FromContext(ctx)
	crlog.SetLogger(log)
	log.Info("starting", "version", util.VersionInfo().GitVersion, "address", net.JoinHostPort(cfg.ListenHost, strconv.Itoa(cfg.SecurePort)))

	restcfg, err := kube.BuildClientConfig(cfg.APIServerHost, cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("build client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(util.RestConfigWithUserAgent(restcfg, "webhook"))
	if err != nil {
		return fmt.Errorf("build kubernetes client: %w", err)
	}
	chain, err := admissionChain(client)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	cminstall.Install(scheme)
	acmeinstall.Install(scheme)
	metainstall.Install(scheme)

	certs := &servertls.FileCertificateSource{CertPath: cfg.TLSCertFile, KeyPath: cfg.TLSKeyFile}
	srv := crwebhook.NewServer(crwebhook.Options{
		Host: cfg.ListenHost,
		Port: cfg.SecurePort,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.MinVersion = minVersion
			c.GetCertificate = certs.GetCertificate
		}},
	})
	srv.Register("/mutate", admission.NewCustomMutationWebhook(chain))
	srv.Register("/validate", admission.NewCustomValidationWebhook(scheme, chain))

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return certs.Start(ctx) })
	if cfg.HealthzPort != 0 {
		if err := serveHealthz(ctx, g, net.JoinHostPort(cfg.ListenHost, strconv.Itoa(cfg.HealthzPort)), certs); err != nil {
			return err
		}
	}
	g.Go(func() error {
		// The certificate source loads the files asynchronously; serve once it has them.
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			return certs.Healthy(), nil
		}); err != nil {
			return fmt.Errorf("load serving certificate %s: %w", cfg.TLSCertFile, err)
		}
		return srv.Start(ctx)
	})
	return g.Wait()
}

// admissionChain is upstream's internal/webhook buildAdmissionChain: identity
// mutation, approval authorisation via SubjectAccessReviews, then validation.
func admissionChain(client kubernetes.Interface) (admission.PluginChain, error) {
	authz, err := authorizerfactory.DelegatingAuthorizerConfig{
		SubjectAccessReviewClient: client.AuthorizationV1(),
		AllowCacheTTL:             time.Second,
		DenyCacheTTL:              time.Second,
		WebhookRetryBackoff: &wait.Backoff{
			Duration: time.Second, Factor: 2, Jitter: 0.2, Steps: 2, Cap: 5 * time.Second,
		},
	}.New()
	if err != nil {
		return nil, fmt.Errorf("build authorizer: %w", err)
	}
	return admission.PluginChain{
		cridentity.NewPlugin(),
		crapproval.NewPlugin(authz, client.Discovery()),
		resourcevalidation.NewPlugin(),
	}, nil
}

// serveHealthz serves /healthz (serving certificate loaded) and /livez over
// plain HTTP on addr until ctx ends.
func serveHealthz(ctx context.Context, g *errgroup.Group, addr string, certs servertls.CertificateSource) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("healthz listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !certs.Healthy() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 32 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx) //nolint:contextcheck // ctx is already done
	})
	return nil
}
