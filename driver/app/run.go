package app

import (
	"context"
	"fmt"
	"net/http"
	"time"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/cabundle"
	"github.com/svid-csi/svid-csi/driver/csi"
	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/driver/manager"
	"github.com/svid-csi/svid-csi/driver/metrics"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/registration"
	"github.com/svid-csi/svid-csi/driver/socket"
	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/run"
	"github.com/svid-csi/svid-csi/internal/settings"
)

// Run runs the driver until ctx is done or a component fails. Volumes stay
// mounted when it returns: the next start finds them again.
func Run(ctx context.Context, cfg Completed) error {
	startedAt := time.Now()
	logger := klog.FromContext(ctx)
	run.LimitMemory(logger)

	// Clients: the driver's own, and one that acts as each pod.
	restCfg, err := cfg.RESTConfig("svid-csi-driver/" + cfg.Version)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	driverCM, err := cmclient.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("cert-manager client: %w", err)
	}
	var podCM cmclient.Interface // pod-token mode only
	if !cfg.NodeBound {
		if podCM, err = podClient(restCfg); err != nil {
			return err
		}
	}

	// Trust domain, duration and issuer: from flags, or the ConfigMaps
	// while they are valid, followed live.
	opts := cfg.Parsed.SettingsOptions()
	opts.Client = kube
	live, err := settings.New(opts)
	if err != nil {
		return fmt.Errorf("settings: %w", err)
	}

	// Issuance: requests created as the pod or, node-bound, as the driver,
	// watched on this node only.
	waiter, err := issuance.NewWaiter(driverCM, cfg.DriverName, cfg.NodeID)
	if err != nil {
		return err
	}
	deleter := issuance.NewDeleter(driverCM, issuance.DeleterOptions{})
	client, err := issuance.New(issuance.Options{
		DriverName: cfg.DriverName, NodeName: cfg.NodeID, Settings: live,
		NodeBound: cfg.NodeBound, PodClient: podCM, DriverClient: driverCM, Waiter: waiter, Deleter: deleter,
		MaxCreates: cfg.MaxConcurrentIssuances,
	})
	if err != nil {
		return err
	}

	// The volume manager: mounts, files, renewal, recovery.
	ca, err := cabundle.Load(cfg.SourceCABundle)
	if err != nil {
		return fmt.Errorf("--source-ca-bundle: %w", err)
	}
	caWatch, err := ca.Watch()
	if err != nil {
		return fmt.Errorf("--source-ca-bundle: %w", err)
	}
	store, err := volume.NewStore(cfg.DataRoot)
	if err != nil {
		return err
	}
	m := metrics.New()
	volumes, err := manager.New(manager.Options{
		Issuer: client, Mounter: mount.New(cfg.PodsDir), Store: store,
		Files:    manager.FileNames{Certificate: cfg.FileNameCertificate, Key: cfg.FileNameKey, CA: cfg.FileNameCA},
		CABundle: ca.PEM,
		Checks: []manager.Check{
			{Name: "the CertificateRequest cache", Ready: client.HasSynced},
			{Name: "the live settings", Ready: live.HasSynced},
		},
		NodeBound: cfg.NodeBound,
		Metrics:   m,
	})
	if err != nil {
		return err
	}
	m.ObserveVolumes(volumes)
	m.ObserveDeletions(deleter)
	if err := volumes.Recover(ctx); err != nil {
		return err
	}

	// CSI, announced to the kubelet.
	driver, err := csi.New(csi.Options{Name: cfg.DriverName, Version: cfg.Version, NodeID: cfg.NodeID, PodsDir: cfg.PodsDir,
		Volumes: volumes, NodeBound: cfg.NodeBound})
	if err != nil {
		return err
	}
	reg := registration.New(cfg.DriverName, cfg.Socket)

	// Servers: health (Probes on the CSI socket, as the kubelet would) and metrics.
	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to own CSI socket: %w", err)
	}
	defer func() { _ = conn.Close() }()
	health := healthHandler(csipb.NewIdentityClient(conn), volumes.Ready)
	serveHealth, err := run.HTTP(ctx, "health", cfg.HealthAddress, health)
	if err != nil {
		return err
	}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", m.Handler())
	serveMetrics, err := run.HTTP(ctx, "metrics", cfg.MetricsAddress, metricsMux)
	if err != nil {
		return err
	}

	// The sockets are bound last: a failed start leaves none behind for the
	// kubelet to find.
	lis, err := socket.Listen(cfg.Socket)
	if err != nil {
		return err
	}
	regLis, err := socket.Listen(registration.SocketPath(cfg.KubeletRootDir, cfg.DriverName))
	if err != nil {
		_ = lis.Close()
		return err
	}

	logger.Info("Starting driver", "version", cfg.Version, "driver", cfg.DriverName, "node", cfg.NodeID,
		logkey.Socket, cfg.Socket, "dataRoot", cfg.DataRoot, "flagTrustDomain", cfg.TrustDomain, "configConfigMap", cfg.ConfigConfigMap,
		"requestMode", cfg.RequestMode)
	g := run.NewGroup(ctx)
	g.Go("settings tracker", live.Run)
	g.Go("CertificateRequest informer", func(ctx context.Context) error { waiter.Run(ctx); return nil })
	g.Go("CertificateRequest deletions", func(ctx context.Context) error { deleter.Run(ctx); return nil })
	g.Go("orphan sweep", func(ctx context.Context) error {
		// One pass once the informer has synced; then it waits with the group.
		if err := client.SweepOrphans(ctx, startedAt); err != nil && ctx.Err() == nil {
			return err
		}
		<-ctx.Done()
		return nil
	})
	g.Go("renewals", func(ctx context.Context) error { volumes.Run(ctx); return nil })
	g.Go("CA bundle", func(ctx context.Context) error {
		volumes.RefreshCA(ctx) // the bundle may have changed while the driver was down
		return caWatch.Run(ctx, m, volumes.RefreshCA)
	})
	g.Go("CSI server", func(ctx context.Context) error { return driver.Serve(ctx, lis) })
	g.Go("kubelet registration", func(ctx context.Context) error { return reg.Serve(ctx, regLis) })
	g.Go("health server", serveHealth)
	g.Go("metrics server", serveMetrics)
	err = g.Wait()
	logger.Info("Driver stopped")
	return err
}

// podClient is the cert-manager client that acts as pods: one client, one
// connection pool for every pod, the token set per request.
func podClient(driver *rest.Config) (cmclient.Interface, error) {
	cfg := issuance.PodConfig(driver)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("pod HTTP client: %w", err)
	}
	c, err := cmclient.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, fmt.Errorf("pod cert-manager client: %w", err)
	}
	return c, nil
}
