//go:build integration

package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// The DaemonSet's pod runs the image built from bin/, passes its startup and
// readiness probes as the kubelet runs them (Ready), and the kubelet registered the driver (no registrar sidecar):
// CSINode lists it with the node's name as its node ID.
func TestDriverRegisteredWithKubelet(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	pods := &corev1.PodList{}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := bed.Kube.CoreV1().Pods(testbed.CertManagerNamespace).List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=svid-csi,app.kubernetes.io/component=driver"})
		if err != nil {
			return false, nil
		}
		pods = list
		return len(pods.Items) == 1 && ready(&pods.Items[0]), nil
	})
	if err != nil {
		t.Fatalf("want one ready driver pod (one node): %v (%d pods)", err, len(pods.Items))
	}
	p := pods.Items[0]
	if p.Status.Phase != corev1.PodRunning || p.Spec.NodeName != testbed.NodeName {
		t.Errorf("driver pod %s: %s on %q, want Running on %s", p.Name, p.Status.Phase, p.Spec.NodeName, testbed.NodeName)
	}
	if got := p.Status.ContainerStatuses[0].Image; got != bed.Node.Images.Driver {
		t.Errorf("driver pod runs image %s, want the bed's %s", got, bed.Node.Images.Driver)
	}
	csiNode, err := bed.Kube.StorageV1().CSINodes().Get(ctx, testbed.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, d := range csiNode.Spec.Drivers {
		if d.Name == spiffe.DefaultDriverName {
			found = true
			if d.NodeID != testbed.NodeName {
				t.Errorf("CSINode driver %s has node ID %q, want %q", d.Name, d.NodeID, testbed.NodeName)
			}
		}
	}
	if !found {
		t.Errorf("CSINode %s lists no %s: %+v", testbed.NodeName, spiffe.DefaultDriverName, csiNode.Spec.Drivers)
	}
}

// The approver's pod is ready and holds the Lease its flags name.
func TestApproverHoldsLease(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	holder, err := bed.WaitLeaseHeld(ctx, testbed.CertManagerNamespace, testbed.ApproverName)
	if err != nil {
		t.Fatal(err)
	}
	// It leads as soon as it starts; its readiness probe (every 5 s) follows.
	pods := &corev1.PodList{}
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := bed.Kube.CoreV1().Pods(testbed.CertManagerNamespace).List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=svid-csi,app.kubernetes.io/component=approver"})
		if err != nil {
			return false, nil
		}
		pods = list
		return len(pods.Items) == 1 && ready(&pods.Items[0]), nil
	})
	if err != nil {
		t.Fatalf("want one ready approver pod: %v (%d pods)", err, len(pods.Items))
	}
	if got := pods.Items[0].Status.ContainerStatuses[0].Image; got != bed.Node.Images.Approver {
		t.Errorf("approver pod runs image %s, want the bed's %s", got, bed.Node.Images.Approver)
	}
	t.Logf("Lease %s held by %s", testbed.ApproverName, holder)
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Three replicas of a Deployment each read their own SVID from inside their
// container: the pod's SPIFFE ID, a chain to the example CA, the matching
// key, and each pod its own key. Their ServiceAccount has no RBAC at all
// (node-bound): every request was created by the driver's ServiceAccount.
func TestDeploymentOneSVIDPerPod(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-deploy")
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:               spiffe.ServiceAccountUsername(ns, testbed.WorkloadServiceAccount),
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: "create", Group: "cert-manager.io", Resource: "certificaterequests"},
	}}
	if got, err := bed.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{}); err != nil || got.Status.Allowed {
		t.Fatalf("the workload's ServiceAccount may create CertificateRequests (%v, %v): the test would not show it needs no RBAC", got.Status, err)
	}
	pods := deploymentPods(ctx, t, ns, "app", 3)
	serials := map[string]string{}
	keys := map[string]string{}
	for i := range pods {
		s := readSVID(ctx, t, &pods[i])
		if other, dup := serials[s.leaf.SerialNumber.String()]; dup {
			t.Errorf("pods %s and %s share a certificate", other, pods[i].Name)
		}
		if other, dup := keys[s.keyPEM]; dup {
			t.Errorf("pods %s and %s share a key", other, pods[i].Name)
		}
		serials[s.leaf.SerialNumber.String()], keys[s.keyPEM] = pods[i].Name, pods[i].Name
	}
	// The driver deletes each request once its files are written.
	noRequestsLeft(ctx, t, ns)
	evs, err := bed.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	var creators []string
	for _, ev := range evs {
		if ev.ObjectRef.Namespace == ns && ev.ObjectRef.Resource == "certificaterequests" && ev.ObjectRef.Subresource == "" && ev.Verb == "create" && ev.ResponseStatus.Code == 201 {
			creators = append(creators, ev.User.Username)
		}
	}
	driverUser := spiffe.ServiceAccountUsername(testbed.CertManagerNamespace, "svid-csi-driver")
	if len(creators) < len(pods) || slices.ContainsFunc(creators, func(u string) bool { return u != driverUser }) {
		t.Errorf("requests created by %v, want one per pod, all by %s", creators, driverUser)
	}
}

