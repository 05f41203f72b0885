//go:build integration

package testbed_test

import (
	"context"
	"crypto/ecdsa"
	"os"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

var bed *testbed.Bed

func TestMain(m *testing.M) {
	os.Exit(testbed.Main(m, &bed))
}

// TestSmoke proves the bed is real: a CertificateRequest created as a
// ServiceAccount gets its username from cert-manager's webhook, is approved
// through the status subresource, and is signed by the CA ClusterIssuer.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ns, err := bed.CreateNamespace(ctx, "smoke")
	if err != nil {
		t.Fatal(err)
	}
	// The controller manager gives every new namespace its root CA ConfigMap.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := bed.Kube.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("kube-root-ca.crt never appeared in %s: %v", ns, err)
	}
	if err := bed.CreateServiceAccount(ctx, ns, "app"); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, ns, "create-requests", ns, "app", []rbacv1.PolicyRule{{
		APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create", "get"},
	}}); err != nil {
		t.Fatal(err)
	}
	as, err := bed.ClientsAs(ctx, ns, "app")
	if err != nil {
		t.Fatal(err)
	}

	uri := "spiffe://cluster.local/ns/" + ns + "/sa/app"
	key, csr, err := testbed.NewCSR([]string{uri}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "smoke-", Namespace: ns},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			Duration:  &metav1.Duration{Duration: time.Hour},
			Usages:    []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment, cmapi.UsageClientAuth, cmapi.UsageServerAuth},
			IssuerRef: cmmeta.IssuerReference{Name: testbed.ClusterIssuerName, Kind: "ClusterIssuer", Group: "cert-manager.io"},
		},
	}
	cr, err = as.CertManager.CertmanagerV1().CertificateRequests(ns).Create(ctx, cr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create CertificateRequest as the ServiceAccount: %v", err)
	}
	if want := "system:serviceaccount:" + ns + ":app"; cr.Spec.Username != want {
		t.Fatalf("spec.username = %q, want %q (set by cert-manager's webhook)", cr.Spec.Username, want)
	}

	cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
		Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue,
		Reason: "smoke-test", Message: "approved by the smoke test",
	})
	if _, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).UpdateStatus(ctx, cr, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("approve: %v", err)
	}

	var issued *cmapi.CertificateRequest
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Get(ctx, cr.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		issued = got
		return len(got.Status.Certificate) > 0, nil
	}); err != nil {
		t.Fatalf("request never issued: %v; status: %+v", err, issued.Status.Conditions)
	}

	cert, err := bed.VerifySVID(issued.Status.Certificate, uri)
	if err != nil {
		t.Fatalf("issued certificate: %v", err)
	}
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("certificate is not for the request's key")
	}
}
