// Package app builds and runs the approver from its completed Config:
// clients, the active issuer, the controller under leader election, and the
// health and metrics servers.
package app

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cmscheme "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/scheme"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/controller"
	"github.com/svid-csi/svid-csi/approver/metrics"
	"github.com/svid-csi/svid-csi/approver/signer"
	"github.com/svid-csi/svid-csi/internal/run"
	"github.com/svid-csi/svid-csi/internal/settings"
)

// Component names the approver in Events, the user agent and logs.
const Component = "svid-csi-approver"

// Run runs the approver until ctx is done. It returns an error only for
// what retrying cannot fix (bad configuration, a port in use); API errors
// are retried.
func Run(ctx context.Context, cfg Completed) error {
	logger := klog.FromContext(ctx)
	run.LimitMemory(logger)

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

	// Discovery for the signer check, each call bounded (RESTMapping takes
	// no context).
	discoveryConfig := rest.CopyConfig(restConfig)
	discoveryConfig.Timeout = 10 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(discoveryConfig)
	if err != nil {
		return fmt.Errorf("create discovery client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	recorder, stopEvents, err := newRecorder(ctx, kube)
	if err != nil {
		return err
	}
	defer stopEvents()

	// The approver, not every driver, records an invalid runtime ConfigMap
	// in an Event, and only the replica that leads: one Event per problem.
	var leading atomic.Bool
	opts := cfg.Parsed.SettingsOptions()
	opts.Client, opts.Recorder = kube, leaderOnly{recorder, &leading}
	tracker, err := settings.New(opts)
	if err != nil {
		return err
	}

	registry := prometheus.NewRegistry()
	m := metrics.New(registry)
	ctrl, err := controller.New(controller.Options{
		Client:    cm,
		ListWatch: controller.NewListWatch(cm, cfg.DriverName),
		Settings:  tracker,
		Recorder:  recorder,
		Metrics:   m,

		Modes:          cfg.Modes,
		DriverUsername: cfg.DriverUsername,
		DriverName:     cfg.DriverName,
		Pods:           kube.CoreV1(),
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

	// The settings in force are logged by the tracker once it has read the
	// ConfigMaps; the flags are only where it starts.
	logger.Info("Starting", "driverName", cfg.DriverName, "leaderElection", cfg.LeaderElection,
		"flagTrustDomain", cfg.TrustDomain, "flagDuration", cfg.CertificateRequestDuration, "configConfigMap", cfg.ConfigConfigMap,
		"requestModes", cfg.Modes.String(), "driverServiceAccount", cfg.DriverServiceAccount)
	g := run.NewGroup(ctx)
	g.Go("health server", health)
	g.Go("metrics server", metricsServer)
	g.Go("settings tracker", tracker.Run)
	g.Go("signer check", func(ctx context.Context) error {
		return signer.Run(ctx, signer.Options{
			Client: kube, Mapper: mapper,
			Issuer: tracker, Report: m.SignerApprovable,
		})
	})
	g.Go("request watch", func(ctx context.Context) error {
		ctrl.Watch(ctx)
		return nil
	})
	g.Go("controller", func(ctx context.Context) error {
		return runController(ctx, cfg.Config, kube, ctrl, m, func(lead bool) {
			leading.Store(lead)
			if lead {
				tracker.RecordInvalid() // seen while standing by: recorded by nobody
			}
		})
	})
	return g.Wait()
}

// runController runs the workers until ctx is done: while holding the
// leader Lease with leader election (the workers stop before the Lease is
// released), else at once.
func runController(ctx context.Context, cfg Config, kube kubernetes.Interface, ctrl *controller.Controller, m *metrics.Metrics, lead func(bool)) error {
	if !cfg.LeaderElection {
		m.SetLeader(true)
		lead(true)
		return ctrl.Run(ctx, cfg.Workers)
	}
	return runLeaderElection(ctx, cfg, kube, func(ctx context.Context) {
		m.SetLeader(true)
		lead(true)
		defer m.SetLeader(false)
		defer lead(false)
		if err := ctrl.Run(ctx, cfg.Workers); err != nil {
			klog.FromContext(ctx).Error(err, "Controller stopped")
		}
	})
}

// leaderOnly records Events only while leading is true.
type leaderOnly struct {
	rec     record.EventRecorder
	leading *atomic.Bool
}

func (l leaderOnly) Event(obj runtime.Object, eventtype, reason, message string) {
	if l.leading.Load() {
		l.rec.Event(obj, eventtype, reason, message)
	}
}

func (l leaderOnly) Eventf(obj runtime.Object, eventtype, reason, messageFmt string, args ...any) {
	if l.leading.Load() {
		l.rec.Eventf(obj, eventtype, reason, messageFmt, args...)
	}
}

func (l leaderOnly) AnnotatedEventf(obj runtime.Object, annotations map[string]string, eventtype, reason, messageFmt string, args ...any) {
	if l.leading.Load() {
		l.rec.AnnotatedEventf(obj, annotations, eventtype, reason, messageFmt, args...)
	}
}

// newRecorder records Events through the core/v1 events API. Its scheme
// resolves the kind of a CertificateRequest and of a ConfigMap even when the
// object from a cache has no TypeMeta.
func newRecorder(ctx context.Context, kube kubernetes.Interface) (record.EventRecorder, func(), error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, cmscheme.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, nil, fmt.Errorf("event scheme: %w", err)
		}
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(3)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	return broadcaster.NewRecorder(scheme, corev1.EventSource{Component: Component}), broadcaster.Shutdown, nil
}
