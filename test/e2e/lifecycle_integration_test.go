//go:build integration

package e2e_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// Short SVIDs are renewed with a new key, as seen from inside the
// containers, while the driver's DaemonSet is rolled (kubectl rollout
// restart) and its container is then killed with SIGKILL mid-life.
func TestRenewalAcrossDriverRestarts(t *testing.T) {
	ctx := ctxFor(t, 6*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-renew")
	pods := deploymentPods(ctx, t, ns, "app", 2)
	first := map[string]svid{}
	for i := range pods {
		first[pods[i].Name] = readSVID(ctx, t, &pods[i])
	}

	// kubectl rollout restart daemonset/svid-csi-driver
	updateDaemonSet(ctx, t, func(ds *appsv1.DaemonSet) {
		if ds.Spec.Template.Annotations == nil {
			ds.Spec.Template.Annotations = map[string]string{}
		}
		ds.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] = time.Now().Format(time.RFC3339)
	})
	if err := bed.WaitDriverRegistered(ctx); err != nil {
		t.Fatal(err)
	}

	// SIGKILL of the driver's container; the kubelet starts it again.
	driver := driverPod(ctx, t)
	restarts := driver.Status.ContainerStatuses[0].RestartCount
	if err := bed.Node.KillContainer(ctx, driver.Status.ContainerStatuses[0].ContainerID); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := bed.Kube.CoreV1().Pods(driver.Namespace).Get(ctx, driver.Name, metav1.GetOptions{})
		return err == nil && p.Status.ContainerStatuses[0].RestartCount > restarts && ready(p), nil
	})
	if err != nil {
		t.Fatalf("the driver's container never came back after SIGKILL: %v", err)
	}

	// Every pod gets a new certificate and key, issued after the kill (by the
	// restarted driver), before the first expires.
	for i := range pods {
		pod := &pods[i]
		old := first[pod.Name]
		deadline := old.leaf.NotAfter
		err := wait.PollUntilContextTimeout(ctx, 2*time.Second, time.Until(deadline)+5*time.Second, true, func(ctx context.Context) (bool, error) {
			out, err := bed.Exec(ctx, ns, pod.Name, "app", "/bin/cat", mountPath+"/tls.crt")
			if err != nil {
				return false, nil
			}
			leaf, err := parseLeaf(out)
			return err == nil && leaf.NotBefore.After(killedAt.Add(-2*time.Second)), nil
		})
		if err != nil {
			t.Fatalf("%s: SVID never renewed after the SIGKILL before it expired at %s: %v", pod.Name, deadline.Format(time.RFC3339), err)
		}
		renewed := readSVID(ctx, t, pod)
		if renewed.keyPEM == old.keyPEM {
			t.Errorf("%s: renewed SVID kept the old key", pod.Name)
		}
		if !renewed.leaf.NotAfter.After(old.leaf.NotAfter) {
			t.Errorf("%s: renewed SVID expires %s, not after the old %s", pod.Name, renewed.leaf.NotAfter, old.leaf.NotAfter)
		}
	}
}

// A request the approver denies fails the pod's mount with the approver's
// message, visible in the pod's events (`kubectl describe pod`), and leaves
// no CertificateRequest behind. The denial is provoked as a user would by
// mistake: a driver whose duration differs from the approver's.
func TestDeniedRequestInPodEvents(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-denied")
	// Restored whatever happens, or every later test would fail.
	t.Cleanup(func() { setDriverDuration(context.Background(), t, "") })
	// A duration no test configures: the approver accepts durations active
	// in the last minutes (TestConfigChangeOnTheNode uses 3m).
	setDriverDuration(ctx, t, "7m")

	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns}, Spec: svidPodSpec(nil, nil)}
	if _, err := bed.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`spec.duration: exp=%q got="7m0s"`, testbed.ExampleCertificateDuration.String())
	var events string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		events = bed.PodEvents(ctx, ns, "app")
		return strings.Contains(events, "FailedMount") && strings.Contains(events, want), nil
	})
	if err != nil {
		t.Fatalf("no FailedMount event with %s: %v\nevents:\n%s", want, err, events)
	}
	p, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending {
		t.Errorf("pod with a denied SVID is %s, want Pending", p.Status.Phase)
	}
	noRequestsLeft(ctx, t, ns)
	// A pod whose volume never mounted still goes away when deleted.
	if err := bed.Kube.CoreV1().Pods(ns).Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitNoPods(ctx, ns); err != nil {
		t.Errorf("%v\nevents:\n%s", err, bed.PodEvents(ctx, ns, "app"))
	}
}

