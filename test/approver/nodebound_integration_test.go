//go:build integration

package approver

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

const driverSA = "svid-csi-driver"

// holdFinalizer keeps a test's object until the test removes it.
const holdFinalizer = "svid-csi.test/hold"

// nodeBoundBed is two nodes, each with a driver pod whose pod-bound token
// (as the kubelet gives the DaemonSet's pods) the test acts with, and a
// workload namespace whose ServiceAccount has no RBAC at all.
type nodeBoundBed struct {
	drivers map[string]*testbed.ServiceAccountClients // by node
}

var nodeBound *nodeBoundBed

func setupNodeBound(t testing.TB) *nodeBoundBed {
	t.Helper()
	if nodeBound != nil {
		return nodeBound
	}
	ctx := context.Background()
	cmNS := testbed.CertManagerNamespace
	rules, err := testbed.ShippedClusterRoleRules("svid-csi-driver")
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.CreateServiceAccount(ctx, cmNS, driverSA); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, "", "nb-"+driverSA, cmNS, driverSA, rules); err != nil {
		t.Fatal(err)
	}
	b := &nodeBoundBed{drivers: map[string]*testbed.ServiceAccountClients{}}
	for _, node := range []string{"node-a", "node-b"} {
		if _, err := bed.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		pod, err := bed.CreateIdlePod(ctx, testbed.IdlePod{Namespace: cmNS, Name: driverSA + "-" + node, ServiceAccount: driverSA, Node: node})
		if err != nil {
			t.Fatal(err)
		}
		if b.drivers[node], err = bed.ClientsAsPod(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	nodeBound = b
	return b
}

// namespace makes a workload namespace whose ServiceAccounts app and db
// have no RBAC at all.
func (b *nodeBoundBed) namespace(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	ns, err := bed.CreateNamespace(ctx, "nodebound")
	if err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"app", "db"} {
		if err := bed.CreateServiceAccount(ctx, ns, sa); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// workload creates an idle pod of ServiceAccount app.
func (b *nodeBoundBed) workload(t testing.TB, ns, name, node, driver string) *corev1.Pod {
	t.Helper()
	pod, err := bed.CreateIdlePod(context.Background(), testbed.IdlePod{Namespace: ns, Name: name, ServiceAccount: "app", Node: node, Driver: driver})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// request is what the driver of a node creates for pod: named in the
// annotations and owner, with the SPIFFE ID of ServiceAccount sa.
func (b *nodeBoundBed) request(t testing.TB, pod *corev1.Pod, sa string) *cmapi.CertificateRequest {
	t.Helper()
	tn := &tenant{ns: pod.Namespace, sa: sa, pod: pod}
	cr := tn.request(t, requestOpts{})
	cr.Annotations[spiffe.PodNamespaceAnnotation] = pod.Namespace
	cr.Annotations[spiffe.PodNameAnnotation] = pod.Name
	cr.Annotations[spiffe.PodUIDAnnotation] = string(pod.UID)
	return cr
}

func (b *nodeBoundBed) create(t *testing.T, node string, cr *cmapi.CertificateRequest) *cmapi.CertificateRequest {
	t.Helper()
	got, err := b.drivers[node].CertManager.CertmanagerV1().CertificateRequests(cr.Namespace).Create(context.Background(), cr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create a CertificateRequest as the driver of %s: %v", node, err)
	}
	return got
}

// A driver's credential gets SVIDs only for pods that run on its own node:
// cert-manager's webhook records the driver's node from its pod-bound token,
// and the approver checks the pod named in the request against it.
func TestNodeBound(t *testing.T) {
	b := setupNodeBound(t)
	ns := b.namespace(t)
	startApprover(t, "approver-nodebound", "--leader-election=false",
		"--request-modes=node-bound,pod-token", "--driver-service-account="+testbed.CertManagerNamespace+"/"+driverSA)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	driverName := spiffe.DefaultDriverName

	webA := b.workload(t, ns, "web-a", "node-a", driverName)
	webB := b.workload(t, ns, "web-b", "node-b", driverName)
	noVolume := b.workload(t, ns, "plain-a", "node-a", "")
	gone := b.workload(t, ns, "gone-a", "node-a", driverName)
	terminating := b.workload(t, ns, "terminating-a", "node-a", driverName)

	// The workload's ServiceAccount has no RBAC: it cannot create a request
	// itself, and needs not.
	as, err := bed.ClientsAsPod(ctx, webA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := as.CertManager.CertmanagerV1().CertificateRequests(ns).Create(ctx, b.request(t, webA, "app"), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the workload's ServiceAccount created a request itself: %v, want Forbidden", err)
	}

	// What the webhook recorded: the driver's node, from its token.
	ok := b.create(t, "node-a", b.request(t, webA, "app"))
	if got := ok.Spec.Extra[checks.ExtraNodeName]; !slices.Equal(got, []string{"node-a"}) || ok.Spec.Username != spiffe.ServiceAccountUsername(testbed.CertManagerNamespace, driverSA) {
		t.Fatalf("request of the driver of node-a: username %q, extra %v; want the driver and node-a", ok.Spec.Username, ok.Spec.Extra)
	}
	if c := decision(ctx, t, ns, ok.Name); c.Type != cmapi.CertificateRequestConditionApproved {
		t.Fatalf("request for a pod on the driver's node: %s %q", c.Type, c.Message)
	}

	// A pod terminating (a finalizer holds it) and a pod deleted since.
	if _, err := bed.Kube.CoreV1().Pods(ns).Patch(ctx, terminating.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":["`+holdFinalizer+`"]}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = bed.Kube.CoreV1().Pods(ns).Patch(context.Background(), terminating.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	if err := bed.Kube.CoreV1().Pods(ns).Delete(ctx, terminating.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Scheduled, it would wait for its kubelet (terminating); at once it is gone.
	now := int64(0)
	if err := bed.Kube.CoreV1().Pods(ns).Delete(ctx, gone.Name, metav1.DeleteOptions{GracePeriodSeconds: &now}); err != nil {
		t.Fatal(err)
	}

	unbound, err := bed.ClientsAs(ctx, testbed.CertManagerNamespace, driverSA)
	if err != nil {
		t.Fatal(err)
	}
	pod := func(p *corev1.Pod) string { return "pod " + ns + "/" + p.Name + " " }
	// held keeps a request whose owner does not exist from the garbage
	// collector, which deletes it (rightly) as soon as it watches
	// CertificateRequests, often before the approver decides: the denial is
	// what is tested. The finalizer goes when the test ends.
	held := func(cr *cmapi.CertificateRequest) *cmapi.CertificateRequest {
		cr.Finalizers = append(cr.Finalizers, holdFinalizer)
		got := b.create(t, "node-a", cr)
		t.Cleanup(func() {
			if _, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Patch(context.Background(), got.Name,
				types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("release %s: %v", got.Name, err)
			}
		})
		return got
	}
	for _, tc := range []struct {
		name   string
		create func() *cmapi.CertificateRequest
		want   string
	}{
		{"a pod on another node", func() *cmapi.CertificateRequest { return b.create(t, "node-a", b.request(t, webB, "app")) },
			pod(webB) + `spec.nodeName: exp="node-a" got="node-b"`},
		{"the ID of another ServiceAccount than the pod's", func() *cmapi.CertificateRequest { return b.create(t, "node-a", b.request(t, webA, "db")) },
			pod(webA) + `spec.serviceAccountName: exp="db" got="app"`},
		{"a pod that mounts no volume of the driver", func() *cmapi.CertificateRequest { return b.create(t, "node-a", b.request(t, noVolume, "app")) },
			pod(noVolume) + `spec.volumes: exp="a CSI volume of spiffe.csi.cert-manager.io" got="none"`},
		{"a pod UID that is not the pod's", func() *cmapi.CertificateRequest {
			cr := b.request(t, webA, "app")
			cr.OwnerReferences[0].UID, cr.Annotations[spiffe.PodUIDAnnotation] = "0000", "0000"
			return held(cr)
		}, pod(webA) + `metadata.uid: exp="0000" got="` + string(webA.UID) + `"`},
		{"a terminating pod", func() *cmapi.CertificateRequest { return b.create(t, "node-a", b.request(t, terminating, "app")) },
			pod(terminating) + `metadata.deletionTimestamp: exp="unset"`},
		{"a deleted pod", func() *cmapi.CertificateRequest { return held(b.request(t, gone, "app")) },
			fmt.Sprintf(`pod %s/%s: exp="exists" got="not found"`, ns, gone.Name)},
		{"the driver's ServiceAccount with a token bound to no pod (no node)", func() *cmapi.CertificateRequest {
			got, err := unbound.CertManager.CertmanagerV1().CertificateRequests(ns).Create(ctx, b.request(t, webA, "app"), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return got
		}, `spec.extra["authentication.kubernetes.io/pod-name"]: exp="the driver's pod, from its pod-bound token" got=""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := tc.create()
			c := decision(ctx, t, ns, cr.Name)
			if c.Type != cmapi.CertificateRequestConditionDenied || len(c.Message) < len(tc.want) || c.Message[:len(tc.want)] != tc.want {
				t.Fatalf("%s %q, want Denied %q", c.Type, c.Message, tc.want)
			}
		})
	}
}

// In pod-token mode the requester's token must be bound to the pod that owns
// the request: a ServiceAccount token of no pod (what any controller that
// copies the label and annotation into its own requests holds) gets nothing.
func TestPodTokenBinding(t *testing.T) {
	startApprover(t, "approver-podtoken", "--leader-election=false")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tn := newTenant(t, "podtoken")
	other, err := bed.CreateIdlePod(ctx, testbed.IdlePod{Namespace: tn.ns, Name: "app-1", ServiceAccount: tn.sa})
	if err != nil {
		t.Fatal(err)
	}
	unbound, err := bed.ClientsAs(ctx, tn.ns, tn.sa)
	if err != nil {
		t.Fatal(err)
	}
	uidMsg := `spec.extra["authentication.kubernetes.io/pod-uid"]: exp="`
	for _, tc := range []struct {
		name string
		as   *testbed.ServiceAccountClients
		pod  *corev1.Pod // the owner
		want string      // empty: approved
	}{
		{"a token bound to the owner pod", tn.as, tn.pod, ""},
		{"a token bound to another pod", tn.as, other, uidMsg + string(other.UID) + `" got="` + string(tn.pod.UID) + `"`},
		{"a token bound to no pod", unbound, tn.pod, uidMsg + string(tn.pod.UID) + `" got=""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := tn.request(t, requestOpts{})
			cr.OwnerReferences[0] = metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: tc.pod.Name, UID: tc.pod.UID}
			got, err := tc.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, cr, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			c := decision(ctx, t, tn.ns, got.Name)
			switch {
			case tc.want == "" && c.Type != cmapi.CertificateRequestConditionApproved:
				t.Fatalf("%s %q, want Approved", c.Type, c.Message)
			case tc.want != "" && (c.Type != cmapi.CertificateRequestConditionDenied || c.Message != tc.want):
				t.Fatalf("%s %q, want Denied %q", c.Type, c.Message, tc.want)
			}
		})
	}
}
