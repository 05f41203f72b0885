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

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// BenchmarkBurst measures the approver on a burst of requests created at
// once (20 clients in parallel): decisions a second, and time from each
// create's return to the decision seen on a watch. Run with -benchtime=1x.
func BenchmarkBurst(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			p := startApprover(b, "approver-bench-"+strconv.Itoa(n), "--leader-election=false")
			defer p.Stop(15, 10*time.Second)
			for range b.N {
				burst(b, n)
			}
		})
	}
}

func burst(b *testing.B, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tn := newTenant(b, "bench")
	// Requests are crafted before the clock starts: key generation is the driver's cost, not the approver's.
	reqs := make([]*cmapi.CertificateRequest, n)
	for i := range reqs {
		reqs[i] = tn.request(b, requestOpts{})
	}
	w, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Watch(ctx, metav1.ListOptions{})
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
				got, err := tn.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, cr, metav1.CreateOptions{})
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

func usage(b *testing.B, p *testbed.Process) testbed.Usage {
	u, err := p.Usage()
	if err != nil {
		b.Fatal(err)
	}
	return u
}
