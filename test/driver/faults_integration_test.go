//go:build integration

package driver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
)

// faultKind is what the proxy does to a matching API call.
type faultKind int

const (
	// loseAnswer forwards the call, lets the API server commit it, then
	// drops the connection instead of answering.
	loseAnswer faultKind = iota
	// unavailable answers 503 without forwarding.
	unavailable
	// dropBefore drops the connection without forwarding.
	dropBefore
	// slow waits before forwarding.
	slow
)

// fault applies kind to the next times calls of method on
// CertificateRequests.
type fault struct {
	method string
	kind   faultKind
	times  int
}

// faultProxy stands between the driver and the API server, on loopback,
// passing everything through but the faults it is given; it records the
// status of every CertificateRequest call it forwards.
type faultProxy struct {
	t        *testing.T
	upstream *url.URL
	rt       http.RoundTripper
	rp       *httputil.ReverseProxy
	srv      *httptest.Server

	mu     sync.Mutex
	faults []*fault
	calls  []string // "POST 201", "DELETE lost 200", "DELETE 503"...
}

// newFaultProxy reads the driver's kubeconfig, starts the proxy in front of
// its server and returns the kubeconfig that goes through it (the same
// token, the proxy's own certificate).
func newFaultProxy(t *testing.T, kubeconfig string) (*faultProxy, string) {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cluster := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster]
	up, err := url.Parse(cluster.Server)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cluster.CertificateAuthorityData)
	p := &faultProxy{t: t, upstream: up, rt: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	p.rp = &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(up); r.Out.Host = up.Host },
		Transport:     p.rt,
		FlushInterval: -1, // watches stream
	}
	// TLS, as clientcmd sends no credentials over plain HTTP; HTTP/1.1, so
	// that a connection can be hung up on.
	p.srv = httptest.NewTLSServer(p)
	t.Cleanup(p.srv.Close)
	cluster.Server = p.srv.URL
	cluster.CertificateAuthorityData = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	out := filepath.Join(t.TempDir(), "proxied.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		t.Fatal(err)
	}
	return p, out
}

func (p *faultProxy) inject(f ...fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range f {
		p.faults = append(p.faults, &f[i])
	}
}

// take returns the first fault for the call, using it up.
func (p *faultProxy) take(r *http.Request) (faultKind, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !strings.Contains(r.URL.Path, "/certificaterequests") {
		return 0, false
	}
	for _, f := range p.faults {
		if f.method == r.Method && f.times > 0 {
			f.times--
			return f.kind, true
		}
	}
	return 0, false
}

func (p *faultProxy) record(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, s)
}

// recorded are the calls of method so far.
func (p *faultProxy) recorded(method string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, c := range p.calls {
		if strings.HasPrefix(c, method+" ") {
			out = append(out, c)
		}
	}
	return out
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind, faulty := p.take(r)
	crCall := strings.Contains(r.URL.Path, "/certificaterequests") && r.Method != http.MethodGet
	switch {
	case faulty && kind == unavailable:
		p.record(r.Method + " 503")
		http.Error(w, "injected fault", http.StatusServiceUnavailable)
		return
	case faulty && kind == dropBefore:
		p.record(r.Method + " dropped")
		p.hangUp(w)
		return
	case faulty && kind == loseAnswer:
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = p.upstream.Scheme, p.upstream.Host, p.upstream.Host, ""
		resp, err := p.rt.RoundTrip(out)
		if err != nil {
			p.record(r.Method + " lost error")
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			p.record(r.Method + " lost " + strconv.Itoa(resp.StatusCode))
		}
		p.hangUp(w)
		return
	case faulty && kind == slow:
		time.Sleep(300 * time.Millisecond)
	}
	if !crCall {
		p.rp.ServeHTTP(w, r)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	p.rp.ServeHTTP(rec, r)
	p.record(r.Method + " " + strconv.Itoa(rec.status))
}

// hangUp closes the client's connection without an answer.
func (p *faultProxy) hangUp(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.t.Errorf("hijack: %v", err)
		return
	}
	_ = conn.Close()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) { s.status = code; s.ResponseWriter.WriteHeader(code) }

func (s *statusRecorder) Flush() { http.NewResponseController(s.ResponseWriter).Flush() }

