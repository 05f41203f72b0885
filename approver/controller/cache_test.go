package controller

import (
	"slices"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// The cache holds only undecided requests, trimmed, and queues each one put
// while running; decided, foreign and deleted ones leave nothing behind.
func TestCacheKeepsOnlyPending(t *testing.T) {
	f := newFixture(t, flagIssuer)
	c := f.ctrl.cache
	key := func(name string) cache.ObjectName { return cache.ObjectName{Namespace: namespace, Name: name} }

	if err := c.Add(request(t, "seen-while-standing-by")); err != nil {
		t.Fatal(err)
	}
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName]())
	defer q.ShutDown()
	f.ctrl.queue.Store(&workQueue{q})

	foreign := request(t, "foreign")
	delete(foreign.Annotations, spiffe.IdentityAnnotation)
	big := request(t, "pending")
	big.Annotations["junk"] = strings.Repeat("x", 1<<20)
	for _, obj := range []*cmapi.CertificateRequest{
		foreign,
		withCondition(request(t, "approved"), cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue),
		withCondition(request(t, "denied"), cmapi.CertificateRequestConditionDenied, cmmeta.ConditionFalse),
		big, request(t, "pending"), // queued once
	} {
		if err := c.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	if q.Len() != 1 {
		t.Fatalf("queue length = %d, want 1", q.Len())
	}
	if k, _ := q.Get(); k != key("pending") {
		t.Fatalf("queued %v, want %s/pending", k, namespace)
	}
	if got := names(c); got != "pending,seen-while-standing-by" {
		t.Fatalf("cached %s, want only the two pending", got)
	}
	if cr, _, _ := c.get(key("pending")); cr.Annotations["junk"] != "" {
		t.Error("cached an annotation no check reads")
	}

	// A decision seen on the watch empties the entry; so does a delete.
	if err := c.Update(withCondition(request(t, "pending"), cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue)); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(request(t, "seen-while-standing-by")); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(cache.DeletedFinalStateUnknown{Key: namespace + "/never-seen"}); err != nil {
		t.Fatal(err)
	}
	if got := names(c); got != "" {
		t.Fatalf("cached %s after decision and delete, want nothing", got)
	}
}

// A relist keeps what is still pending, with the time it was first seen,
// and drops what is gone or decided; its objects may come already
// transformed (a streamed list) or not.
func TestCacheReplace(t *testing.T) {
	f := newFixture(t, flagIssuer)
	now := decidedAt
	c := newRequestCache(func() time.Time { return now }, f.ctrl.enqueue)
	if c.hasSynced() {
		t.Fatal("synced before a list")
	}
	for _, name := range []string{"kept", "gone", "decided"} {
		if err := c.Add(request(t, name)); err != nil {
			t.Fatal(err)
		}
	}
	firstSeen := now
	now = now.Add(time.Minute)
	streamed, _ := transform(request(t, "new-streamed"))
	decidedKey, _ := transform(withCondition(request(t, "decided"), cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue))
	if _, ok := decidedKey.(cache.ExplicitKey); !ok {
		t.Fatalf("a decided request transforms to %T, want only its key", decidedKey)
	}
	if err := c.Replace([]any{request(t, "kept"), streamed, decidedKey, request(t, "new")}, "1"); err != nil {
		t.Fatal(err)
	}
	if !c.hasSynced() {
		t.Fatal("not synced after a list")
	}
	if got := names(c); got != "kept,new,new-streamed" {
		t.Fatalf("cached %s, want kept,new,new-streamed", got)
	}
	if _, seen, _ := c.get(cache.ObjectName{Namespace: namespace, Name: "kept"}); !seen.Equal(firstSeen) {
		t.Errorf("kept first seen at %v, want %v", seen, firstSeen)
	}
	if _, seen, _ := c.get(cache.ObjectName{Namespace: namespace, Name: "new"}); !seen.Equal(now) {
		t.Errorf("new first seen at %v, want %v", seen, now)
	}
}

// The decision latency runs from when the approver first saw the request,
// not from its creationTimestamp, and an update does not reset it.
func TestLatencyFromFirstSeen(t *testing.T) {
	f := newFixture(t, flagIssuer)
	now := decidedAt.Add(-250 * time.Millisecond)
	f.ctrl.now = func() time.Time { return now }
	f.ctrl.cache.now = f.ctrl.now
	cr := request(t, "cr")
	cr.CreationTimestamp.Time = decidedAt.Add(-time.Hour)
	if _, err := f.client.CertmanagerV1().CertificateRequests(namespace).Create(t.Context(), cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.ctrl.cache.Add(cr); err != nil {
		t.Fatal(err)
	}
	now = decidedAt.Add(-100 * time.Millisecond)
	if err := f.ctrl.cache.Update(cr.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	now = decidedAt
	if err := f.sync("cr"); err != nil {
		t.Fatal(err)
	}
	if got := latencySum(t, f); got != 0.25 {
		t.Fatalf("latency observed %vs, want 0.25s", got)
	}
}

func latencySum(t *testing.T, f *fixture) float64 {
	t.Helper()
	mfs, err := f.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "svid_csi_approver_decision_latency_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 1 {
				t.Fatalf("%d latencies observed, want 1", h.GetSampleCount())
			}
			return h.GetSampleSum()
		}
	}
	t.Fatal("no latency metric")
	return 0
}

// names is the cached requests' names, sorted, comma-separated.
func names(c *requestCache) string {
	var s []string
	for _, n := range c.names() {
		s = append(s, n.Name)
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}
