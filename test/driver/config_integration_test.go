//go:build integration

package driver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// traffic is pods published without a pause by several workers, each
// certificate classified by a check, until stop.
type traffic struct {
	done     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	total    int
	by       map[string]int
	failures []string
}

// startTraffic starts 4 workers that each create a pod, publish it, check
// its certificate (check says which kind it is, or why it is wrong) and
// delete it, over and over.
func startTraffic(ctx context.Context, n *node, ns string, check func(chain []byte) (string, error)) *traffic {
	tr := &traffic{done: make(chan struct{}), by: map[string]int{}}
	fail := func(format string, args ...any) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		tr.failures = append(tr.failures, fmt.Sprintf(format, args...))
	}
	for w := range 4 {
		tr.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-tr.done:
					return
				default:
				}
				// Not n.pod: t.Fatal is for the test's own goroutine.
				v, err := n.kubelet.CreatePod(ctx, testbed.PodSpec{Namespace: ns, Name: fmt.Sprintf("w%d-%d", w, i), ServiceAccount: "app", ReadOnly: true})
				if err != nil {
					fail("create pod: %v", err)
					return
				}
				if err := n.kubelet.Publish(ctx, v); err != nil {
					fail("publish %s: %v", v.Pod.Name, err)
					return
				}
				chain, err := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
				if err != nil {
					fail("pod %s: %v", v.Pod.Name, err)
				}
				kind, err := check(chain)
				if err != nil {
					fail("pod %s: %v", v.Pod.Name, err)
				}
				if err := n.kubelet.DeletePod(ctx, v); err != nil {
					fail("delete %s: %v", v.Pod.Name, err)
					return
				}
				tr.mu.Lock()
				tr.total++
				tr.by[kind]++
				tr.mu.Unlock()
			}
		})
	}
	return tr
}

// stop ends the traffic, reports every failure, and returns how many pods
// were published, by kind.
func (tr *traffic) stop(t *testing.T) (int, map[string]int) {
	t.Helper()
	close(tr.done)
	tr.wg.Wait()
	for _, f := range tr.failures {
		t.Error(f)
	}
	return tr.total, tr.by
}

// Edits of the shared configuration mid-traffic deny nothing: while pods are
// published without a pause, svid-csi-config's duration and trust domain
// change again and again, and the driver and the approver, each watching it
// on its own, see each edit at their own moment. Every publish must succeed
// with a certificate of one of the configured durations and trust domains,
// and no request may be denied. The driver and the approver start with the
// same flags, as the shipped manifests give them.
func TestConfigChangeMidTraffic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const cm = "svid-csi-config-traffic"
	base := map[string]string{"TRUST_DOMAIN": "cluster.local", "CERTIFICATE_REQUEST_DURATION": "1h",
		"ISSUER_NAME": testbed.ClusterIssuerName, "ISSUER_KIND": "ClusterIssuer", "ISSUER_GROUP": "cert-manager.io"}
	putConfigMap(t, ctx, cm, base)
	t.Cleanup(func() { putConfigMap(t, context.Background(), cm, nil) })
	n := startNode(t, "config-traffic", nodeOpts{configConfigMap: cm})
	ns := newTenant(t, "config-traffic")

	tr := startTraffic(ctx, n, ns, func(chain []byte) (string, error) {
		for _, td := range []string{"cluster.local", "example.org"} {
			cert, err := testbed.VerifySVIDTo(bed.IssuerCAPEM, chain, "spiffe://"+td+"/ns/"+ns+"/sa/app")
			if err != nil {
				continue
			}
			return fmt.Sprintf("%s/%s", td, lifetime(cert)), nil
		}
		return "", errors.New("the certificate has neither trust domain's ID")
	})
	// Each edit changes one value; every combination of the two durations
	// and trust domains is active for a while.
	edits := []map[string]string{
		{"CERTIFICATE_REQUEST_DURATION": "2h"}, {"TRUST_DOMAIN": "example.org"},
		{"CERTIFICATE_REQUEST_DURATION": "1h"}, {"TRUST_DOMAIN": "cluster.local"},
	}
	const rounds = 3
	data := map[string]string{}
	for k, v := range base {
		data[k] = v
	}
	for range rounds {
		for _, e := range edits {
			time.Sleep(400 * time.Millisecond)
			for k, v := range e {
				data[k] = v
			}
			putConfigMap(t, ctx, cm, data)
		}
	}
	time.Sleep(400 * time.Millisecond)
	published, by := tr.stop(t)
	changes := rounds * len(edits)
	t.Logf("%d pods published across %d configuration edits: %v by trust domain/duration", published, changes, by)
	if published < 4*changes || len(by) < 4 {
		t.Errorf("%d publishes (%v) during %d edits: not traffic through every combination", published, by, changes)
	}
	for kind := range by {
		switch kind {
		case "cluster.local/1h0m0s", "cluster.local/2h0m0s", "example.org/1h0m0s", "example.org/2h0m0s":
		default:
			t.Errorf("a certificate of %s: not a configured trust domain and duration", kind)
		}
	}
	waitNoRequests(t, ns)
	noDenials(t, ctx, ns)
}

// lifetime is a certificate's validity, to the minute (cert-manager's CA
// issuer backdates NotBefore a little).
func lifetime(cert *x509.Certificate) time.Duration {
	return cert.NotAfter.Sub(cert.NotBefore).Round(time.Hour)
}
