// Package main builds cert-manager-controller for the svid-csi integration
// test bed: cert-manager v1.21's own controller loops, wired the way upstream
// cmd/controller/app does, but limited to the CA and SelfSigned issuers (plus,
// on request, the certificates-* loops). The certificaterequests-approver is
// not linked in at all: svid-csi's approver decides every CertificateRequest.
// There is no leader election, no ACME, no Vault/Venafi and no Gateway/Ingress
// shims.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/util/sets"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	"github.com/cert-manager/cert-manager/pkg/healthz"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"         // registers the CA issuer type
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned" // registers the SelfSigned issuer type
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"
	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"
)

// defaultControllers run unless --controllers says otherwise.
var defaultControllers = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	ca.CRControllerName,
	selfsigned.CRControllerName,
}

// optionalControllers may be added with --controllers.
var optionalControllers = []string{
	trigger.ControllerName,
	issuing.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
}

// Config holds the flag-derived settings.
type Config struct {
	Kubeconfig               string
	APIServerHost            string
	KubernetesAPIQPS         float32
	KubernetesAPIBurst       int
	Namespace                string
	ClusterResourceNamespace string
	Controllers              []string
	Workers                  int
	MetricsListenAddress     string
	HealthzListenAddress     string
	FeatureGates             map[string]bool
	Logging                  *logsapi.LoggingConfiguration
}

// Validate names each bad field.
func (c *Config) Validate() error {
	known := append(slices.Clone(defaultControllers), optionalControllers...)
	for _, n := range c.Controllers {
		if !slices.Contains(known, n) {
			return fmt.Errorf("--controllers: unknown controller %q (known: %s)", n, strings.Join(known, ","))
		}
	}
	switch {
	case c.ClusterResourceNamespace == "":
		return errors.New("--cluster-resource-namespace must not be empty")
	case c.Workers < 1:
		return fmt.Errorf("--concurrent-workers must be at least 1, got %d", c.Workers)
	}
	return nil
}

func main() {
	logf.InitLogs()
	cfg := Config{Logging: logsapi.NewLoggingConfiguration(), FeatureGates: map[string]bool{}}
	fs := pflag.NewFlagSet("cert-manager-controller", pflag.ContinueOnError)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty means in-cluster config")
	fs.StringVar(&cfg.APIServerHost, "master", "", "optional API server address, overrides the kubeconfig's")
	fs.Float32Var(&cfg.KubernetesAPIQPS, "kube-api-qps", 20, "client QPS when API Priority and Fairness is off")
	fs.IntVar(&cfg.KubernetesAPIBurst, "kube-api-burst", 50, "client burst when API Priority and Fairness is off")
	fs.StringVar(&cfg.Namespace, "namespace", "", "namespace to watch; empty means all (clusterissuers then still run)")
	fs.StringVar(&cfg.ClusterResourceNamespace, "cluster-resource-namespace", "cert-manager", "namespace holding the Secrets that ClusterIssuers reference")
	fs.StringSliceVar(&cfg.Controllers, "controllers", defaultControllers, "controllers to run; also allowed: "+strings.Join(optionalControllers, ","))
	fs.IntVar(&cfg.Workers, "concurrent-workers", 5, "workers per controller")
	fs.StringVar(&cfg.MetricsListenAddress, "metrics-listen-address", "0", "host:port for /metrics; 0 disables")
	fs.StringVar(&cfg.HealthzListenAddress, "healthz-listen-address", "0", "host:port for /livez; 0 disables")
	fs.Var(cliflag.NewMapStringBool(&cfg.FeatureGates), "feature-gates", "cert-manager controller feature gates, key=value pairs")
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
		fmt.Fprintln(os.Stderr, "cert-manager-controller:", err)
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "cert-manager-controller")
	log := logf.FromContext(ctx)
	log.Info("starting", "version", util.VersionInfo().GitVersion, "controllers", cfg.Controllers)

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         cfg.Kubeconfig,
		APIServerHost:      cfg.APIServerHost,
		KubernetesAPIQPS:   cfg.KubernetesAPIQPS,
		KubernetesAPIBurst: cfg.KubernetesAPIBurst,
		Namespace:          cfg.Namespace,
		IssuerOptions: controller.IssuerOptions{
			ClusterResourceNamespace: cfg.ClusterResourceNamespace,
		},
		CertificateOptions: controller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return err
	}
	base, err := factory.Build()
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	if err := serve(ctx, g, cfg.MetricsListenAddress, func(ln net.Listener) *http.Server { return base.Metrics.NewServer(ln) }); err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	if cfg.HealthzListenAddress != "0" && cfg.HealthzListenAddress != "" {
		ln, err := net.Listen("tcp", cfg.HealthzListenAddress)
		if err != nil {
			return fmt.Errorf("healthz listener: %w", err)
		}
		g.Go(func() error { return healthz.NewServer(20*time.Second).Start(ctx, ln) })
	}

	enabled := sets.New(cfg.Controllers...)
	for name, constructor := range controller.Known() {
		if !enabled.Has(name) || (name == clusterissuers.ControllerName && cfg.Namespace != "") {
			continue
		}
		c, err := constructor(factory)
		if err != nil {
			return fmt.Errorf("construct controller %s: %w", name, err)
		}
		g.Go(func() error { return c.Run(cfg.Workers, ctx) })
	}
	base.SharedInformerFactory.Start(ctx.Done())
	base.KubeSharedInformerFactory.Start(ctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	err = g.Wait()
	base.KubeSharedInformerFactory.Shutdown()
	base.SharedInformerFactory.Shutdown()
	base.HTTP01ResourceMetadataInformersFactory.Shutdown()
	return err
}

// serve runs the server newServer builds on addr until ctx ends; "0" or ""
// disables it.
func serve(ctx context.Context, g *errgroup.Group, addr string, newServer func(net.Listener) *http.Server) error {
	if addr == "0" || addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := newServer(ln)
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
