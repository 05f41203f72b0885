package testbed

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// SVIDMountPath is where the bed's workloads mount their SVID volume.
const SVIDMountPath = "/var/run/secrets/spiffe.io"

// WorkloadServiceAccount is the ServiceAccount of the bed's workloads.
const WorkloadServiceAccount = "app"

// CreateWorkloadNamespace makes a namespace with the ServiceAccount "app",
// with no RBAC at all (the example overlay is node-bound: workloads need
// none), and returns its name: name itself, or with generate a name generated
// from it.
func (b *Bed) CreateWorkloadNamespace(ctx context.Context, name string, generate bool) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if generate {
		ns.ObjectMeta = metav1.ObjectMeta{GenerateName: name + "-"}
	}
	created, err := b.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	if err := b.CreateServiceAccount(ctx, created.Name, WorkloadServiceAccount); err != nil {
		return "", err
	}
	return created.Name, nil
}

// SVIDPodSpec is a pod of the tools image that sleeps, with an SVID volume
// (volume attributes attrs) at SVIDMountPath.
func (n *Node) SVIDPodSpec(attrs map[string]string, sc *corev1.PodSecurityContext) corev1.PodSpec {
	spec := n.PodSpec(sc)
	readOnly := true
	spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "spiffe", MountPath: SVIDMountPath, ReadOnly: true}}
	spec.Volumes = []corev1.Volume{{Name: "spiffe", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
		Driver: spiffe.DefaultDriverName, ReadOnly: &readOnly, VolumeAttributes: attrs,
	}}}}
	return spec
}

// PodSpec is the same pod without the SVID volume.
func (n *Node) PodSpec(sc *corev1.PodSecurityContext) corev1.PodSpec {
	grace := int64(1)
	return corev1.PodSpec{
		ServiceAccountName: WorkloadServiceAccount,
		// The node's CNI is loopback only (docs/testbed.md).
		HostNetwork:                   true,
		TerminationGracePeriodSeconds: &grace,
		SecurityContext:               sc,
		Containers: []corev1.Container{{
			Name:            "app",
			Image:           n.Images.Tools,
			ImagePullPolicy: corev1.PullNever,
			Command:         []string{"/bin/sleep", "86400"},
		}},
	}
}

// CreateDeployment creates a Deployment of replicas pods of spec and returns
// its pods once all are ready.
func (b *Bed) CreateDeployment(ctx context.Context, ns, name string, replicas int32, spec corev1.PodSpec) ([]corev1.Pod, error) {
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := b.Kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create Deployment %s/%s: %w", ns, name, err)
	}
	var pods []corev1.Pod
	err := pollUntil(ctx, 3*time.Minute, fmt.Sprintf("Deployment %s/%s: %d replicas ready", ns, name, replicas), func(ctx context.Context) error {
		d, err := b.Kube.AppsV1().Deployments(ns).Get(ctx, name, getOpts)
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != replicas || d.Status.Replicas != replicas {
			return fmt.Errorf("%d of %d ready: %w", d.Status.ReadyReplicas, replicas, errNotReady)
		}
		list, err := b.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		if pods = list.Items; len(pods) != int(replicas) {
			return fmt.Errorf("%d pods: %w", len(pods), errNotReady)
		}
		return nil
	})
	if err != nil {
		list, _ := b.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		var why strings.Builder
		for _, p := range list.Items {
			fmt.Fprintf(&why, "%s: %s\n%s", p.Name, p.Status.Phase, b.PodEvents(ctx, ns, p.Name))
		}
		return nil, fmt.Errorf("%w\n%s", err, why.String())
	}
	return pods, nil
}

// PodEvents is what `kubectl describe pod` lists under Events.
func (b *Bed) PodEvents(ctx context.Context, ns, name string) string {
	list, err := b.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Pod,involvedObject.name=" + name})
	if err != nil {
		return fmt.Sprintf("(list events: %v)", err)
	}
	var out strings.Builder
	for _, e := range list.Items {
		fmt.Fprintf(&out, "  %s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return out.String()
}
