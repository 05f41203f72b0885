package app

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"
)

func TestHealthHandler(t *testing.T) {
	var ready atomic.Bool
	h := healthHandler(ready.Load)
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if got := get("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", got)
	}
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz before sync = %d, want 503", got)
	}
	ready.Store(true)
	if got := get("/readyz"); got != http.StatusOK {
		t.Errorf("/readyz after sync = %d, want 200", got)
	}
}

func fastElection() Config {
	cfg := DefaultConfig()
	cfg.LeaderElectionLeaseDuration = time.Second
	cfg.LeaderElectionRenewDeadline = 500 * time.Millisecond
	cfg.LeaderElectionRetryPeriod = 100 * time.Millisecond
	return cfg
}

func holder(t *testing.T, kube *kubefake.Clientset, cfg Config) string {
	t.Helper()
	lease, err := kube.CoordinationV1().Leases(cfg.LeaderElectionNamespace).Get(context.Background(), cfg.LeaderElectionID, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get Lease: %v", err)
	}
	return ptr.Deref(lease.Spec.HolderIdentity, "")
}

// Shutdown stops the workers first, then releases the Lease.
func TestLeaderElectionReleasesAfterWorkersStop(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := fastElection()
	kube := kubefake.NewClientset()
	started := make(chan struct{})
	var holderAtStop string
	done := make(chan error)
	go func() {
		done <- runLeaderElection(ctx, cfg, kube, func(ctx context.Context) {
			close(started)
			<-ctx.Done()
			holderAtStop = holder(t, kube, cfg)
		})
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("never led")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("runLeaderElection: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runLeaderElection did not return")
	}
	if holderAtStop == "" {
		t.Error("the Lease was released before the workers stopped")
	}
	if h := holder(t, kube, cfg); h != "" {
		t.Errorf("Lease holder after shutdown = %q, want released", h)
	}
}

// Losing the lease stops the workers; the process stays up, campaigns again
// and leads again once the API server is back.
func TestLeaderElectionRecampaignsAfterLoss(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := fastElection()
	kube := kubefake.NewClientset()
	terms := make(chan struct{}, 2)
	ended := make(chan struct{}, 2)
	var running atomic.Int32
	var apiDown atomic.Bool
	kube.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if apiDown.Load() {
			return true, nil, errors.New("API server unavailable")
		}
		return false, nil, nil
	})
	done := make(chan error)
	go func() {
		done <- runLeaderElection(ctx, cfg, kube, func(ctx context.Context) {
			if running.Add(1) != 1 {
				t.Error("two terms ran at once")
			}
			defer running.Add(-1)
			terms <- struct{}{}
			<-ctx.Done()
			ended <- struct{}{}
		})
	}()
	<-terms
	// The API server stops accepting Lease updates: the renewal fails.
	apiDown.Store(true)
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("workers did not stop after the lease could not be renewed")
	}
	apiDown.Store(false)
	select {
	case <-terms:
	case <-time.After(15 * time.Second):
		t.Fatal("did not lead again after the API server came back")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("runLeaderElection: %v", err)
	}
}

// The recorder names the kind of what it records on (objects from caches
// carry no TypeMeta): CertificateRequests and the runtime ConfigMap.
func TestRecorderWritesEventsOnCertificateRequestsAndConfigMaps(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	kube := kubefake.NewClientset()
	recorder, stop, err := newRecorder(ctx, kube)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, tc := range []struct {
		obj        runtime.Object
		ns         string
		kind, apiV string
	}{
		{&cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "cr", UID: "1234"}}, "team-a", "CertificateRequest", "cert-manager.io/v1"},
		{&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "cert-manager", Name: "svid-csi-issuer", UID: "5678"}}, "cert-manager", "ConfigMap", "v1"},
	} {
		recorder.Event(tc.obj, corev1.EventTypeWarning, "Reason", "message")
		var events *corev1.EventList
		err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			events, err = kube.CoreV1().Events(tc.ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(events.Items) > 0, nil
		})
		if err != nil {
			t.Fatalf("no Event was written in %s: %v", tc.ns, err)
		}
		if ref := events.Items[0].InvolvedObject; ref.Kind != tc.kind || ref.APIVersion != tc.apiV {
			t.Errorf("Event on %s %s, want %s %s", ref.APIVersion, ref.Kind, tc.apiV, tc.kind)
		}
	}
}

// Only the leading replica records the tracker's Events: both replicas see
// the same invalid ConfigMap, and one Event per problem is enough.
func TestLeaderOnlyRecorder(t *testing.T) {
	fake := record.NewFakeRecorder(10)
	var leading atomic.Bool
	rec := leaderOnly{fake, &leading}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "cert-manager", Name: "svid-csi-issuer"}}
	rec.Eventf(cm, corev1.EventTypeWarning, "Invalid", "standing by %d", 1)
	rec.Event(cm, corev1.EventTypeWarning, "Invalid", "standing by")
	rec.AnnotatedEventf(cm, nil, corev1.EventTypeWarning, "Invalid", "standing by")
	if n := len(fake.Events); n != 0 {
		t.Fatalf("%d events recorded while standing by, want 0", n)
	}
	leading.Store(true)
	rec.Eventf(cm, corev1.EventTypeWarning, "Invalid", "leading %d", 1)
	rec.Event(cm, corev1.EventTypeWarning, "Invalid", "leading")
	rec.AnnotatedEventf(cm, nil, corev1.EventTypeWarning, "Invalid", "leading")
	if n := len(fake.Events); n != 3 {
		t.Fatalf("%d events recorded while leading, want 3", n)
	}
}
