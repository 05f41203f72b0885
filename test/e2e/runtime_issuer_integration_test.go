//go:build integration

package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// The runtime issuer ConfigMap the example overlay names (config.env's
// RUNTIME_ISSUANCE_CONFIGMAP) and the approver's signers ClusterRole.
const (
	runtimeConfigMap = "svid-csi-issuer"
	signersRole      = "svid-csi-approver:signers"
)

// The runtime issuer on the real node, as an operator does it with the
// example overlay: the ConfigMap is theirs to create, edit and delete (the
// overlay never creates it); a new issuer's signer is first added to the
// approver's signers ClusterRole. New pods' certificates chain to the issuer
// the ConfigMap names; an invalid edit changes nothing and gets a Warning
// Event on the ConfigMap; deleting it reverts to config.env's issuer; and
// nothing is denied on the way.
func TestRuntimeIssuerOnTheNode(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	const second = "e2e-second-ca"
	secondCA, err := bed.CreateCAClusterIssuer(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	addSigner(ctx, t, "clusterissuers.cert-manager.io/"+second)
	ns := workloadNamespace(ctx, t, "e2e-runtime")
	cms := bed.Kube.CoreV1().ConfigMaps(testbed.CertManagerNamespace)
	if _, err := cms.Get(ctx, runtimeConfigMap, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the example overlay created ConfigMap %s (or the read failed: %v); it is the operator's", runtimeConfigMap, err)
	}
	t.Cleanup(func() {
		if err := cms.Delete(context.Background(), runtimeConfigMap, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
	data := map[string]string{"issuer-name": second, "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: runtimeConfigMap, Namespace: testbed.CertManagerNamespace}, Data: data}

	since := metav1.Now()
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDriverLog(ctx, t, since, "Active settings changed", second)
	chainsTo(ctx, t, createPod(ctx, t, ns, "second", svidPodSpec(nil, nil)), secondCA)

	delete(cm.Data, "issuer-kind")
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(ctx, t, testbed.CertManagerNamespace, runtimeConfigMap, settings.EventInvalid, "issuer-kind")
	chainsTo(ctx, t, createPod(ctx, t, ns, "invalid", svidPodSpec(nil, nil)), secondCA)

	since = metav1.Now()
	if err := cms.Delete(ctx, runtimeConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDriverLog(ctx, t, since, "Active settings changed", testbed.ExampleIssuer)
	chainsTo(ctx, t, createPod(ctx, t, ns, "reverted", svidPodSpec(nil, nil)), product.CAPEM)

	denied, err := bed.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=Denied"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range denied.Items {
		t.Errorf("denied: %s: %s", e.InvolvedObject.Name, e.Message)
	}
}

// chainsTo checks, from inside the pod, that its certificate chains to caPEM
// and names the pod's SPIFFE ID.
func chainsTo(ctx context.Context, t *testing.T, pod *corev1.Pod, caPEM []byte) {
	t.Helper()
	out, err := bed.Exec(ctx, pod.Namespace, pod.Name, "app", "/bin/cat", mountPath+"/tls.crt")
	if err != nil {
		t.Fatal(err)
	}
	id := "spiffe://cluster.local/ns/" + pod.Namespace + "/sa/" + pod.Spec.ServiceAccountName
	if _, err := testbed.VerifySVIDTo(caPEM, []byte(out), id); err != nil {
		t.Fatalf("pod %s: %v", pod.Name, err)
	}
}

// addSigner lets the approver approve for one more signer, as the documented
// overlay patch (add /rules/0/resourceNames/-) does, until the test ends.
func addSigner(ctx context.Context, t *testing.T, signer string) {
	t.Helper()
	roles := bed.Kube.RbacV1().ClusterRoles()
	update := func(ctx context.Context, change func([]string) []string) error {
		r, err := roles.Get(ctx, signersRole, metav1.GetOptions{})
		if err != nil {
			return err
		}
		r.Rules[0].ResourceNames = change(r.Rules[0].ResourceNames)
		_, err = roles.Update(ctx, r, metav1.UpdateOptions{})
		return err
	}
	if err := update(ctx, func(names []string) []string { return append(names, signer) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := update(context.Background(), func(names []string) []string {
			var kept []string
			for _, n := range names {
				if n != signer {
					kept = append(kept, n)
				}
			}
			return kept
		})
		if err != nil {
			t.Error(err)
		}
	})
}

// waitDriverLog waits for a line of the driver container's log, written
// since then, that holds every one of parts.
func waitDriverLog(ctx context.Context, t *testing.T, since metav1.Time, parts ...string) {
	t.Helper()
	driver := driverPod(ctx, t)
	var log string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		raw, err := bed.Kube.CoreV1().Pods(driver.Namespace).GetLogs(driver.Name,
			&corev1.PodLogOptions{Container: "driver", SinceTime: &since}).DoRaw(ctx)
		if err != nil {
			return false, nil
		}
		log = string(raw)
		for _, line := range strings.Split(log, "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no driver log line with %q: %v\n%s", parts, err, tail(log, 4096))
	}
}

// waitEvent waits for a Warning Event of the reason on the named object
// whose message mentions want.
func waitEvent(ctx context.Context, t *testing.T, ns, name, reason, want string) {
	t.Helper()
	var seen []string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := bed.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, nil
		}
		seen = seen[:0]
		for _, e := range l.Items {
			seen = append(seen, e.Reason+": "+e.Message)
			if e.Type == corev1.EventTypeWarning && e.Reason == reason && strings.Contains(e.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s Event on %s/%s mentioning %q; events: %q", reason, ns, name, want, seen)
	}
}
