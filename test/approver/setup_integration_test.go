//go:build integration

package approver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

var bed *testbed.Bed

func TestMain(m *testing.M) {
	os.Exit(testbed.Main(m, &bed))
}

const approverSA = "svid-csi-approver"

// approverRules are the shipped ClusterRoles' (svid-csi-approver, and
// svid-csi-approver:signers rendered for the bed's ClusterIssuer, as an overlay
// naming it in config.env renders it), plus leases under the ids the tests
// choose (the shipped Role allows only the default id).
func approverRules(t testing.TB) []rbacv1.PolicyRule {
	t.Helper()
	rules, err := testbed.ApproverClusterRoleRules(map[string]string{"ISSUER_NAME": testbed.ClusterIssuerName})
	if err != nil {
		t.Fatal(err)
	}
	return append(rules, rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}})
}

var approverKubeconfig string

// setupApprover creates the approver's ServiceAccount and RBAC once and writes
// its token kubeconfig (no client certificate: as in cluster).
func setupApprover(t testing.TB) string {
	t.Helper()
	if approverKubeconfig != "" {
		return approverKubeconfig
	}
	ctx := context.Background()
	ns := testbed.CertManagerNamespace
	if err := bed.CreateServiceAccount(ctx, ns, approverSA); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, "", approverSA, ns, approverSA, approverRules(t)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(bed.Dir, "approver.kubeconfig")
	if err := bed.WriteServiceAccountKubeconfig(ctx, path, ns, approverSA); err != nil {
		t.Fatal(err)
	}
	approverKubeconfig = path
	return path
}

// startApprover runs one approver process with leader election, stopped at
// the end of the test.
func startApprover(t testing.TB, name string, extra ...string) *testbed.Process {
	t.Helper()
	kubeconfig := setupApprover(t)
	ports, err := testbed.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	health, metrics := ports[0], ports[1]
	args := append([]string{
		"--kubeconfig=" + kubeconfig,
		"--trust-domain=cluster.local",
		"--issuer-name=" + testbed.ClusterIssuerName, "--issuer-kind=ClusterIssuer", "--issuer-group=cert-manager.io",
		"--leader-election-namespace=" + testbed.CertManagerNamespace,
		"--leader-election-lease-duration=4s", "--leader-election-renew-deadline=3s", "--leader-election-retry-period=500ms",
		"--health-address=127.0.0.1:" + strconv.Itoa(health),
		"--metrics-address=127.0.0.1:" + strconv.Itoa(metrics),
		"--v=2",
	}, extra...)
	p, err := bed.StartProcess(name, bed.Binary("svid-csi-approver"), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(15, 10*time.Second) })
	return p
}

// tenant is a namespace with a ServiceAccount allowed to create requests, a
// pod of it, and clients acting as that pod (pod-token mode: a token bound
// to the pod, as the kubelet hands the driver).
type tenant struct {
	ns, sa string
	pod    *corev1.Pod
	as     *testbed.ServiceAccountClients
}

func newTenant(t testing.TB, prefix string) *tenant {
	t.Helper()
	ctx := context.Background()
	ns, err := bed.CreateNamespace(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	const sa = "app"
	if err := bed.CreateServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, ns, "request-svids", ns, sa, []rbacv1.PolicyRule{{
		APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create", "get", "list", "watch"},
	}}); err != nil {
		t.Fatal(err)
	}
	pod, err := bed.CreateIdlePod(ctx, testbed.IdlePod{Namespace: ns, Name: "app-0", ServiceAccount: sa})
	if err != nil {
		t.Fatal(err)
	}
	as, err := bed.ClientsAsPod(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	return &tenant{ns: ns, sa: sa, pod: pod, as: as}
}

func (tn *tenant) id() string { return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", tn.ns, tn.sa) }

// requestOpts crafts a request; the zero value plus tenant defaults is valid.
type requestOpts struct {
	uris       []string
	dnsNames   []string
	annotation *string // nil: the SPIFFE ID of the tenant
	noLabel    bool
	isCA       bool
	duration   time.Duration
	issuer     string
	// issuerKind and issuerGroup default to ClusterIssuer and cert-manager.io.
	issuerKind, issuerGroup string
}

func (tn *tenant) request(t testing.TB, o requestOpts) *cmapi.CertificateRequest {
	t.Helper()
	if o.uris == nil {
		o.uris = []string{tn.id()}
	}
	_, csr, err := testbed.NewCSR(o.uris, o.dnsNames)
	if err != nil {
		t.Fatal(err)
	}
	annotation := tn.id()
	if o.annotation != nil {
		annotation = *o.annotation
	}
	if o.duration == 0 {
		o.duration = time.Hour
	}
	if o.issuer == "" {
		o.issuer = testbed.ClusterIssuerName
	}
	if o.issuerKind == "" {
		o.issuerKind = "ClusterIssuer"
	}
	if o.issuerGroup == "" {
		o.issuerGroup = "cert-manager.io"
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "svid-", Namespace: tn.ns, Labels: map[string]string{spiffe.DriverLabel: spiffe.DefaultDriverName},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: tn.pod.Name, UID: tn.pod.UID}},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			Duration:  &metav1.Duration{Duration: o.duration},
			Usages:    spiffe.Usages,
			IsCA:      o.isCA,
			IssuerRef: cmmeta.IssuerReference{Name: o.issuer, Kind: o.issuerKind, Group: o.issuerGroup},
		},
	}
	if annotation != "" {
		cr.Annotations = map[string]string{spiffe.IdentityAnnotation: annotation}
	}
	if o.noLabel {
		cr.Labels = nil
	}
	return cr
}

func (tn *tenant) create(t testing.TB, ctx context.Context, cr *cmapi.CertificateRequest) *cmapi.CertificateRequest {
	t.Helper()
	got, err := tn.as.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Create(ctx, cr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create CertificateRequest as %s/%s: %v", tn.ns, tn.sa, err)
	}
	return got
}

// decision waits for the request's Approved or Denied condition.
func decision(ctx context.Context, t testing.TB, ns, name string) cmapi.CertificateRequestCondition {
	t.Helper()
	var found *cmapi.CertificateRequestCondition
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		cr, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if c := decided(cr); c != nil {
			found = c
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no decision on %s/%s: %v", ns, name, err)
	}
	return *found
}

func decided(cr *cmapi.CertificateRequest) *cmapi.CertificateRequestCondition {
	for i, c := range cr.Status.Conditions {
		if (c.Type == cmapi.CertificateRequestConditionApproved || c.Type == cmapi.CertificateRequestConditionDenied) && c.Status == cmmeta.ConditionTrue {
			return &cr.Status.Conditions[i]
		}
	}
	return nil
}
