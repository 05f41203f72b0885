package app

import (
	"context"
	"fmt"
	"os"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// runLeaderElection campaigns for the Lease and runs lead while holding it.
//
// Losing the lease stops the workers (lead's ctx is cancelled and lead
// returns once they have), and the process stays up and campaigns again
// with its caches warm: a standby takes over within a lease duration, and a
// short API outage does not restart the pod. Decisions are safe under a brief
// overlap: each is written with the cached resourceVersion, so a second
// writer gets a Conflict and then sees the decision.
//
// On shutdown the workers stop first, then the Lease is released
// (ReleaseOnCancel), as client-go asks: nothing guarded runs after release.
func runLeaderElection(ctx context.Context, cfg Config, kube kubernetes.Interface, lead func(context.Context)) error {
	logger := klog.FromContext(ctx)
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("leader election identity: %w", err)
	}
	id := host + "_" + rand.String(8)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.LeaderElectionNamespace, Name: cfg.LeaderElectionID},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}

	// The election outlives ctx until the workers have stopped.
	electionCtx, stopElection := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElection()
	var t term
	stop := context.AfterFunc(ctx, func() {
		t.stopAndWait()
		stopElection()
	})
	defer stop()

	for {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   cfg.LeaderElectionLeaseDuration,
			RenewDeadline:   cfg.LeaderElectionRenewDeadline,
			RetryPeriod:     cfg.LeaderElectionRetryPeriod,
			ReleaseOnCancel: true,
			Name:            cfg.LeaderElectionID,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(leaseCtx context.Context) {
					if !t.begin() {
						return // shutting down
					}
					defer t.end()
					workCtx, cancel := context.WithCancel(leaseCtx)
					defer cancel()
					defer context.AfterFunc(ctx, cancel)()
					logger.Info("Started leading", "identity", id)
					lead(workCtx)
				},
				OnStoppedLeading: func() {
					logger.Info("Not leading", "identity", id)
				},
				OnNewLeader: func(leader string) {
					if leader != id {
						logger.Info("Another replica leads; standing by", "leader", leader)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		le.Run(electionCtx)
		if electionCtx.Err() != nil {
			return nil
		}
		logger.Info("Lost the leader lease; campaigning again", "identity", id)
	}
}

// term tracks the running leadership term so that shutdown can wait for it.
type term struct {
	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
}

// begin reports whether a term may start; every true is matched by end.
func (t *term) begin() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *term) end() { t.wg.Done() }

// stopAndWait refuses new terms and waits for the running one.
func (t *term) stopAndWait() {
	t.mu.Lock()
	t.stopped = true
	t.mu.Unlock()
	t.wg.Wait()
}