// setDriverDuration gives the driver a literal --certificate-request-duration
// and no --config-configmap, so that it no longer follows svid-csi-config
// (empty: back to the shipped env and args), and waits for the rollout.
func setDriverDuration(ctx context.Context, t *testing.T, d string) {
	t.Helper()
	const env = "CERTIFICATE_REQUEST_DURATION"
	var shipped *corev1.EnvVarSource
	var shippedArgs []string
	for _, o := range product.Objects {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ds); err != nil {
			t.Fatal(err)
		}
		for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
			if e.Name == env {
				shipped = e.ValueFrom
			}
		}
		shippedArgs = ds.Spec.Template.Spec.Containers[0].Args
	}
	if shipped == nil {
		t.Fatalf("the rendered DaemonSet has no env %s from a ConfigMap", env)
	}
	updateDaemonSet(ctx, t, func(ds *appsv1.DaemonSet) {
		c := &ds.Spec.Template.Spec.Containers[0]
		c.Args = slices.Clone(shippedArgs)
		if d != "" {
			c.Args = slices.DeleteFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--config-configmap=") })
		}
		for i := range c.Env {
			if c.Env[i].Name == env {
				if d == "" {
					c.Env[i] = corev1.EnvVar{Name: env, ValueFrom: shipped}
				} else {
					c.Env[i] = corev1.EnvVar{Name: env, Value: d}
				}
			}
		}
	})
	if err := bed.WaitDriverRegistered(ctx); err != nil {
		t.Fatal(err)
	}
}

func updateDaemonSet(ctx context.Context, t *testing.T, change func(*appsv1.DaemonSet)) {
	t.Helper()
	dss := bed.Kube.AppsV1().DaemonSets(testbed.CertManagerNamespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ds, err := dss.Get(ctx, testbed.DriverDaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(ds)
		_, err = dss.Update(ctx, ds, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("update DaemonSet %s: %v", testbed.DriverDaemonSet, err)
	}
}

func driverPod(ctx context.Context, t *testing.T) *corev1.Pod {
	t.Helper()
	pods, err := bed.Kube.CoreV1().Pods(testbed.CertManagerNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=svid-csi,app.kubernetes.io/component=driver"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && ready(p) {
			return p
		}
	}
	t.Fatalf("no ready driver pod among %d", len(pods.Items))
	return nil
}

func parseLeaf(certPEM string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		return nil, fmt.Errorf("not PEM")
	}
	return x509.ParseCertificate(block.Bytes)
}

// Node-bound, as overlays/example ships it: the real kubelet, following the
// shipped CSIDriver (no tokenRequests), hands the driver no pod's token at
// all, in secrets or volume_context; and the driver's log, even at -v=5
// where it prints every request, holds no token (its own included).
func TestNoPodTokenReachesTheDriver(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-notoken")
	t.Cleanup(func() { setDriverVerbosity(context.Background(), t, "1") })
	setDriverVerbosity(ctx, t, "5")
	pod := createPod(ctx, t, ns, "app", svidPodSpec(nil, nil))
	readSVID(ctx, t, pod)
	driver := driverPod(ctx, t)
	raw, err := bed.Kube.CoreV1().Pods(driver.Namespace).GetLogs(driver.Name, &corev1.PodLogOptions{Container: "driver"}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var request string
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "CSI request") && strings.Contains(line, "NodePublishVolume") && strings.Contains(line, string(pod.UID)) {
			request = line
			break
		}
	}
	if request == "" {
		t.Fatalf("no NodePublishVolume request for pod %s in the driver's log at -v=5:\n%s", pod.UID, tail(string(raw), 4096))
	}
	if tokens := "csi.storage.k8s.io/serviceAccount.tokens"; strings.Contains(request, tokens) {
		t.Errorf("the kubelet sent the pod's token to a node-bound driver:\n%s", request)
	}
	// A JWT's header starts with base64 of `{"`.
	if strings.Contains(string(raw), "eyJ") {
		t.Error("the driver's log holds something that looks like a token (eyJ...)")
	}
}

// setDriverVerbosity sets the driver's -v and waits for the rollout.
func setDriverVerbosity(ctx context.Context, t *testing.T, v string) {
	t.Helper()
	updateDaemonSet(ctx, t, func(ds *appsv1.DaemonSet) {
		args := ds.Spec.Template.Spec.Containers[0].Args
		for i, a := range args {
			if strings.HasPrefix(a, "--v=") {
				args[i] = "--v=" + v
			}
		}
	})
	if err := bed.WaitDriverRegistered(ctx); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