// fs-group both ways: the pod's fsGroup (volume_mount_group) and the volume
// attribute give the key to that group; a container of another group cannot
// read it.
func TestFSGroup(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-fsgroup")
	id := func(v int64) *int64 { return &v }
	cases := []struct {
		name     string
		attrs    map[string]string
		sc       *corev1.PodSecurityContext
		wantGID  string
		readable bool
	}{
		{"pod-fsgroup", nil, &corev1.PodSecurityContext{RunAsUser: id(1000), RunAsGroup: id(3000), FSGroup: id(2000)}, "2000", true},
		{"attribute", map[string]string{spiffe.FSGroupAttribute: "3000"}, &corev1.PodSecurityContext{RunAsUser: id(1000), RunAsGroup: id(3000)}, "3000", true},
		{"other-group", map[string]string{spiffe.FSGroupAttribute: "3000"}, &corev1.PodSecurityContext{RunAsUser: id(1001), RunAsGroup: id(4000)}, "3000", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pod := createPod(ctx, t, ns, c.name, svidPodSpec(c.attrs, c.sc))
			out, err := bed.Exec(ctx, ns, pod.Name, "app", "/bin/stat", "-L", "-c", "%g %a", mountPath+"/tls.key")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(out); got != c.wantGID+" 440" {
				t.Errorf("tls.key group and mode %q, want %q", got, c.wantGID+" 440")
			}
			_, err = bed.Exec(ctx, ns, pod.Name, "app", "/bin/cat", mountPath+"/tls.key")
			switch {
			case c.readable && err != nil:
				t.Errorf("cannot read tls.key: %v", err)
			case !c.readable && err == nil:
				t.Error("a container of another group read tls.key")
			case !c.readable && !strings.Contains(err.Error(), "Permission denied"):
				t.Errorf("reading tls.key failed, but not for permission: %v", err)
			}
			if c.readable {
				readSVID(ctx, t, pod)
			}
		})
	}
}

// Deleting a pod leaves no mount, no pod directory, no driver state and no
// CertificateRequest behind.
func TestPodDeletionLeavesNothing(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-delete")
	before := stateFiles(t)
	pod := createPod(ctx, t, ns, "app", svidPodSpec(nil, nil))
	readSVID(ctx, t, pod)
	podDir := filepath.Join(bed.Node.KubeletRootDir, "pods", string(pod.UID))
	target := filepath.Join(podDir, "volumes", "kubernetes.io~csi", "spiffe", "mount")
	if !slices.Contains(mountsUnder(t, podDir), target) {
		t.Fatalf("the SVID volume is not mounted at %s while the pod runs: %v", target, mountsUnder(t, podDir))
	}
	if during := stateFiles(t); len(during) != len(before)+1 {
		t.Fatalf("driver state files: %d before the pod, %d while it runs, want one more", len(before), len(during))
	}
	if err := bed.Kube.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return false, nil
		}
		// The kubelet removes the pod's directory once its volumes are
		// torn down.
		_, statErr := os.Stat(podDir)
		return len(mountsUnder(t, podDir)) == 0 && os.IsNotExist(statErr), nil
	})
	if err != nil {
		t.Fatalf("after deleting the pod: %v; mounts left %v", err, mountsUnder(t, podDir))
	}
	if after := stateFiles(t); len(after) != len(before) {
		t.Errorf("driver state files: %d before the pod, %d after it, want the same", len(before), len(after))
	}
	noRequestsLeft(ctx, t, ns)
}

// A kubelet restart does not multiply mounts (spiffe-csi once turned 13 pods
// into 49,153): after it, and over three republish periods, each SVID pod
// has exactly the mounts it had, and still reads a valid SVID.
func TestKubeletRestartKeepsMounts(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	ns := workloadNamespace(ctx, t, "e2e-kubelet")
	pods := deploymentPods(ctx, t, ns, "app", 2)
	podsDir := filepath.Join(bed.Node.KubeletRootDir, "pods")
	before := len(mountsUnder(t, podsDir))
	if err := bed.Node.RestartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	// The kubelet's sync period is 10 s (docs/testbed.md): every volume is
	// republished at least twice in 30 s.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if n := len(mountsUnder(t, podsDir)); n > before {
			t.Fatalf("%d mounts under %s after the kubelet restart, %d before", n, podsDir, before)
		}
		time.Sleep(time.Second)
	}
	if n := len(mountsUnder(t, podsDir)); n != before {
		t.Errorf("%d mounts under %s after the kubelet restart, %d before", n, podsDir, before)
	}
	for i := range pods {
		readSVID(ctx, t, &pods[i])
	}
}

func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	points, err := testbed.MountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	return points
}

// stateFiles lists the driver's volume state files on the node's host.
func stateFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(bed.Node.DataRoot(), "volumes", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// noRequestsLeft fails unless ns soon has no CertificateRequest: the driver
// deletes each one once it is decided and its files written (a renewal may
// have one in flight for a moment).
func noRequestsLeft(ctx context.Context, t testing.TB, ns string) {
	t.Helper()
	var left int
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		crs, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		left = len(crs.Items)
		return left == 0, nil
	})
	if err != nil {
		t.Errorf("%d CertificateRequests left in %s, want 0", left, ns)
	}
}
