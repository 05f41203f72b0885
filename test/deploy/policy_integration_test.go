//go:build integration

package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// The driver may create requests in every namespace (node-bound), but the
// shipped admission policy admits them only for an issuer whose signer the
// svid-csi approver may approve, and only as SPIFFE identity requests: a
// compromised driver can ask nothing of another issuer, which another
// approver might approve. Anyone else's requests are not the policy's
// business.
func TestDriverRequestsPolicy(t *testing.T) {
	applyExample(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns, err := bed.CreateNamespace(ctx, "policy")
	if err != nil {
		t.Fatal(err)
	}
	asDriver, err := bed.ClientsAs(ctx, namespace, driverName)
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.CreateServiceAccount(ctx, ns, "other"); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, ns, "create-requests", ns, "other", []rbacv1.PolicyRule{{
		APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create"},
	}}); err != nil {
		t.Fatal(err)
	}
	asOther, err := bed.ClientsAs(ctx, ns, "other")
	if err != nil {
		t.Fatal(err)
	}
	id := "spiffe://cluster.local/ns/" + ns + "/sa/app"
	req := func(kind, issuer string, annotated bool) *cmapi.CertificateRequest {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "policy-", Namespace: ns, Labels: map[string]string{spiffe.DriverLabel: "policy.test"}},
			Spec: cmapi.CertificateRequestSpec{
				Request: newCSR(t, id), Duration: &metav1.Duration{Duration: time.Hour}, Usages: spiffe.Usages,
				IssuerRef: cmmeta.IssuerReference{Name: issuer, Kind: kind, Group: "cert-manager.io"},
			},
		}
		if annotated {
			cr.Annotations = map[string]string{spiffe.IdentityAnnotation: id}
		}
		return cr
	}
	create := func(as *testbed.ServiceAccountClients, cr *cmapi.CertificateRequest) error {
		got, err := as.CertManager.CertmanagerV1().CertificateRequests(ns).Create(ctx, cr, metav1.CreateOptions{})
		if err == nil {
			_ = bed.CertManager.CertmanagerV1().CertificateRequests(ns).Delete(ctx, got.Name, metav1.DeleteOptions{})
		}
		return err
	}
	const issuerMsg = "the svid-csi driver may request certificates only from an issuer the svid-csi approver may approve for"
	// The policy is enforced once the API server has loaded it.
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		last = create(asDriver, req("ClusterIssuer", "svid-csi-selfsigned", true))
		return last != nil && strings.Contains(last.Error(), issuerMsg), nil
	}); err != nil {
		t.Fatalf("the driver's request for another issuer was never refused: %v (last: %v)", err, last)
	}
	for _, tc := range []struct {
		name string
		as   *testbed.ServiceAccountClients
		cr   *cmapi.CertificateRequest
		want string // empty: admitted
	}{
		{"the driver, for the SPIFFE issuer", asDriver, req("ClusterIssuer", "svid-csi-ca", true), ""},
		{"the driver, for another ClusterIssuer", asDriver, req("ClusterIssuer", "svid-csi-selfsigned", true), issuerMsg + " (ClusterRole svid-csi-approver:signers); clusterissuers.cert-manager.io/svid-csi-selfsigned is not one"},
		{"the driver, for a namespaced Issuer of the SPIFFE issuer's name", asDriver, req("Issuer", "svid-csi-ca", true), issuerMsg},
		{"the driver, no identity annotation", asDriver, req("ClusterIssuer", "svid-csi-ca", false), "the svid-csi driver may create only SPIFFE identity requests"},
		{"another ServiceAccount, for another issuer", asOther, req("ClusterIssuer", "svid-csi-selfsigned", false), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := create(tc.as, tc.cr)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("create = %v, want refused with %q", err, tc.want)
			}
		})
	}
}
