//go:build integration

package driver

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// TestCABundleFollowsTheFile: the driver's --source-ca-bundle lives in a
// directory updated the way the kubelet updates a mounted Secret (a new
// timestamped directory, then the ..data link swapped). When it changes,
// every volume's ca.crt follows within seconds while tls.crt and tls.key stay
// the very same files, and nothing is issued; garbage changes nothing, is
// logged once and counted; a pod published after gets the current bundle.
func TestCABundleFollowsTheFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	secretDir := filepath.Join(bed.Dir, "ca-bundle-secret")
	if err := os.MkdirAll(secretDir, 0o750); err != nil {
		t.Fatal(err)
	}
	caOne, caTwo := testbed.NewCAPEM(t, "root one"), testbed.NewCAPEM(t, "root two")
	mountSecret := func(data []byte) {
		t.Helper()
		if err := volume.WriteFiles(secretDir, map[string][]byte{"ca.crt": data}, -1); err != nil {
			t.Fatal(err)
		}
	}
	mountSecret(caOne)
	n := startNode(t, "cabundle", nodeOpts{caBundle: filepath.Join(secretDir, "ca.crt")})
	ns := newTenant(t, "cabundle")

	var vols []*testbed.PodVolume
	for _, name := range []string{"a", "b", "c"} {
		v := n.pod(t, ns, name, nil, nil)
		if err := n.kubelet.Publish(ctx, v); err != nil {
			t.Fatalf("publish %s: %v", name, err)
		}
		vols = append(vols, v)
	}
	readCA := func(v *testbed.PodVolume) []byte {
		data, _ := os.ReadFile(filepath.Join(v.TargetPath, "ca.crt"))
		return data
	}
	for _, v := range vols {
		if !bytes.Equal(readCA(v), caOne) {
			t.Fatalf("%s: ca.crt is not the bundle", v.Pod.Name)
		}
	}
	stat := func(v *testbed.PodVolume, name string) os.FileInfo {
		t.Helper()
		fi, err := os.Stat(filepath.Join(v.TargetPath, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	var certs, keys []os.FileInfo
	var certPEMs [][]byte
	for _, v := range vols {
		certs, keys = append(certs, stat(v, "tls.crt")), append(keys, stat(v, "tls.key"))
		data, _ := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
		certPEMs = append(certPEMs, data)
	}
	// The requests are deleted in the background after each publish: counted
	// once the last delete is in the audit log.
	waitNoRequests(t, ns)
	time.Sleep(time.Second)
	requests := auditCount(t, ns)

	// The CA rotates: the bundle carries both roots for the switch.
	both := append(append([]byte{}, caOne...), caTwo...)
	changed := time.Now()
	mountSecret(both)
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		for _, v := range vols {
			if !bytes.Equal(readCA(v), both) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("not every volume got the new bundle: %v\n%s", err, n.driver.Tail(4096))
	}
	t.Logf("every volume had the new bundle %v after the swap", time.Since(changed).Round(time.Millisecond))
	for i, v := range vols {
		data, _ := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
		if !os.SameFile(certs[i], stat(v, "tls.crt")) || !os.SameFile(keys[i], stat(v, "tls.key")) || !bytes.Equal(data, certPEMs[i]) {
			t.Errorf("%s: the certificate or key changed with the bundle", v.Pod.Name)
		}
	}
	if after := auditCount(t, ns); after != requests {
		t.Errorf("the bundle change made %d API requests on CertificateRequests, want 0", after-requests)
	}

	// Garbage: rejected, counted, logged once; every volume keeps the bundle.
	offset := n.logSize()
	mountSecret([]byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(scrapeMetrics(t, n), `svid_csi_driver_ca_bundle_reloads_total{result="rejected"} 1`), nil
	})
	if err != nil {
		t.Fatalf("the garbage bundle was not counted: %v", err)
	}
	n.waitLogLine(offset, "Rejected the changed CA bundle")
	for _, v := range vols {
		if !bytes.Equal(readCA(v), both) {
			t.Errorf("%s: garbage reached ca.crt", v.Pod.Name)
		}
	}
	metrics := scrapeMetrics(t, n)
	for _, want := range []string{
		`svid_csi_driver_ca_bundle_reloads_total{result="applied"} 1`,
		`svid_csi_driver_ca_bundle_volume_writes_total{result="success"} 3`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A pod published now gets the last good bundle.
	v := n.pod(t, ns, "d", nil, nil)
	if err := n.kubelet.Publish(ctx, v); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readCA(v), both) {
		t.Errorf("a new volume got %q, want the last good bundle", readCA(v))
	}
}

func scrapeMetrics(t *testing.T, n *node) string {
	t.Helper()
	resp, err := http.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
