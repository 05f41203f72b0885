// Package app builds and runs the approver from its completed Config:
// clients, the active issuer, the controller under leader election, and the
// health and metrics servers.
package app

import (
	"context"
	"fmt"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cmscheme "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/scheme"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/controller"
	"github.com/svid-csi/svid-csi/approver/metrics"
	"github.com/svid-csi/svid-csi/internal/issuer"
	"github.com/svid-csi/svid-csi/internal/run"
)

// Component names the approver in Events, the user agent and logs.
const Component = "svid-csi-approver"

// Run runs the approver until ctx is done. It returns an error only for
// what retrying cannot fix (bad configuration, a port in use); API errors
// are retried.
func Run(ctx context.Context, cfg Completed) error {
	logger := klog.FromContext(ctx)

	restConfig, err := cfg.Shared.RESTConfig(Component)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	cm, err := cmclient.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("create cert-manager client: %w", err)
	}

	tracker, err := issuer.New(issuer.Options{
		Flags:     cfg.Parsed.Issuer,
		ConfigMap: cfg.Parsed.ConfigMap,
		Client:    kube,
	})
	if err != nil {
		return err
	}

	recorder, stopEvents := newRecorder(ctx, kube)
	defer stopEvents()

	registry := prometheus.NewRegistry()
	m := metrics.New(registry)
	factory := controller.NewInformerFactory(cm, cfg.DriverName)
	ctrl, err := controller.New(controller.Options{
		Client:      cm,
		Informer:    factory.Certmanager().V1().CertificateRequests(),
		Issuer:      tracker,
		TrustDomain: cfg.Parsed.TrustDomain,
		Duration:    cfg.CertificateRequestDuration,
		Recorder:    recorder,
		Metrics:     m,
	})
	if err != nil {
		return err
	}
	m.ObserveQueue(ctrl.QueueDepth)

	// Both servers bind before anything runs: a port in use fails the start.
	health, err := run.HTTP(ctx, "health", cfg.HealthAddress, healthHandler(ctrl.HasSynced))
	if err != nil {
		return err
	}
	metricsServer, err := run.HTTP(ctx, "metrics", cfg.MetricsAddress, metricsHandler(registry))
	if err != nil {
		return err
	}

	logger.Info("Starting", "trustDomain", cfg.Parsed.TrustDomain.Name(), "driverName", cfg.DriverName,
		"duration", cfg.CertificateRequestDuration, "leaderElection", cfg.LeaderElection)
	g := run.NewGroup(ctx)
	g.Go("health server", health)
	g.Go("metrics server", metricsServer)
	g.Go("issuer tracker", tracker.Run)
	workersStopped := make(chan struct{})
	g.Go("informers", func(ctx context.Context) error {
		factory.StartWithContext(ctx)
		<-ctx.Done()
		<-workersStopped // the factory is shut down after the workers stop
		factory.Shutdown()
		return nil
	})
	g.Go("controller", func(ctx context.Context) error {
		defer close(workersStopped)
		return runController(ctx, cfg.Config, kube, ctrl, m)
	})
	return g.Wait()
}

// runController runs the workers until ctx is done: while holding the
// leader Lease with leader election (the workers stop before the Lease is
// released), else at once.
func runController(ctx context.Context, cfg Config, kube kubernetes.Interface, ctrl *controller.Controller, m *metrics.Metrics) error {
	if !cfg.LeaderElection {
		m.SetLeader(true)
		return ctrl.Run(ctx, cfg.Workers)
	}
	return runLeaderElection(ctx, cfg, kube, func(ctx context.Context) {
		m.SetLeader(true)
		defer m.SetLeader(false)
		if err := ctrl.Run(ctx, cfg.Workers); err != nil {
			klog.FromContext(ctx).Error(err, "Controller stopped")
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
