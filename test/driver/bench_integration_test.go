//go:build integration

package driver

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// BenchmarkPublish measures NodePublishVolume of a new pod, as the kubelet
// calls it, against the floor: the same CertificateRequest round trip (key,
// CSR, create as the ServiceAccount, wait for the certificate on a watch,
// delete) done by a bare client with no driver in between. It also counts, at
// the API server, the requests made per issuance and per republish.
// The driver cases run in both request modes: pod-token, then node-bound
// (the shipped default). Run with -benchtime=1x.
func BenchmarkPublish(b *testing.B) {
	n := startNode(b, "bench", nodeOpts{})
	nb := startNode(b, "benchnb", nodeOpts{nodeBound: true})

	b.Run("floor", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ns := newTenant(b, "floor")
		as := floorClient(ctx, b, ns)
		iw := watchIssued(ctx, b, ns)
		time.Sleep(time.Second) // the watch is established
		var lat []time.Duration
		for range rounds {
			d, err := bareIssue(ctx, as, iw, ns, n.driverName)
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, d)
		}
		report(b, lat)
	})

	b.Run("floor-100", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ns := newTenant(b, "floor100")
		as := floorClient(ctx, b, ns)
		iw := watchIssued(ctx, b, ns)
		time.Sleep(time.Second)
		lat := make([]time.Duration, 100)
		errs := make([]error, 100)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range lat {
			wg.Go(func() { lat[i], errs[i] = bareIssue(ctx, as, iw, ns, n.driverName) })
		}
		wg.Wait()
		total := time.Since(start)
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		report(b, lat)
		b.ReportMetric(total.Seconds(), "all-100-s")
	})

	for _, mode := range []struct {
		prefix string
		n      *node
	}{{"", n}, {"node-bound-", nb}} {
		b.Run(mode.prefix+"1", func(b *testing.B) { benchOneByOne(b, mode.n) })
		b.Run(mode.prefix+"100", func(b *testing.B) { benchHundred(b, mode.n) })
	}
}

// rounds is how many publishes the sequential cases make.
const rounds = 30

// benchOneByOne publishes new pods one after the other, and republishes each.
func benchOneByOne(b *testing.B, n *node) {
	ns := newTenant(b, "one")
	ctx := context.Background()
	var lat []time.Duration
	var republish []time.Duration
	auditBefore := auditVerbs(b, ns)
	for i := range rounds {
		v := n.pod(b, ns, "p"+strconv.Itoa(i), nil, nil)
		req, err := n.kubelet.PublishRequest(ctx, v)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := n.kubelet.Node.NodePublishVolume(ctx, req); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		start = time.Now()
		if _, err := n.kubelet.Node.NodePublishVolume(ctx, req); err != nil {
			b.Fatal(err)
		}
		republish = append(republish, time.Since(start))
	}
	report(b, lat)
	slices.Sort(republish)
	b.ReportMetric(float64(republish[len(republish)/2].Microseconds())/1000, "republish-p50-ms")
	time.Sleep(2 * time.Second) // the last deletes reach the audit log
	verbs := auditVerbs(b, ns)
	for _, verb := range []string{"create", "delete", "update", "patch", "get", "list"} {
		b.ReportMetric(float64(verbs[verb]-auditBefore[verb])/rounds, verb+"s/issuance")
	}
}

// benchHundred publishes 100 new pods at once.
func benchHundred(b *testing.B, n *node) {
	ns := newTenant(b, "hundred")
	ctx := context.Background()
	reqs := make([]*podCall, 100)
	for i := range reqs {
		v := n.pod(b, ns, "p"+strconv.Itoa(i), nil, nil)
		r, err := n.kubelet.PublishRequest(ctx, v)
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = &podCall{v: v, req: r}
	}
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range reqs {
		wg.Go(func() {
			s := time.Now()
			_, c.err = n.kubelet.Node.NodePublishVolume(ctx, c.req)
			c.lat = time.Since(s)
		})
	}
	wg.Wait()
	total := time.Since(start)
	var lat []time.Duration
	for _, c := range reqs {
		if c.err != nil {
			b.Fatal(c.err)
		}
		lat = append(lat, c.lat)
	}
	report(b, lat)
	b.ReportMetric(total.Seconds(), "all-100-s")
}

type podCall struct {
	v   *testbed.PodVolume
	req *csi.NodePublishVolumeRequest
	lat time.Duration
	err error
}

