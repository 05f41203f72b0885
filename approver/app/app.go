package app

import (
	"context"
	"fmt"
	"sync"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cmscheme "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/scheme"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/controller"
	"github.com/svid-csi/svid-csi/approver/metrics"
	"github.com/svid-csi/svid-csi/internal/issuer"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Component names the approver in Events, the user agent and logs.
const Component = "svid-csi-approver"

// Run runs the approver until ctx is done. It returns an error only for
// what retrying cannot fix (bad configuration, a port in use); API errors
// are retried.
func Run(ctx context.Context, cfg Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logger := klog.FromContext(ctx)

	td, err := spiffe.ParseTrustDomain(cfg.TrustDomain)
	if err != nil {
		return err
	}
	var cmName types.NamespacedName
	if cfg.RuntimeIssuanceConfigMap != "" {
		if cmName, err = issuer.ParseConfigMap(cfg.RuntimeIssuanceConfigMap); err != nil {
			return err
		}
	}

	restConfig, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load Kubernetes client configuration: %w", err)
	}
	restConfig.QPS = float32(cfg.KubeAPIQPS)
	restConfig.Burst = cfg.KubeAPIBurst
	restConfig.UserAgent = Component
	kube, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	cm, err := cmclient.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("create cert-manager client: %w", err)
	}

	tracker, err := issuer.New(issuer.Options{
		Flags:     cmmeta.IssuerReference{Name: cfg.IssuerName, Kind: cfg.IssuerKind, Group: cfg.IssuerGroup},
		ConfigMap: cmName,
		Client:    kube,
	})
	if err != nil {
		return err
	}

	recorder, stopEvents := newRecorder(ctx, kube)
	defer stopEvents()

	var ctrl *controller.Controller
	registry := prometheus.NewRegistry()
	m := metrics.New(registry, func() int { return ctrl.QueueDepth() })

	factory := controller.NewInformerFactory(cm, cfg.DriverName)
	ctrl, err = controller.New(controller.Options{
		Client:      cm,
		Informer:    factory.Certmanager().V1().CertificateRequests(),
		Issuer:      tracker,
		TrustDomain: td,
		Duration:    cfg.CertificateRequestDuration,
		Recorder:    recorder,
		Metrics:     m,
	})
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: stops everything started below
	if err := serve(ctx, &wg, "health", cfg.HealthAddress, healthHandler(ctrl.HasSynced)); err != nil {
		return err
	}
	if cfg.MetricsAddress != "" {
		if err := serve(ctx, &wg, "metrics", cfg.MetricsAddress, metricsHandler(registry)); err != nil {
			return err
		}
	}
	wg.Go(func() {
		if err := tracker.Run(ctx); err != nil {
			logger.Error(err, "Issuer tracker stopped")
		}
	})
	factory.StartWithContext(ctx)
	defer func() { cancel(); factory.Shutdown() }()

	logger.Info("Starting", "trustDomain", td.Name(), "driverName", cfg.DriverName,
		"duration", cfg.CertificateRequestDuration, "leaderElection", cfg.LeaderElection)
	if !cfg.LeaderElection {
		m.SetLeader(true)
		return ctrl.Run(ctx, cfg.Workers)
	}
	return runLeaderElection(ctx, cfg, kube, func(ctx context.Context) {
		m.SetLeader(true)
		defer m.SetLeader(false)
		if err := ctrl.Run(ctx, cfg.Workers); err != nil {
			logger.Error(err, "Controller stopped")
		}
	})
}

// newRecorder records Events through the core/v1 events API. cert-manager's
// scheme resolves a CertificateRequest's kind even when the object from the
// cache has no TypeMeta.
func newRecorder(ctx context.Context, kube kubernetes.Interface) (record.EventRecorder, func()) {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(3)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	return broadcaster.NewRecorder(cmscheme.Scheme, corev1.EventSource{Component: Component}), broadcaster.Shutdown
}
