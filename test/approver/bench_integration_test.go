//go:build integration

package approver

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// BenchmarkBurst measures the approver on a burst of requests created at
// once (20 clients in parallel): decisions a second, and time from each
// create's return to the decision seen on a watch. In the same run, both
// modes: pod-token (no pod to read) and node-bound (one GET of the pod per
// decision), so the pod check's cost is the difference. Run with
// -benchtime=1x.
func BenchmarkBurst(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, mode := range []string{spiffe.ModePodToken, spiffe.ModeNodeBound} {
			b.Run(strconv.Itoa(n)+"/"+mode, func(b *testing.B) {
				p := startApprover(b, "approver-bench-"+mode+"-"+strconv.Itoa(n), "--leader-election=false",
					"--request-modes="+mode, "--driver-service-account="+testbed.CertManagerNamespace+"/"+driverSA)
				defer p.Stop(15, 10*time.Second)
				// A first burst, not measured: connections, caches and the
				// webhook warm, as in a cluster that has been running.
				burst(b, 50, mode)
				b.ResetTimer()
				for range b.N {
					burst(b, n, mode)
				}
			})
		}
	}
}

func burst(b *testing.B, n int, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Requests are crafted before the clock starts: key generation is the driver's cost, not the approver's.
	reqs := make([]*cmapi.CertificateRequest, n)
	var ns string
	var creator *testbed.ServiceAccountClients
	if mode == spiffe.ModeNodeBound {
		nb := setupNodeBound(b)
		ns, creator = nb.namespace(b), nb.drivers["node-a"]
		pod := nb.workload(b, ns, "web", "node-a", spiffe.DefaultDriverName)
		for i := range reqs {
			reqs[i] = nb.request(b, pod, "app")
		}
	} else {
		tn := newTenant(b, "bench")
		ns, creator = tn.ns, tn.as
		for i := range reqs {
			reqs[i] = tn.request(b, requestOpts{})
		}
	}
	w, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()

	var mu sync.Mutex
	created := map[string]time.Time{}
	decidedAt := map[string]time.Time{}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan *cmapi.CertificateRequest)
	for range 20 {
		wg.Go(func() {
			for cr := range next {
				got, err := creator.CertManager.CertmanagerV1().CertificateRequests(ns).Create(ctx, cr, metav1.CreateOptions{})
				if err != nil {
					b.Error(err)
					continue
				}
				mu.Lock()
				created[got.Name] = time.Now()
				mu.Unlock()
			}
		})
	}
	go func() {
		defer close(next)
		for _, cr := range reqs {
			select {
			case next <- cr:
			case <-ctx.Done():
				return
			}
		}
	}()
	for len(decidedAt) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatalf("watch closed after %d decisions", len(decidedAt))
			}
			if ev.Type == watch.Error {
				b.Fatalf("watch error: %v", ev.Object)
			}
			if ev.Type != watch.Modified {
				continue
			}
			cr := ev.Object.(*cmapi.CertificateRequest)
			if _, seen := decidedAt[cr.Name]; !seen && decided(cr) != nil {
				if c := decided(cr); c.Type != cmapi.CertificateRequestConditionApproved {
					b.Fatalf("%s denied: %s", cr.Name, c.Message)
				}
				decidedAt[cr.Name] = time.Now()
			}
		case <-ctx.Done():
			b.Fatalf("only %d of %d decided", len(decidedAt), n)
		}
	}
	elapsed := time.Since(start)
	wg.Wait()
	b.StopTimer()
	var lastCreate time.Time
	for _, at := range created {
		if at.After(lastCreate) {
			lastCreate = at
		}
	}

	lat := make([]time.Duration, 0, n)
	for name, at := range decidedAt {
		lat = append(lat, at.Sub(created[name]))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "decisions/s")
	// The rate at which the API server (with cert-manager's webhook) took the
	// creates: the approver cannot decide faster than requests arrive.
	b.ReportMetric(float64(n)/lastCreate.Sub(start).Seconds(), "creates/s")
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
}

// BenchmarkMemoryForeign measures the approver's RSS with no requests, then
// with 10,000 CertificateRequests that are not the driver's: it must stay flat,
// since it caches only the driver's (label-selected, managedFields stripped).
func BenchmarkMemoryForeign(b *testing.B) {
	const foreign = 10000
	p := startApprover(b, "approver-mem", "--leader-election=false")
	time.Sleep(3 * time.Second) // caches synced, heap settled
	before := usage(b, p).RSSKiB
	tn := newTenant(b, "foreign-mem")
	ctx := context.Background()
	proto := tn.request(b, requestOpts{noLabel: true})
	var wg sync.WaitGroup
	next := make(chan int)
	for range 20 {
		wg.Go(func() {
			for range next {
				if _, err := tn.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, proto.DeepCopy(), metav1.CreateOptions{}); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range foreign {
		next <- i
	}
	close(next)
	wg.Wait()
	time.Sleep(3 * time.Second)
	after := usage(b, p).RSSKiB
	b.ReportMetric(float64(before)/1024, "rss-before-MiB")
	b.ReportMetric(float64(after)/1024, "rss-after-10k-foreign-MiB")
}

func usage(b testing.TB, p *testbed.Process) testbed.Usage {
	u, err := p.Usage()
	if err != nil {
		b.Fatal(err)
	}
	return u
}

// BenchmarkPodRead measures what the pod check adds to a node-bound
// decision: the GET of the request's pod as the approver sends it (from the
// watch cache; from etcd too, before a denial), next to the status write
// every decision makes. One call at a time, 400 each. Run with -benchtime=1x.
func BenchmarkPodRead(b *testing.B) {
	ctx := context.Background()
	nb := setupNodeBound(b)
	ns := nb.namespace(b)
	pod := nb.workload(b, ns, "web", "node-a", spiffe.DefaultDriverName)
	tn := newTenant(b, "podread")
	const n = 400
	timed := func(op func() error) (time.Duration, error) {
		start := time.Now()
		err := op()
		return time.Since(start), err
	}
	for _, tc := range []struct {
		name string
		op   func() (time.Duration, error)
	}{
		{"get-watch-cache", func() (time.Duration, error) {
			return timed(func() error {
				_, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{ResourceVersion: "0"})
				return err
			})
		}},
		{"get-etcd", func() (time.Duration, error) {
			return timed(func() error {
				_, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
				return err
			})
		}},
		// The decision's own write, through cert-manager's webhook (a
		// SubjectAccessReview): a Denied condition on a fresh request, the
		// create before it not timed.
		{"status-write", func() (time.Duration, error) {
			cr, err := tn.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, tn.request(b, requestOpts{}), metav1.CreateOptions{})
			if err != nil {
				return 0, err
			}
			cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
				Type: cmapi.CertificateRequestConditionDenied, Status: "True", Reason: "bench", Message: "bench"})
			return timed(func() error {
				_, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).UpdateStatus(ctx, cr, metav1.UpdateOptions{})
				return err
			})
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, n)
			for range n {
				d, err := tc.op()
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, d)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
