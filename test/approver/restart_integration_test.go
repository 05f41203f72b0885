//go:build integration

package approver

import (
	"context"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// The leases of startApprover: a standby takes over an unrenewed Lease
// after failoverLease.
const failoverLease = 4 * time.Second

// TestLeaderKilledDuringBurst: two approvers; the leader is killed (-9: the
// Lease is not released) while a burst of 200 requests is being created.
// The standby leads within one lease duration, and every request, made
// before, during or after the kill, is approved soon after: the goal is lease
// + 5 s after the kill, reported; past lease + 10 s the test fails. It
// reports the takeover and the decision latencies.
func TestLeaderKilledDuringBurst(t *testing.T) {
	const burst, clients = 200, 10
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tn := newTenant(t, "failover")
	const leaseName = "failover"
	a := startApprover(t, "approver-a", "--leader-election-id="+leaseName)
	first := tn.create(t, ctx, tn.request(t, requestOpts{}))
	decision(ctx, t, tn.ns, first.Name) // a leads now
	leader := leaseHolder(ctx, t, leaseName)
	if leader == "" {
		t.Fatal("no Lease holder once the first request was decided")
	}
	b := startApprover(t, "approver-b", "--leader-election-id="+leaseName)
	if err := b.WaitHTTP(ctx, "http://"+healthAddress(t, b)+"/readyz"); err != nil {
		t.Fatalf("standby never ready: %v", err) // its cache synced: it can take over at once
	}

	// Decisions as they happen, by request, from one list every 100 ms.
	decidedAt := map[string]time.Time{}
	var mu sync.Mutex
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watchers sync.WaitGroup
	watchers.Go(func() {
		_ = wait.PollUntilContextCancel(watchCtx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			list, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			for i := range list.Items {
				if c := decided(&list.Items[i]); c != nil {
					if _, seen := decidedAt[list.Items[i].Name]; !seen {
						decidedAt[list.Items[i].Name] = now
						if c.Type != cmapi.CertificateRequestConditionApproved {
							t.Errorf("%s: %s %q", list.Items[i].Name, c.Type, c.Message)
						}
					}
				}
			}
			return false, nil
		})
	})
	// The new holder and when it took over.
	var takeover time.Time
	var newLeader string
	watchers.Go(func() {
		_ = wait.PollUntilContextCancel(watchCtx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			if h := leaseHolder(ctx, t, leaseName); h != "" && h != leader {
				takeover, newLeader = time.Now(), h
				return true, nil
			}
			return false, nil
		})
	})

	var killed time.Time
	createdAt := make(map[string]time.Time, burst)
	requests := make([]*cmapi.CertificateRequest, burst) // made here: t.Fatal belongs to this goroutine
	for i := range requests {
		requests[i] = tn.request(t, requestOpts{})
	}
	var creators sync.WaitGroup
	var cmu sync.Mutex
	for c := range clients {
		creators.Go(func() {
			for i := range burst / clients {
				if c == 0 && i == burst/clients/3 {
					a.Stop(syscall.SIGKILL, 5*time.Second) // a third of the way in
					cmu.Lock()
					killed = time.Now()
					cmu.Unlock()
				}
				cr, err := tn.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, requests[c*burst/clients+i], metav1.CreateOptions{})
				if err != nil {
					t.Errorf("create: %v", err)
					return
				}
				cmu.Lock()
				createdAt[cr.Name] = time.Now()
				cmu.Unlock()
			}
		})
	}
	creators.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// The goal is lease + 5 s (met alone on the machine: 6.3-7.6 s); the
	// test fails past lease + 10 s, as a contended machine reaches 12 s.
	goal, deadline := killed.Add(failoverLease+5*time.Second), killed.Add(failoverLease+10*time.Second)
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(decidedAt) == burst+1, nil
	})
	stopWatch()
	watchers.Wait()
	if err != nil {
		t.Fatalf("%d of %d requests decided a minute after the burst", len(decidedAt)-1, burst)
	}
	if newLeader == "" || newLeader == leader {
		t.Fatalf("the Lease went from %q to %q, want the standby", leader, newLeader)
	}
	// Within the lease, give or take client-go's retry period and jitter.
	if d := takeover.Sub(killed); d <= 0 || d > failoverLease+2*time.Second {
		t.Errorf("the standby led %s after the kill, want after it and within the lease (%s) and its retries", d.Round(time.Millisecond), failoverLease)
	}
	var latencies []time.Duration
	last := time.Time{}
	for name, at := range createdAt {
		got := decidedAt[name]
		latencies = append(latencies, got.Sub(at))
		if got.After(last) {
			last = got
		}
		if got.After(deadline) && at.Before(deadline) {
			t.Errorf("%s decided %s after the kill, past lease + 10 s", name, got.Sub(killed).Round(time.Millisecond))
		}
	}
	slices.Sort(latencies)
	t.Logf("leader killed during a burst of %d: the standby led %s after the kill (lease %s); create to decision p50 %s, p99 %s, max %s; the last decided %s after the kill (goal of lease + 5 s met: %v)",
		burst, takeover.Sub(killed).Round(time.Millisecond), failoverLease,
		latencies[len(latencies)/2].Round(time.Millisecond), latencies[len(latencies)*99/100].Round(time.Millisecond),
		latencies[len(latencies)-1].Round(time.Millisecond), last.Sub(killed).Round(time.Millisecond), !last.After(goal))
}

// leaseHolder is the Lease's holder, "" when there is none or it cannot be read.
func leaseHolder(ctx context.Context, t testing.TB, name string) string {
	t.Helper()
	l, err := bed.Kube.CoordinationV1().Leases(testbed.CertManagerNamespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	return ptr.Deref(l.Spec.HolderIdentity, "")
}

// healthAddress is the host:port of the approver's health server, from its flags.
func healthAddress(t testing.TB, p *testbed.Process) string {
	t.Helper()
	for _, a := range p.Args {
		if addr, ok := strings.CutPrefix(a, "--health-address="); ok {
			return addr
		}
	}
	t.Fatalf("%s has no --health-address", p.Name)
	return ""
}
