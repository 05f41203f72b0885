//go:build integration

package e2e_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

const mountPath = testbed.SVIDMountPath

func workloadNamespace(ctx context.Context, t testing.TB, prefix string) string {
	t.Helper()
	ns, err := bed.CreateWorkloadNamespace(ctx, prefix, true)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func svidPodSpec(attrs map[string]string, sc *corev1.PodSecurityContext) corev1.PodSpec {
	return bed.Node.SVIDPodSpec(attrs, sc)
}

// createPod creates a pod of spec and waits until it is ready.
func createPod(ctx context.Context, t testing.TB, ns, name string, spec corev1.PodSpec) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	if _, err := bed.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := bed.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		got = p
		return err == nil && ready(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s never ready: %v\nevents:\n%s", ns, name, err, bed.PodEvents(ctx, ns, name))
	}
	return got
}

func deploymentPods(ctx context.Context, t testing.TB, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	pods, err := bed.CreateDeployment(ctx, ns, name, replicas, svidPodSpec(nil, nil))
	if err != nil {
		t.Fatal(err)
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
