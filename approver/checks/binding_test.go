package checks

import (
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func nodeBoundRequest(t *testing.T) *cmapi.CertificateRequest {
	t.Helper()
	cr := request(validP256())
	nodeBound(cr)
	if d := Evaluate(cr, testPolicy); d != nil {
		t.Fatalf("Evaluate(node-bound request) = %s %q, want approval", d.Check, d.Message)
	}
	return cr
}

func TestNodeBinding(t *testing.T) {
	t.Parallel()
	b, ok := NodeBinding(nodeBoundRequest(t), testPolicy)
	want := Binding{Namespace: testNS, PodName: testPod, PodUID: testPodUID, ServiceAccount: testSA, Node: testNode}
	if !ok || b != want {
		t.Fatalf("NodeBinding() = %+v, %v; want %+v, true", b, ok, want)
	}
	if b, ok := NodeBinding(request(validP256()), testPolicy); ok {
		t.Errorf("NodeBinding(pod-token request) = %+v, want none", b)
	}
	p := testPolicy
	p.Modes.NodeBound = false
	if b, ok := NodeBinding(nodeBoundRequest(t), p); ok {
		t.Errorf("NodeBinding() with node-bound not accepted = %+v, want none", b)
	}
}

func testPodObject() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: testPod, UID: testPodUID},
		Spec: corev1.PodSpec{
			NodeName:           testNode,
			ServiceAccountName: testSA,
			Volumes: []corev1.Volume{
				{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "other-csi", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "secrets-store.csi.k8s.io"}}},
				{Name: "spiffe", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: testCSIName}}},
			},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func TestEvaluatePod(t *testing.T) {
	t.Parallel()
	b, _ := NodeBinding(nodeBoundRequest(t), testPolicy)
	deleted := metav1.NewTime(time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC))
	const pod = "pod team-a/web-0 "
	for _, tc := range []struct {
		name    string
		mutate  func(*corev1.Pod)
		wantMsg string // empty: approve
	}{
		{name: "running on the driver's node", mutate: func(*corev1.Pod) {}},
		{name: "pending (containers not started yet)", mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }},
		{name: "a pod of the same name, recreated (another UID)", mutate: func(p *corev1.Pod) { p.UID = "new-uid" },
			wantMsg: pod + `metadata.uid: exp="0b5e-pod" got="new-uid"`},
		{name: "on another node", mutate: func(p *corev1.Pod) { p.Spec.NodeName = "node-b" },
			wantMsg: pod + `spec.nodeName: exp="node-a" got="node-b"`},
		{name: "not scheduled", mutate: func(p *corev1.Pod) { p.Spec.NodeName = "" },
			wantMsg: pod + `spec.nodeName: exp="node-a" got=""`},
		{name: "terminating", mutate: func(p *corev1.Pod) { p.DeletionTimestamp = &deleted },
			wantMsg: pod + `metadata.deletionTimestamp: exp="unset" got="2026-12-02T07:00:00Z"`},
		{name: "finished", mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
			wantMsg: pod + `status.phase: exp="Pending or Running" got="Succeeded"`},
		{name: "failed", mutate: func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed },
			wantMsg: pod + `status.phase: exp="Pending or Running" got="Failed"`},
		{name: "runs as another ServiceAccount", mutate: func(p *corev1.Pod) { p.Spec.ServiceAccountName = "db" },
			wantMsg: pod + `spec.serviceAccountName: exp="web" got="db"`},
		{name: "mounts no volume of the driver", mutate: func(p *corev1.Pod) { p.Spec.Volumes = p.Spec.Volumes[:2] },
			wantMsg: pod + `spec.volumes: exp="a CSI volume of spiffe.csi.cert-manager.io" got="none"`},
		{name: "another object than asked for", mutate: func(p *corev1.Pod) { p.Name = "web-1" },
			wantMsg: `pod: exp="team-a/web-0" got="team-a/web-1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPodObject()
			tc.mutate(p)
			d := EvaluatePod(b, p, testCSIName)
			switch {
			case tc.wantMsg == "" && d != nil:
				t.Fatalf("EvaluatePod() = %q, want approval", d.Message)
			case tc.wantMsg != "" && (d == nil || d.Check != CheckPod || d.Message != tc.wantMsg):
				t.Fatalf("EvaluatePod() = %+v, want %s %q", d, CheckPod, tc.wantMsg)
			}
		})
	}
	if d := EvaluatePod(b, testPodObject(), "other.csi.example"); d == nil {
		t.Error("EvaluatePod() approved a pod mounting only other drivers' volumes")
	}
	if d := PodNotFound(b); d.Check != CheckPod || d.Message != `pod team-a/web-0: exp="exists" got="not found"` {
		t.Errorf("PodNotFound() = %+v", d)
	}
}
