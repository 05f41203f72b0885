//go:build integration

package approver

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// flood creates n labelled requests in the tenant's namespace that the
// approver denies (they name another ServiceAccount), 20 clients at once,
// each with extra bytes of junk annotation, as anyone who may create
// requests in one namespace can. With noIdentity they lack the identity
// annotation: the approver has nothing to decide on them.
func flood(t testing.TB, ctx context.Context, tn *tenant, n int, extra int, noIdentity bool) {
	t.Helper()
	wrong := "spiffe://cluster.local/ns/" + tn.ns + "/sa/someone-else"
	if noIdentity {
		wrong = ""
	}
	proto := tn.request(t, requestOpts{uris: []string{"spiffe://cluster.local/ns/" + tn.ns + "/sa/someone-else"}, annotation: &wrong})
	if proto.Annotations == nil {
		proto.Annotations = map[string]string{}
	}
	if extra > 0 {
		proto.Annotations["junk.example/padding"] = strings.Repeat("x", extra)
	}
	var wg sync.WaitGroup
	next := make(chan int)
	var mu sync.Mutex
	var firstErr error
	for range 20 {
		wg.Go(func() {
			for range next {
				_, err := tn.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, proto.DeepCopy(), metav1.CreateOptions{})
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("flood: %v", firstErr)
	}
}

// order is the decisions seen on one watch of every namespace, in the API
// server's order (etcd revisions): who was decided before whom.
type order struct {
	mu      sync.Mutex
	decided []string // namespace/name, in order
	seen    map[string]bool
}

func watchDecisions(t testing.TB, ctx context.Context) *order {
	t.Helper()
	crs := bed.CertManager.CertmanagerV1().CertificateRequests(metav1.NamespaceAll)
	// The API server closes a watch whose reader falls behind (this
	// process decodes thousands of events while it floods): resume it.
	list, err := crs.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return crs.Watch(ctx, o)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	o := &order{seen: map[string]bool{}}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			cr, ok := ev.Object.(*cmapi.CertificateRequest)
			if !ok || ev.Type == watch.Deleted || decided(cr) == nil {
				continue
			}
			key := cr.Namespace + "/" + cr.Name
			o.mu.Lock()
			if !o.seen[key] {
				o.seen[key] = true
				o.decided = append(o.decided, key)
			}
			o.mu.Unlock()
		}
	}()
	return o
}

// before counts the decisions in namespace ns seen before key's, and
// whether key's was seen.
func (o *order) before(key, ns string) (int, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, k := range o.decided {
		if k == key {
			return n, true
		}
		if strings.HasPrefix(k, ns+"/") {
			n++
		}
	}
	return n, false
}

// (This file runs after the package's others: by then the garbage
// collector watches CertificateRequests, and TestNodeBound's requests whose
// owner does not exist race it; see its cases.)
//
// A flood of requests from one namespace does not starve the others: with
// a backlog of 1,000 from one namespace waiting when the approver starts, a
// request from another namespace created then is decided after at most a
// few more of the flood (those in progress), not after the backlog. Without
// fair queueing it waits behind most of the backlog.
func TestFloodFromOneNamespaceDoesNotStarveOthers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	attacker, victim := newTenant(t, "flood"), newTenant(t, "victim")
	const backlog, workers = 1000, 4
	flood(t, ctx, attacker, backlog, 0, false)
	o := watchDecisions(t, ctx)

	startApprover(t, "approver-flood", "--leader-election=false", "--workers="+strconv.Itoa(workers))
	// Once the approver works on the backlog, the victim asks.
	if err := waitFor(ctx, func() bool { n, _ := o.before("", attacker.ns); return n >= 20 }); err != nil {
		t.Fatalf("the approver did not start on the backlog: %v", err)
	}
	req := victim.request(t, requestOpts{})
	started, _ := o.before("", attacker.ns)
	cr := victim.create(t, ctx, req)
	if c := decision(ctx, t, victim.ns, cr.Name); c.Type != cmapi.CertificateRequestConditionApproved {
		t.Fatalf("victim's request %s: %s", c.Type, c.Message)
	}
	var ahead int
	if err := waitFor(ctx, func() bool {
		n, ok := o.before(victim.ns+"/"+cr.Name, attacker.ns)
		ahead = n
		return ok
	}); err != nil {
		t.Fatal(err)
	}
	// Those in progress, one turn, and what the approver's watch had not
	// yet delivered when the victim's request was created.
	t.Logf("flood decisions before the victim's: %d (%d before it was created; backlog %d)", ahead, started, backlog)
	if limit := started + 2*workers + 100; ahead > limit || ahead > backlog/2 {
		t.Fatalf("%d of the flood were decided before the victim's request, created after %d: it waited its turn behind the flood", ahead, started)
	}
	// The backlog decided, then deleted: neither it nor cert-manager's work
	// on it is left to the next tests.
	if err := waitFor(ctx, func() bool { n, _ := o.before("", attacker.ns); return n >= backlog }); err != nil {
		t.Fatalf("backlog not decided: %v", err)
	}
	crs := bed.CertManager.CertmanagerV1().CertificateRequests(attacker.ns)
	if err := crs.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// BenchmarkFlood measures the approver under a flood of 10,000 requests it
