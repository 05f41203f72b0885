//go:build integration

package e2e_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// driverMetrics is the driver's /metrics on the node (hostNetwork, :9402).
const driverMetrics = "http://127.0.0.1:9402/metrics"

// CA rotation on the real node, as an operator does it with the example
// overlay: the CA Secret's ca.crt (mounted into the driver by the ca-bundle
// component) gets a bundle of the old and the new CA. The kubelet updates the
// driver's mounted Secret, and every pod's ca.crt follows while its
// certificate and key stay as they were; garbage in the Secret changes
// nothing and is counted.
func TestCARotationReachesEveryPod(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-ca")
	pods := deploymentPods(ctx, t, ns, "app", 3)
	before := map[string]svid{}
	for i := range pods {
		before[pods[i].Name] = readSVID(ctx, t, &pods[i])
	}
	secrets := bed.Kube.CoreV1().Secrets(testbed.CertManagerNamespace)
	setCA := func(data []byte) {
		t.Helper()
		s, err := secrets.Get(ctx, testbed.ExampleIssuer, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Data["ca.crt"] = data
		if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// waitCA waits until every pod reads want as its ca.crt.
	waitCA := func(want []byte, what string) time.Duration {
		t.Helper()
		start := time.Now()
		err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			for i := range pods {
				out, err := bed.Exec(ctx, ns, pods[i].Name, "app", "/bin/cat", mountPath+"/ca.crt")
				if err != nil || out != string(want) {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("not every pod read %s as ca.crt: %v", what, err)
		}
		return time.Since(start)
	}
	t.Cleanup(func() {
		setCA(product.CAPEM)
		waitCA(product.CAPEM, "the example CA again")
	})

	rejected := caReloads(ctx, t, "rejected")
	both := append(append([]byte{}, product.CAPEM...), testbed.NewCAPEM(t, "next root")...)
	setCA(both)
	took := waitCA(both, "the old and the new CA")
	t.Logf("every pod read the rotated bundle %v after the Secret changed (the kubelet's Secret sync, then the driver's rewrite)", took.Round(time.Second))
	for i := range pods {
		out, err := bed.Exec(ctx, ns, pods[i].Name, "app", "/bin/cat", mountPath+"/tls.crt", mountPath+"/tls.key")
		if err != nil {
			t.Fatal(err)
		}
		if b := before[pods[i].Name]; out != b.certPEM+b.keyPEM {
			t.Errorf("%s: tls.crt or tls.key changed with the bundle", pods[i].Name)
		}
	}

	// Garbage in the Secret: counted, and every pod keeps the bundle.
	setCA([]byte("not a CA bundle\n"))
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		return caReloads(ctx, t, "rejected") > rejected, nil
	})
	if err != nil {
		t.Fatalf("the garbage bundle was not counted as rejected: %v", err)
	}
	for i := range pods {
		out, err := bed.Exec(ctx, ns, pods[i].Name, "app", "/bin/cat", mountPath+"/ca.crt")
		if err != nil || out != string(both) {
			t.Errorf("%s: ca.crt after garbage = %q, %v; want the last good bundle", pods[i].Name, tail(out, 80), err)
		}
	}
}

var reloadsLine = regexp.MustCompile(`(?m)^svid_csi_driver_ca_bundle_reloads_total\{result="(\w+)"\} (\d+)$`)

// caReloads is the driver's count of CA bundle changes with that result.
func caReloads(ctx context.Context, t *testing.T, result string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, driverMetrics, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape the driver: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range reloadsLine.FindAllStringSubmatch(string(body), -1) {
		if m[1] == result {
			n, _ := strconv.Atoi(m[2])
			return n
		}
	}
	return 0
}