// TestLostCreateAnswerLeavesNoOrphan: the API server stores a request but
// its answer never reaches the driver. The kubelet's retry sends the same
// request again (the API server says it exists: the driver checks it is its
// own and resumes it), so the pod gets its SVID from the one request, and
// nothing is left once it is written. In both request modes: pod-token
// creates with the pod's token and reads back with the driver's own.
func TestLostCreateAnswerLeavesNoOrphan(t *testing.T) {
	for _, nodeBound := range []bool{false, true} {
		t.Run(fmt.Sprintf("node-bound=%v", nodeBound), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var proxy *faultProxy
			name := "lostcreate"
			if nodeBound {
				name = "lostcreatenb"
			}
			n := startNode(t, name, nodeOpts{nodeBound: nodeBound, wrapKubeconfig: func(k string) string {
				p, out := newFaultProxy(t, k)
				proxy = p
				return out
			}})
			ns := newTenant(t, name)
			proxy.inject(fault{method: http.MethodPost, kind: loseAnswer, times: 1})
			v := n.pod(t, ns, "web", nil, nil)
			err := n.kubelet.Publish(ctx, v)
			if err == nil {
				t.Fatal("the first publish succeeded although the create's answer was lost")
			}
			t.Logf("first publish: %v", err)
			if err := n.kubelet.Publish(ctx, v); err != nil {
				t.Fatalf("retried publish: %v\n%s", err, n.driver.Tail(4096))
			}
			svid(t, v, id(ns))
			if got := strings.Join(proxy.recorded(http.MethodPost), ", "); got != "POST lost 201, POST 409" {
				t.Errorf("creates seen by the proxy: %s; want the lost one, then the same name again", got)
			}
			waitNoRequests(t, ns)
		})
	}
}

// TestFaultyAPIPublishesAndCleansUp: between the driver and the API server,
// creates are slowed, one is dropped before it arrives, and deletes fail
// (503, a lost answer, a dropped connection) before they go through. Every
// pod publishes within the kubelet's retries, each gets one request, and
// every request is deleted in the end, with the deletions gauge back at 0.
func TestFaultyAPIPublishesAndCleansUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var proxy *faultProxy
	n := startNode(t, "faulty", nodeOpts{nodeBound: true, wrapKubeconfig: func(k string) string {
		p, out := newFaultProxy(t, k)
		proxy = p
		return out
	}})
	ns := newTenant(t, "faulty")
	proxy.inject(
		fault{method: http.MethodPost, kind: dropBefore, times: 1},
		fault{method: http.MethodPost, kind: slow, times: 5},
		fault{method: http.MethodDelete, kind: unavailable, times: 3},
		fault{method: http.MethodDelete, kind: loseAnswer, times: 1},
		fault{method: http.MethodDelete, kind: dropBefore, times: 1},
	)
	const pods = 6
	var wg sync.WaitGroup
	errs := make([]error, pods)
	tries := make([]int, pods)
	for i := range pods {
		v := n.pod(t, ns, "p"+strconv.Itoa(i), nil, nil)
		wg.Go(func() {
			// The kubelet retries a failed publish; here at once.
			for tries[i] = 1; ; tries[i]++ {
				if errs[i] = n.kubelet.Publish(ctx, v); errs[i] == nil || tries[i] == 5 {
					return
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pod %d: %v after %d tries\n%s", i, err, tries[i], n.driver.Tail(4096))
		}
	}
	waitNoRequests(t, ns)
	posts := proxy.recorded(http.MethodPost)
	created := 0
	for _, c := range posts {
		if c == "POST 201" {
			created++
		}
	}
	if created != pods {
		t.Errorf("%d requests created for %d pods: %v", created, pods, posts)
	}
	t.Logf("creates: %v; deletes: %v", posts, proxy.recorded(http.MethodDelete))
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(scrapeMetrics(t, n), "svid_csi_driver_request_deletions_pending 0\n"), nil
	})
	if err != nil {
		t.Errorf("deletions gauge never back at 0:\n%s", grepLines(scrapeMetrics(t, n), "deletions", ""))
	}
}

// grepLines are the lines of s that contain sub and not skip (when set).
func grepLines(s, sub, skip string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && (skip == "" || !strings.Contains(l, skip)) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
