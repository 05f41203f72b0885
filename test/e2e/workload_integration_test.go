//go:build integration

package e2e_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// mountPath is where workloads mount their SVID, as the reference's docs do.
const mountPath = "/var/run/secrets/spiffe.io"

// workloadNamespace makes a namespace with a ServiceAccount "app" bound to the
// shipped svid-csi-workload ClusterRole, as docs/deploy.md tells users to.
func workloadNamespace(ctx context.Context, t testing.TB, prefix string) string {
	t.Helper()
	ns, err := bed.CreateNamespace(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.CreateServiceAccount(ctx, ns, "app"); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: testbed.WorkloadRole, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: testbed.WorkloadRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "app", Namespace: ns}},
	}
	if _, err := bed.Kube.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// svidPodSpec is a pod that sleeps with an SVID volume at mountPath.
func svidPodSpec(sa string, attrs map[string]string, sc *corev1.PodSecurityContext) corev1.PodSpec {
	readOnly := true
	grace := int64(1)
	return corev1.PodSpec{
		ServiceAccountName: sa,
		// The node's CNI is loopback only (docs/testbed.md).
		HostNetwork:                   true,
		TerminationGracePeriodSeconds: &grace,
		SecurityContext:               sc,
		Containers: []corev1.Container{{
			Name:            "app",
			Image:           bed.Node.Images.Tools,
			ImagePullPolicy: corev1.PullNever,
			Command:         []string{"/bin/sleep", "86400"},
			VolumeMounts:    []corev1.VolumeMount{{Name: "spiffe", MountPath: mountPath, ReadOnly: true}},
		}},
		Volumes: []corev1.Volume{{Name: "spiffe", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver: spiffe.DefaultDriverName, ReadOnly: &readOnly, VolumeAttributes: attrs,
		}}}},
	}
}

// createPod creates a pod of spec and waits until it runs.
func createPod(ctx context.Context, t testing.TB, ns, name string, spec corev1.PodSpec) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	if _, err := bed.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return waitRunning(ctx, t, ns, name)
}

// waitRunning waits until a pod is Ready, and fails with its events if it
// never is.
func waitRunning(ctx context.Context, t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s never ready: %v; phase %s\nevents:\n%s", ns, name, err, phase(pod), podEvents(ctx, ns, name))
	}
	return pod
}

func phase(p *corev1.Pod) corev1.PodPhase {
	if p == nil {
		return "(none)"
	}
	return p.Status.Phase
}

// podEvents is what `kubectl describe pod` lists under Events.
func podEvents(ctx context.Context, ns, name string) string {
	list, err := bed.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Pod,involvedObject.name=" + name})
	if err != nil {
		return fmt.Sprintf("(list events: %v)", err)
	}
	var b strings.Builder
	for _, e := range list.Items {
		fmt.Fprintf(&b, "  %s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

// deploymentPods creates a Deployment of replicas SVID pods and returns its
// pods once all are ready.
func deploymentPods(ctx context.Context, t testing.TB, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       svidPodSpec("app", nil, nil),
			},
		},
	}
	if _, err := bed.Kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := bed.Kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || d.Status.ReadyReplicas != replicas || d.Status.Replicas != replicas {
			return false, nil
		}
		list, err := bed.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		return len(pods) == int(replicas), nil
	})
	if err != nil {
		list, _ := bed.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		var why strings.Builder
		for _, p := range list.Items {
			fmt.Fprintf(&why, "%s: %s\n%s", p.Name, p.Status.Phase, podEvents(ctx, ns, p.Name))
		}
		t.Fatalf("Deployment %s/%s: %d replicas never ready: %v\n%s", ns, name, replicas, err, why.String())
	}
	return pods
}

// svid is what a container reads from its volume.
type svid struct {
	leaf    *x509.Certificate
	certPEM string
	keyPEM  string
	caPEM   string
}

// readSVID reads the volume's files from inside the pod's container, and
// checks them as a workload would: the chain verifies to the example CA and
// names exactly the pod's SPIFFE ID; the key is the certificate's; ca.crt is
// the trust bundle.
func readSVID(ctx context.Context, t testing.TB, pod *corev1.Pod) svid {
	t.Helper()
	var s svid
	for _, f := range []struct {
		name string
		dst  *string
	}{{"tls.crt", &s.certPEM}, {"tls.key", &s.keyPEM}, {"ca.crt", &s.caPEM}} {
		out, err := bed.Exec(ctx, pod.Namespace, pod.Name, "app", "/bin/cat", mountPath+"/"+f.name)
		if err != nil {
			t.Fatalf("read %s in %s/%s: %v", f.name, pod.Namespace, pod.Name, err)
		}
		*f.dst = out
	}
	id := "spiffe://cluster.local/ns/" + pod.Namespace + "/sa/" + pod.Spec.ServiceAccountName
	leaf, err := testbed.VerifySVIDTo(product.CAPEM, []byte(s.certPEM), id)
	if err != nil {
		t.Fatalf("%s/%s: tls.crt: %v", pod.Namespace, pod.Name, err)
	}
	s.leaf = leaf
	block, _ := pem.Decode([]byte(s.keyPEM))
	if block == nil {
		t.Fatalf("%s/%s: tls.key is not PEM", pod.Namespace, pod.Name)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if key, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
			t.Fatalf("%s/%s: tls.key: %v", pod.Namespace, pod.Name, err)
		}
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || !ec.PublicKey.Equal(leaf.PublicKey) {
		t.Fatalf("%s/%s: tls.key is not the key of tls.crt", pod.Namespace, pod.Name)
	}
	if s.caPEM != string(product.CAPEM) {
		t.Fatalf("%s/%s: ca.crt is not the example CA:\n%s", pod.Namespace, pod.Name, s.caPEM)
	}
	return s
}