// denies, with 4 KiB of junk annotation each, created by 20 clients in one
// namespace, with a legitimate request from another namespace every 250 ms
// throughout: decisions a second, CPU per decision, the legitimate
// requests' time from create to decision (p50, max), and RSS idle, at the
// flood's peak and once every request is decided. Run with -benchtime=1x.
func BenchmarkFlood(b *testing.B) {
	const n = 10000
	for range b.N {
		benchFlood(b, n)
	}
}

// BenchmarkMemoryLabelledJunk measures the approver's RSS with 50,000
// requests carrying the driver's label (anyone may set it) and 4 KiB of
// junk annotation each, but nothing to decide: idle, once they exist, and
// for a second approver started after them (its first list streams all
// 50,000 through the cache), at its peak and settled. Run with
// -benchtime=1x.
func BenchmarkMemoryLabelledJunk(b *testing.B) {
	const n = 50000
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	p := startApprover(b, "approver-junk-running", "--leader-election=false")
	time.Sleep(3 * time.Second) // synced, heap settled
	idle := usage(b, p)
	flood(b, ctx, newTenant(b, "junk-mem"), n, 4096, true)
	time.Sleep(150 * time.Second) // a forced collection, memory returned
	running := usage(b, p)

	q := startApprover(b, "approver-junk-restarted", "--leader-election=false")
	var peak int
	for range 60 {
		if u, err := q.Usage(); err == nil && u.RSSKiB > peak {
			peak = u.RSSKiB
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(120 * time.Second)
	restarted := usage(b, q)
	b.ReportMetric(float64(idle.RSSKiB)/1024, "rss-idle-MiB")
	b.ReportMetric(float64(running.RSSKiB)/1024, "rss-50k-MiB")
	b.ReportMetric(float64(peak)/1024, "rss-restart-peak-MiB")
	b.ReportMetric(float64(restarted.RSSKiB)/1024, "rss-restart-50k-MiB")
}

func benchFlood(b *testing.B, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	attacker, victim := newTenant(b, "flood-bench"), newTenant(b, "victim-bench")
	p := startApprover(b, "approver-flood-bench-"+strconv.Itoa(n), "--leader-election=false")
	defer p.Stop(15, 10*time.Second)
	time.Sleep(3 * time.Second) // synced, heap settled
	idle := usage(b, p)

	o := watchDecisions(b, ctx)
	req := victim.request(b, requestOpts{})
	stop := make(chan struct{})
	var lat []time.Duration
	var legit sync.WaitGroup
	legit.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			// Not the test's goroutine: errors, not Fatal.
			start := time.Now()
			cr, err := victim.as.CertManager.CertmanagerV1().CertificateRequests(victim.ns).Create(ctx, req.DeepCopy(), metav1.CreateOptions{})
			if err != nil {
				b.Errorf("legitimate request: %v", err)
				return
			}
			if err := waitFor(ctx, func() bool { _, ok := o.before(victim.ns+"/"+cr.Name, ""); return ok }); err != nil {
				b.Errorf("legitimate request %s not decided: %v", cr.Name, err)
				return
			}
			lat = append(lat, time.Since(start))
		}
	})
	b.ResetTimer()
	start := time.Now()
	var peak int
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if u, err := p.Usage(); err == nil && u.RSSKiB > peak {
				peak = u.RSSKiB
			}
		}
	}()
	flood(b, ctx, attacker, n, 4096, false)
	created := time.Since(start)
	if err := waitFor(ctx, func() bool { d, _ := o.before("", attacker.ns); return d >= n }); err != nil {
		d, _ := o.before("", attacker.ns)
		b.Fatalf("%d of %d decided: %v", d, n, err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	legit.Wait()
	<-sampled
	victims, err := bed.CertManager.CertmanagerV1().CertificateRequests(victim.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, cr := range victims.Items {
		if c := decided(&cr); c == nil || c.Type != cmapi.CertificateRequestConditionApproved {
			b.Errorf("legitimate request %s: %+v", cr.Name, c)
		}
	}
	busy := usage(b, p)
	// The runtime returns freed memory to the kernel over minutes; a
	// collection is forced every 2 minutes.
	time.Sleep(150 * time.Second)
	after := usage(b, p)

	slices.Sort(lat)
	b.ReportMetric(float64(n)/created.Seconds(), "creates/s")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "decisions/s")
	b.ReportMetric(float64(busy.CPUTicks-idle.CPUTicks)*10/float64(n), "cpu-ms/decision")
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "legit-p50-ms")
		b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "legit-max-ms")
	}
	b.ReportMetric(float64(idle.RSSKiB)/1024, "rss-idle-MiB")
	b.ReportMetric(float64(peak)/1024, "rss-peak-MiB")
	b.ReportMetric(float64(after.RSSKiB)/1024, "rss-all-decided-MiB")
}
