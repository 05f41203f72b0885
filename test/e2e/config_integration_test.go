//go:build integration

package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// A configuration change on the real node, as an operator makes it: edit
// config.env's CERTIFICATE_REQUEST_DURATION and re-apply the overlay, here
// several times, while pods start without a pause. svid-csi-config changes
// in place and both binaries follow it live: no pod of the driver or the
// approver rolls, every new pod gets a certificate of one of the configured
// lifetimes (both are seen), and no request is denied.
func TestConfigChangeOnTheNode(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-config")
	t.Cleanup(func() {
		if _, err := bed.ReapplyExample(context.Background()); err != nil {
			t.Errorf("re-apply the example as installed: %v", err)
		}
	})
	before := productPods(ctx, t)

	var (
		mu       sync.Mutex
		lifetime = map[time.Duration]int{}
		failures []string
		wg       sync.WaitGroup
	)
	done := make(chan struct{})
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				d, err := startedPodLifetime(ctx, ns, fmt.Sprintf("w%d-%d", w, i))
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					lifetime[d]++
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	const longer = 3 * time.Minute
	durations := []time.Duration{longer, testbed.ExampleCertificateDuration, longer, testbed.ExampleCertificateDuration}
	for _, d := range durations {
		time.Sleep(6 * time.Second)
		if _, err := bed.ReapplyExample(ctx, "CERTIFICATE_REQUEST_DURATION="+d.String()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(6 * time.Second)
	close(done)
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	total := 0
	for d, n := range lifetime {
		total += n
		if d != longer && d != testbed.ExampleCertificateDuration {
			t.Errorf("%d certificates of %s: not a configured duration", n, d)
		}
	}
	t.Logf("%d pods started across %d re-applies of config.env: %v by certificate lifetime", total, len(durations), lifetime)
	if lifetime[longer] == 0 || lifetime[testbed.ExampleCertificateDuration] == 0 {
		t.Errorf("lifetimes %v: want certificates of both durations", lifetime)
	}

	if after := productPods(ctx, t); !equalPods(before, after) {
		t.Errorf("the driver's and the approver's pods changed from %v to %v: a configuration edit rolled them", before, after)
	}
	denied, err := bed.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=Denied"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range denied.Items {
		t.Errorf("denied: %s %s", e.InvolvedObject.Name, e.Message)
	}
}

// startedPodLifetime creates a pod, waits until it is ready, reads its
// certificate from inside it, checks it, deletes the pod, and returns the
// certificate's lifetime to the minute.
func startedPodLifetime(ctx context.Context, ns, name string) (time.Duration, error) {
	pods := bed.Kube.CoreV1().Pods(ns)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: svidPodSpec(nil, nil)}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return 0, fmt.Errorf("create pod %s: %w", name, err)
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		return err == nil && ready(p), nil
	})
	if err != nil {
		return 0, fmt.Errorf("pod %s never ready: %w\nevents:\n%s", name, err, bed.PodEvents(ctx, ns, name))
	}
	out, err := bed.Exec(ctx, ns, name, "app", "/bin/cat", mountPath+"/tls.crt")
	if err != nil {
		return 0, fmt.Errorf("read tls.crt in %s: %w", name, err)
	}
	leaf, err := testbed.VerifySVIDTo(product.CAPEM, []byte(out), "spiffe://cluster.local/ns/"+ns+"/sa/"+pod.Spec.ServiceAccountName)
	if err != nil {
		return 0, fmt.Errorf("pod %s: %w", name, err)
	}
	zero := int64(0)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return 0, fmt.Errorf("delete pod %s: %w", name, err)
	}
	return leaf.NotAfter.Sub(leaf.NotBefore).Round(time.Minute), nil
}

// productPods are the UIDs of the driver's and the approver's pods.
func productPods(ctx context.Context, t *testing.T) []types.UID {
	t.Helper()
	list, err := bed.Kube.CoreV1().Pods(testbed.CertManagerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=svid-csi"})
	if err != nil {
		t.Fatal(err)
	}
	var uids []types.UID
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			uids = append(uids, p.UID)
		}
	}
	if len(uids) < 2 {
		t.Fatalf("%d driver and approver pods running, want at least 2", len(uids))
	}
	return uids
}

func equalPods(a, b []types.UID) bool {
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