// BenchmarkIdle1000 publishes 1,000 volumes, then measures the driver's RSS
// and CPU over 30 idle seconds.
func BenchmarkIdle1000(b *testing.B) {
	n := startNode(b, "idle", nodeOpts{})
	ns := newTenant(b, "idle")
	ctx := context.Background()
	const volumes, parallel = 1000, 25
	next := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for i := range next {
				v := n.pod(b, ns, "p"+strconv.Itoa(i), nil, nil)
				if err := n.kubelet.Publish(ctx, v); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range volumes {
		next <- i
	}
	close(next)
	wg.Wait()
	time.Sleep(5 * time.Second)
	u0, err := n.driver.Usage()
	if err != nil {
		b.Fatal(err)
	}
	at0 := time.Now()
	time.Sleep(30 * time.Second)
	u1, err := n.driver.Usage()
	if err != nil {
		b.Fatal(err)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	b.ReportMetric(float64(u1.CPUTicks-u0.CPUTicks)/ticksPerSecond/time.Since(at0).Seconds()*100, "idle-cpu-%")
	b.ReportMetric(float64(u1.RSSKiB)/1024, "rss-MiB")
}

// issuedWatch is one watch on a namespace's CertificateRequests that tells
// waiters when a request has its certificate, as the driver's informer does.
type issuedWatch struct {
	mu     sync.Mutex
	issued map[string]bool
	wake   chan struct{} // closed and replaced on every issuance
}

func watchIssued(ctx context.Context, b *testing.B, ns string) *issuedWatch {
	crs := bed.CertManager.CertmanagerV1().CertificateRequests(ns)
	w, err := crs.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	iw := &issuedWatch{issued: map[string]bool{}, wake: make(chan struct{})}
	saw := func(cr *cmapi.CertificateRequest) {
		if len(cr.Status.Certificate) == 0 {
			return
		}
		iw.mu.Lock()
		iw.issued[cr.Name] = true
		close(iw.wake)
		iw.wake = make(chan struct{})
		iw.mu.Unlock()
	}
	go func() {
		for {
			for ev := range w.ResultChan() {
				if cr, ok := ev.Object.(*cmapi.CertificateRequest); ok {
					saw(cr)
				}
			}
			w.Stop()
			// The API server ends watches (a timeout, an error event): list
			// what was issued meanwhile and watch on from there.
			for ctx.Err() == nil {
				list, err := crs.List(ctx, metav1.ListOptions{})
				if err == nil {
					for i := range list.Items {
						saw(&list.Items[i])
					}
					if w, err = crs.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion}); err == nil {
						break
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return iw
}

func (iw *issuedWatch) wait(ctx context.Context, name string) error {
	for {
		iw.mu.Lock()
		done, wake := iw.issued[name], iw.wake
		iw.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("request %s never issued: %w", name, ctx.Err())
		}
	}
}

// podClient acts as a pod of ServiceAccount app, with a token bound to it,
// as the kubelet hands the driver in pod-token mode.
type podClient struct {
	*testbed.ServiceAccountClients
	pod *corev1.Pod
}

func floorClient(ctx context.Context, b testing.TB, ns string) *podClient {
	b.Helper()
	pod, err := bed.CreateIdlePod(ctx, testbed.IdlePod{Namespace: ns, Name: "floor", ServiceAccount: "app"})
	if err != nil {
		b.Fatal(err)
	}
	as, err := bed.ClientsAsPod(ctx, pod)
	if err != nil {
		b.Fatal(err)
	}
	return &podClient{as, pod}
}

// bareIssue is what an issuance costs with no driver in between: key, CSR,
// create as the ServiceAccount, wait for the certificate (the watch is
// already open, as the driver's informer is), delete.
func bareIssue(ctx context.Context, as *podClient, iw *issuedWatch, ns, driverName string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	_, csr, err := testbed.NewCSR([]string{id(ns)}, nil)
	if err != nil {
		return 0, err
	}
	crs := as.CertManager.CertmanagerV1().CertificateRequests(ns)
	cr, err := crs.Create(ctx, &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "floor-", Namespace: ns,
			Labels:          map[string]string{spiffe.DriverLabel: driverName},
			Annotations:     map[string]string{spiffe.IdentityAnnotation: id(ns)},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: as.pod.Name, UID: as.pod.UID}},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			Duration:  &metav1.Duration{Duration: time.Hour},
			Usages:    spiffe.Usages,
			IssuerRef: cmmeta.IssuerReference{Name: testbed.ClusterIssuerName, Kind: "ClusterIssuer", Group: "cert-manager.io"},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return 0, err
	}
	if err := iw.wait(ctx, cr.Name); err != nil {
		got, gerr := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Get(context.Background(), cr.Name, metav1.GetOptions{})
		if gerr == nil {
			err = fmt.Errorf("%w (conditions %+v, certificate %d bytes)", err, got.Status.Conditions, len(got.Status.Certificate))
		}
		return 0, err
	}
	// The bare client deletes with the admin's rights (the pod's ServiceAccount may only create).
	if err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Delete(ctx, cr.Name, metav1.DeleteOptions{}); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func report(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
}

// auditVerbs counts by verb the requests on CertificateRequests in ns made
// by the driver or by the pods' ServiceAccount (with the driver's help).
func auditVerbs(b *testing.B, ns string) map[string]int {
	evs, err := bed.AuditEvents()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]int{}
	for _, ev := range evs {
		user := ev.User.Username
		byDriver := user == "system:serviceaccount:"+testbed.CertManagerNamespace+":svid-csi-driver" ||
			user == "system:serviceaccount:"+ns+":app"
		if ev.ObjectRef.Namespace == ns && byDriver && ev.Stage == "ResponseComplete" {
			out[ev.Verb]++
		}
	}
	return out
}
