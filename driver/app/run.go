package app

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/csi"
	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/metrics"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/registration"
	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/issuer"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Run runs the driver until ctx is done or a component fails.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	startedAt := time.Now()
	logger := klog.FromContext(ctx)
	td, _ := spiffe.ParseTrustDomain(cfg.TrustDomain)
	socket, _ := cfg.SocketPath()

	restCfg, err := restConfig(cfg)
	if err != nil {
		return err
	}
	driverCM, err := cmclient.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("cert-manager client: %w", err)
	}
	// One client, one connection pool for every pod: the token is set per request.
	podCfg := issuance.PodConfig(restCfg)
	podHTTP, err := rest.HTTPClientFor(podCfg)
	if err != nil {
		return fmt.Errorf("pod HTTP client: %w", err)
	}
	podCM, err := cmclient.NewForConfigAndClient(podCfg, podHTTP)
	if err != nil {
		return fmt.Errorf("pod cert-manager client: %w", err)
	}
	waiter, err := issuance.NewWaiter(driverCM, cfg.DriverName, cfg.NodeID)
	if err != nil {
		return err
	}
	flagsIssuer := cmmeta.IssuerReference{Name: cfg.IssuerName, Kind: cfg.IssuerKind, Group: cfg.IssuerGroup}
	var issuers issuance.IssuerSource = issuance.StaticIssuer(flagsIssuer)
	var tracker *issuer.Tracker
	if cfg.RuntimeIssuanceConfigMap != "" {
		nn, _ := issuer.ParseConfigMap(cfg.RuntimeIssuanceConfigMap)
		kube, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		if flagsIssuer.Name == "" {
			flagsIssuer = cmmeta.IssuerReference{}
		}
		if tracker, err = issuer.New(issuer.Options{Flags: flagsIssuer, ConfigMap: nn, Client: kube}); err != nil {
			return fmt.Errorf("runtime issuer: %w", err)
		}
		issuers = tracker
	}
	if flagsIssuer.Name == "" && tracker == nil {
		logger.Info("No issuer configured; every publish fails until one is", "hint", issuance.NoIssuerMessage)
	}
	client, err := issuance.New(issuance.Options{
		DriverName: cfg.DriverName, NodeName: cfg.NodeID, TrustDomain: td,
		Duration: cfg.CertificateRequestDuration, Issuers: issuers,
		PodClient: podCM, DriverClient: driverCM, Waiter: waiter,
	})
	if err != nil {
		return err
	}
	caBundle, err := loadCABundle(cfg.SourceCABundle)
	if err != nil {
		return err
	}
	store, err := volume.NewStore(cfg.DataRoot)
	if err != nil {
		return err
	}
	var driver *csi.Driver
	m := metrics.New(func() time.Time { return driver.EarliestExpiry() })
	driver, err = csi.New(csi.Options{
		Name: cfg.DriverName, Version: cfg.Version, NodeID: cfg.NodeID,
		Issuer: client, Mounter: mount.New(), Store: store,
		Files:                  csi.FileNames{Certificate: cfg.FileNameCertificate, Key: cfg.FileNameKey, CA: cfg.FileNameCA},
		CABundle:               caBundle,
		MaxConcurrentIssuances: cfg.MaxConcurrentIssuances,
		Metrics:                m,
	})
	if err != nil {
		return err
	}
	if err := driver.Recover(ctx); err != nil {
		return err
	}
	lis, err := csi.Listen(socket)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to own CSI socket: %w", err)
	}
	defer func() { _ = conn.Close() }()

	health := http.NewServeMux()
	health.HandleFunc("/healthz", probeHandler(csipb.NewIdentityClient(conn)))
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", m.Handler())

	logger.Info("Starting driver", "version", cfg.Version, "driver", cfg.DriverName, "node", cfg.NodeID,
		"socket", socket, "dataRoot", cfg.DataRoot, "trustDomain", cfg.TrustDomain)
	g := newGroup(ctx)
	g.Go("CertificateRequest informer", func(ctx context.Context) error { waiter.Run(ctx); return nil })
	g.Go("orphan sweep", func(ctx context.Context) error {
		// One pass once the informer has synced; then it waits with the group.
		if err := client.SweepOrphans(ctx, startedAt); err != nil && ctx.Err() == nil {
			return err
		}
		<-ctx.Done()
		return nil
	})
	if tracker != nil {
		g.Go("runtime issuer", tracker.Run)
	}
	g.Go("renewal scheduler", func(ctx context.Context) error { driver.Run(ctx); return nil })
	g.Go("CSI server", func(ctx context.Context) error { return driver.Serve(ctx, lis) })
	reg := registration.New(cfg.DriverName, socket)
	g.Go("kubelet registration", func(ctx context.Context) error {
		return reg.Run(ctx, registration.SocketPath(cfg.KubeletRootDir, cfg.DriverName))
	})
	g.Go("health server", func(ctx context.Context) error { return serveHTTP(ctx, cfg.HealthAddress, health) })
	g.Go("metrics server", func(ctx context.Context) error { return serveHTTP(ctx, cfg.MetricsAddress, metricsMux) })
	err = g.Wait()
	// Volumes stay mounted: the next start finds them again.
	logger.Info("Driver stopped")
	return err
}

func restConfig(cfg Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (--kubeconfig=%q): %w", cfg.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = float32(cfg.KubeAPIQPS), cfg.KubeAPIBurst
	rc.UserAgent = "svid-csi-driver/" + cfg.Version
	return rc, nil
}

// loadCABundle reads and validates --source-ca-bundle once. Rewriting ca.crt
// when the file changes comes with the CA bundle issue.
func loadCABundle(path string) (func() []byte, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--source-ca-bundle: %w", err)
	}
	n := 0
	for rest := data; ; n++ {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("--source-ca-bundle %s: unexpected PEM block %q", path, block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("--source-ca-bundle %s: %w", path, err)
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("--source-ca-bundle %s: no PEM certificate", path)
	}
	return func() []byte { return data }, nil
}

// probeHandler answers /healthz by calling Probe on the driver's own socket.
func probeHandler(client csipb.IdentityClient) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		resp, err := client.Probe(ctx, &csipb.ProbeRequest{})
		switch {
		case err != nil:
			http.Error(w, "CSI Probe failed: "+err.Error(), http.StatusServiceUnavailable)
		case !resp.GetReady().GetValue():
			http.Error(w, "CSI driver not ready", http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ok\n"))
		}
	}
}

func serveHTTP(ctx context.Context, addr string, h http.Handler) error {
	if addr == "" || addr == "0" {
		<-ctx.Done()
		return nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", addr, err)
	}
	return nil
}

// group runs goroutines that all stop when one fails or ctx is done.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

func newGroup(ctx context.Context) *group {
	ctx, cancel := context.WithCancel(ctx)
	return &group{ctx: ctx, cancel: cancel}
}

func (g *group) Go(name string, fn func(context.Context) error) {
	g.wg.Go(func() {
		err := fn(g.ctx)
		if err == nil && g.ctx.Err() == nil {
			err = errors.New("stopped unexpectedly")
		}
		if err != nil {
			g.once.Do(func() { g.err = fmt.Errorf("%s: %w", name, err) })
		}
		g.cancel()
	})
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
