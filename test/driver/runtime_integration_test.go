//go:build integration

package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// The ClusterIssuers a runtime switch goes to; the approver's signers rule
// lists them (setup), as the documented overlay patch would.
const (
	secondIssuer  = "runtime-second-ca"
	stalledIssuer = "runtime-stalled-ca" // its CA Secret does not exist: it never signs
)

var runtimeIssuers = []string{secondIssuer, stalledIssuer}

// putConfigMap plays the operator on a ConfigMap in cert-manager's
// namespace (the runtime issuer's, or a svid-csi-config): it creates or
// updates it with data, or deletes it when data is nil.
func putConfigMap(t *testing.T, ctx context.Context, name string, data map[string]string) {
	t.Helper()
	cms := bed.Kube.CoreV1().ConfigMaps(testbed.CertManagerNamespace)
	if data == nil {
		if err := cms.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testbed.CertManagerNamespace}, Data: data}
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

func clusterIssuer(name string) map[string]string {
	return map[string]string{"issuer-name": name, "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"}
}

// publishChainsTo publishes a new pod and checks its certificate chains to
// caPEM, then unpublishes it.
func (n *node) publishChainsTo(t *testing.T, ctx context.Context, ns, name string, caPEM []byte) {
	t.Helper()
	v := n.pod(t, ns, name, nil, nil)
	if err := n.kubelet.Publish(ctx, v); err != nil {
		t.Fatalf("publish %s: %v", name, err)
	}
	chain, err := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testbed.VerifySVIDTo(caPEM, chain, "spiffe://cluster.local/ns/"+ns+"/sa/app"); err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	if err := n.kubelet.Unpublish(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// The reference's runtime issuer scenarios, against the real approver and
// cert-manager: no ConfigMap means the flags' issuer; a ConfigMap naming a
// second CA makes new pods' certificates chain to it; updating it switches
// again; an invalid one changes nothing (and the approver records an Event
// on it); deleting it reverts to the flags.
func TestRuntimeIssuer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	secondCA := ensureSecondIssuer(t, ctx)
	const cm = "runtime-issuer"
	t.Cleanup(func() { putConfigMap(t, context.Background(), cm, nil) })
	n := startNode(t, "runtime", nodeOpts{runtimeConfigMap: cm})
	ns := newTenant(t, "runtime")

	n.publishChainsTo(t, ctx, ns, "flags", bed.IssuerCAPEM)

	// The driver's watch is waited for, the approver's is not: a request for
	// the new issuer that reaches the approver first is still approved.
	switchTo := func(data map[string]string, want string) {
		t.Helper()
		at := n.logSize()
		putConfigMap(t, ctx, cm, data)
		n.waitLogLine(at, "Active settings changed", want)
	}
	switchTo(clusterIssuer(secondIssuer), secondIssuer)
	n.publishChainsTo(t, ctx, ns, "second", secondCA)

	switchTo(clusterIssuer(testbed.ClusterIssuerName), testbed.ClusterIssuerName)
	n.publishChainsTo(t, ctx, ns, "updated", bed.IssuerCAPEM)

	switchTo(clusterIssuer(secondIssuer), secondIssuer)
	at := n.logSize()
	invalid := clusterIssuer(secondIssuer)
	delete(invalid, "issuer-group")
	putConfigMap(t, ctx, cm, invalid)
	n.waitLogLine(at, "ConfigMap is invalid", "issuer-group")
	n.publishChainsTo(t, ctx, ns, "invalid", secondCA) // the last valid issuer stays
	waitConfigMapEvent(t, ctx, cm, settings.EventInvalid, "issuer-group")

	switchTo(nil, testbed.ClusterIssuerName)
	n.publishChainsTo(t, ctx, ns, "deleted", bed.IssuerCAPEM)
	noDenials(t, ctx, ns)
}

// A request waiting on an issuer that never signs is replaced by one for
// the new issuer when the ConfigMap switches: the pod's publish succeeds,
// nothing is denied, and no request is left.
func TestRuntimeIssuerSwitchRetriesInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	secondCA := ensureSecondIssuer(t, ctx)
	stalled := &cmapi.ClusterIssuer{
		ObjectMeta: metav1.ObjectMeta{Name: stalledIssuer},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: "no-such-secret"}}},
	}
	if _, err := bed.CertManager.CertmanagerV1().ClusterIssuers().Create(ctx, stalled, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	const cm = "runtime-issuer-inflight"
	t.Cleanup(func() { putConfigMap(t, context.Background(), cm, nil) })
	putConfigMap(t, ctx, cm, clusterIssuer(stalledIssuer))
	n := startNode(t, "inflight", nodeOpts{runtimeConfigMap: cm})
	ns := newTenant(t, "inflight")

	v := n.pod(t, ns, "web", nil, nil)
	done := make(chan error, 1)
	go func() { done <- n.kubelet.Publish(ctx, v) }()
	// Approved, and waiting on an issuer that cannot sign.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(l.Items) != 1 {
			return false, err
		}
		cr := &l.Items[0]
		c := testbed.Decided(cr)
		return cr.Spec.IssuerRef.Name == stalledIssuer && c != nil && c.Type == cmapi.CertificateRequestConditionApproved, nil
	})
	if err != nil {
		t.Fatalf("no approved request waiting on %s: %v", stalledIssuer, err)
	}
	select {
	case err := <-done:
		t.Fatalf("publish returned before the switch: %v", err)
	default:
	}

	putConfigMap(t, ctx, cm, clusterIssuer(secondIssuer))
	if err := <-done; err != nil {
		t.Fatalf("publish after the switch: %v", err)
	}
	chain, err := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testbed.VerifySVIDTo(secondCA, chain, "spiffe://cluster.local/ns/"+ns+"/sa/app"); err != nil {
		t.Fatal(err)
	}
	waitNoRequests(t, ns)
	noDenials(t, ctx, ns)
	if err := n.kubelet.Unpublish(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// No issuer in flags and no ConfigMap: publish fails with the message that
// says how to configure one.
func TestNoIssuerSaysHowToConfigure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, "noissuer", nodeOpts{runtimeConfigMap: "runtime-issuer-none", noFlagsIssuer: true})
	ns := newTenant(t, "noissuer")
	v := n.pod(t, ns, "web", nil, nil)
	err := n.kubelet.Publish(ctx, v)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), settings.ErrNoIssuer.Error()) {
		t.Fatalf("publish = %v, want FailedPrecondition with %q", err, settings.ErrNoIssuer)
	}
	if requestsIn(t, ns) != 0 {
		t.Fatal("a request was created without an issuer")
	}
	assertNoState(t, n, v.VolumeID)
}

// secondCAPEM is the second CA issuer's root, once it is made.
var secondCAPEM []byte

// ensureSecondIssuer creates the second CA issuer once per bed.
func ensureSecondIssuer(t *testing.T, ctx context.Context) []byte {
	t.Helper()
	if secondCAPEM == nil {
		ca, err := bed.CreateCAClusterIssuer(ctx, secondIssuer)
		if err != nil {
			t.Fatal(err)
		}
		secondCAPEM = ca
	}
	return secondCAPEM
}

// waitConfigMapEvent waits for a Warning Event of the reason on the runtime
// ConfigMap whose message mentions want.
func waitConfigMapEvent(t *testing.T, ctx context.Context, cm, reason, want string) {
	t.Helper()
	var seen []string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := bed.Kube.CoreV1().Events(testbed.CertManagerNamespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + cm})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range l.Items {
			seen = append(seen, e.Reason+": "+e.Message)
			if e.Reason == reason && e.Type == corev1.EventTypeWarning && e.InvolvedObject.Kind == "ConfigMap" && strings.Contains(e.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s Event on ConfigMap %s mentioning %q (events: %q)", reason, cm, want, seen)
	}
}

// noDenials fails if any request in the namespace was denied.
func noDenials(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	l, err := bed.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=Denied"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l.Items {
		t.Errorf("denied: %s %s", e.InvolvedObject.Name, e.Message)
	}
}

// Issuer switches mid-traffic deny nothing: pods are published without a
// pause by several workers while the runtime ConfigMap flips between two CA
// issuers. The driver and the approver watch the ConfigMap separately, so
// either sees a switch first: every publish must still succeed, with a
// certificate from one of the two CAs, and no request may be denied.
func TestIssuerSwitchMidTraffic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	secondCA := ensureSecondIssuer(t, ctx)
	const cm = "runtime-issuer-traffic"
	t.Cleanup(func() { putConfigMap(t, context.Background(), cm, nil) })
	n := startNode(t, "traffic", nodeOpts{runtimeConfigMap: cm})
	ns := newTenant(t, "traffic")

	tr := startTraffic(ctx, n, ns, func(chain []byte) (string, error) {
		for name, ca := range map[string][]byte{testbed.ClusterIssuerName: bed.IssuerCAPEM, secondIssuer: secondCA} {
			if _, err := testbed.VerifySVIDTo(ca, chain, "spiffe://cluster.local/ns/"+ns+"/sa/app"); err == nil {
				return name, nil
			}
		}
		return "", errors.New("the certificate chains to neither CA")
	})
	const switches = 12
	for i := range switches {
		time.Sleep(400 * time.Millisecond)
		to := secondIssuer
		if i%2 == 1 {
			to = testbed.ClusterIssuerName
		}
		putConfigMap(t, ctx, cm, clusterIssuer(to))
	}
	time.Sleep(400 * time.Millisecond)
	published, byCA := tr.stop(t)
	t.Logf("%d pods published across %d issuer switches: %v by issuer", published, switches, byCA)
	if published < 4*switches || byCA[testbed.ClusterIssuerName] == 0 || byCA[secondIssuer] == 0 {
		t.Errorf("%d publishes (%v by issuer) during %d switches: not traffic through the switches", published, byCA, switches)
	}
	waitNoRequests(t, ns) // after the last decision; then its Event is in too
	noDenials(t, ctx, ns)
}

// Trust for the whole of an issuer switch, the documented way (docs/deploy.md,
// "Switching the CA"): the bundle first holds the old and the new CA, then the
// runtime ConfigMap switches. Every pod's ca.crt then verifies every pod's
// certificate, from either CA: old pods trust new ones and new pods old ones.
func TestTrustDuringIssuerSwitch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	secondCA := ensureSecondIssuer(t, ctx)
	bundleDir := filepath.Join(bed.Dir, "trust-bundle")
	if err := os.MkdirAll(bundleDir, 0o750); err != nil {
		t.Fatal(err)
	}
	mountBundle := func(data []byte) {
		t.Helper()
		if err := volume.WriteFiles(bundleDir, map[string][]byte{"ca.crt": data}, -1); err != nil {
			t.Fatal(err)
		}
	}
	mountBundle(bed.IssuerCAPEM)
	const cm = "runtime-issuer-trust"
	t.Cleanup(func() { putConfigMap(t, context.Background(), cm, nil) })
	n := startNode(t, "trust", nodeOpts{runtimeConfigMap: cm, caBundle: filepath.Join(bundleDir, "ca.crt")})
	ns := newTenant(t, "trust")
	id := "spiffe://cluster.local/ns/" + ns + "/sa/app"
	publish := func(name string) *testbed.PodVolume {
		t.Helper()
		v := n.pod(t, ns, name, nil, nil)
		if err := n.kubelet.Publish(ctx, v); err != nil {
			t.Fatalf("publish %s: %v", name, err)
		}
		return v
	}
	read := func(v *testbed.PodVolume, file string) []byte {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(v.TargetPath, file))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	old := publish("old")

	// 1. The bundle holds both CAs, and reaches the running pod.
	both := append(append([]byte{}, bed.IssuerCAPEM...), secondCA...)
	mountBundle(both)
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return string(read(old, "ca.crt")) == string(both), nil
	})
	if err != nil {
		t.Fatalf("the running pod never got the bundle of both CAs")
	}
	// 2. The switch: new pods get the second CA's certificates.
	at := n.logSize()
	putConfigMap(t, ctx, cm, clusterIssuer(secondIssuer))
	n.waitLogLine(at, "Active settings changed", secondIssuer)
	fresh := publish("new")
	if _, err := testbed.VerifySVIDTo(secondCA, read(fresh, "tls.crt"), id); err != nil {
		t.Fatalf("the new pod's certificate: %v", err)
	}
	// Each pod's bundle verifies both pods' certificates.
	for _, truster := range []*testbed.PodVolume{old, fresh} {
		for _, peer := range []*testbed.PodVolume{old, fresh} {
			if _, err := testbed.VerifySVIDTo(read(truster, "ca.crt"), read(peer, "tls.crt"), id); err != nil {
				t.Errorf("%s's ca.crt does not verify %s's certificate: %v", truster.Pod.Name, peer.Pod.Name, err)
			}
		}
	}
	// Without the documented step the old bundle alone would not have
	// verified the new certificate: what docs/deploy.md warns of.
	if _, err := testbed.VerifySVIDTo(bed.IssuerCAPEM, read(fresh, "tls.crt"), id); err == nil {
		t.Fatal("the old CA alone verifies the new certificate: the test proves nothing")
	}
	for _, v := range []*testbed.PodVolume{old, fresh} {
		if err := n.kubelet.DeletePod(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	noDenials(t, ctx, ns)
}
