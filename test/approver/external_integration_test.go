//go:build integration

package approver

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/svid-csi/svid-csi/approver/controller"
	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// An external issuer, as step-issuer or another out-of-tree issuer installs
// one: a cluster-scoped kind in its own group. Its kind differs from
// TestRefusedDecisionIsFinal's (which has no CRD), so the two never share a
// signer.
const (
	extGroup    = "issuers.example.com"
	extVersion  = "v1alpha1"
	extKind     = "ExternalClusterIssuer"
	extPlural   = "externalclusterissuers"
	extName     = "ext"
	extResource = extPlural + "." + extGroup
	extSigner   = extResource + "/" + extName
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installExternalIssuerCRD installs a stub CRD for extKind, so that
// cert-manager's webhook finds the signer by discovery, and removes it at the
// end of the test.
func installExternalIssuerCRD(ctx context.Context, t *testing.T) {
	t.Helper()
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata":   map[string]any{"name": extResource},
		"spec": map[string]any{
			"group": extGroup,
			"scope": "Cluster",
			"names": map[string]any{
				"kind": extKind, "listKind": extKind + "List",
				"plural": extPlural, "singular": strings.ToLower(extKind),
			},
			"versions": []any{map[string]any{
				"name": extVersion, "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{
					"type": "object", "x-kubernetes-preserve-unknown-fields": true,
				}},
			}},
		},
	}}
	a, err := bed.NewApplier("svid-csi-approver-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, crd, false); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(bed.Admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := dyn.Resource(crdGVR).Delete(context.Background(), extResource, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete CRD %s: %v", extResource, err)
		}
	})
	// Served: the API server's discovery lists the kind (what the webhook asks).
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := bed.Kube.Discovery().ServerResourcesForGroupVersion(extGroup + "/" + extVersion)
		if err != nil {
			return false, nil
		}
		return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Kind == extKind && !r.Namespaced }), nil
	})
	if err != nil {
		t.Fatalf("CRD %s never served: %v", extResource, err)
	}
}

// refusedEvents lists the DecisionRefused Events on a request.
func refusedEvents(ctx context.Context, ns, name string) ([]corev1.Event, error) {
	list, err := bed.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", name),
			fields.OneTermEqualSelector("reason", controller.EventRefused)).String()})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}

// mayApprove asks the API server whether the approver's ServiceAccount may
// approve the signer (what cert-manager's webhook asks).
func mayApprove(ctx context.Context, signer string) (bool, error) {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   spiffe.ServiceAccountUsername(testbed.CertManagerNamespace, approverSA),
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + testbed.CertManagerNamespace, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: "approve", Group: "cert-manager.io", Resource: "signers", Name: signer,
		},
	}}
	got, err := bed.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return got.Status.Allowed, nil
}

// TestExternalIssuerApproved: a request for an issuer outside cert-manager.io
// gets Approved written once the approver holds that issuer's signer the way
// docs/deploy.md says: a scratch overlay naming the issuer in svid-csi-config
// (ISSUER_* and ISSUER_RESOURCE) with overlays/components/config-rbac,
// whose rendered svid-csi-approver:signers is bound to the approver's
// ServiceAccount. Before the binding, the same approver's approval of a first
// request is refused by cert-manager: the binding is what makes it pass.
func TestExternalIssuerApproved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	installExternalIssuerCRD(ctx, t)

	rules, err := testbed.ConfiguredClusterRoleRules(testbed.ApproverSignersClusterRole, map[string]string{
		"ISSUER_NAME":     extName,
		"ISSUER_KIND":     extKind,
		"ISSUER_GROUP":    extGroup,
		"ISSUER_RESOURCE": extResource,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || !slices.Equal(rules[0].ResourceNames, []string{extSigner}) {
		t.Fatalf("rendered %s rules %+v, want one rule naming %s", testbed.ApproverSignersClusterRole, rules, extSigner)
	}

	p := startApprover(t, "approver-external", "--leader-election=false",
		"--issuer-name="+extName, "--issuer-kind="+extKind, "--issuer-group="+extGroup)
	tn := newTenant(t, "external")
	opts := requestOpts{issuer: extName, issuerKind: extKind, issuerGroup: extGroup}
	if ok, err := mayApprove(ctx, extSigner); err != nil || ok {
		t.Fatalf("the approver may approve %s before the binding (%v, %v): the proof below needs it not to", extSigner, ok, err)
	}

	// The approver says so itself at start, before any request: it asked
	// the API server (discovery for the kind's plural, then an access review).
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(p.Tail(1<<20), `"The approver may not approve for the active issuer`) &&
			strings.Contains(p.Tail(1<<20), `signer="`+extSigner+`" why="RBAC does not grant`), nil
	})
	if err != nil {
		t.Fatalf("no start-up line saying the approver may not approve %s:\n%s", extSigner, p.Tail(4096))
	}

	// Without the binding: the approver approves, cert-manager refuses.
	first := tn.create(t, ctx, tn.request(t, opts))
	var refusal []corev1.Event
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		refusal, err = refusedEvents(ctx, tn.ns, first.Name)
		return err == nil && len(refusal) > 0, nil
	})
	if err != nil {
		t.Fatalf("without the binding: no %s Event on %s: %v\n%s", controller.EventRefused, first.Name, err, p.Tail(4096))
	}
	if !strings.Contains(refusal[0].Message, "does not have permissions") {
		t.Errorf("without the binding: refused for another reason than the signer's permission (the CRD not found?): %q", refusal[0].Message)
	}
	if got, err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Get(ctx, first.Name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if c := decided(got); c != nil {
		t.Fatalf("without the binding the request was decided (%s %q)", c.Type, c.Message)
	}
	// Undecided for good: gone, so that no later approver on the bed meets it.
	if err := bed.CertManager.CertmanagerV1().CertificateRequests(tn.ns).Delete(ctx, first.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The rendered signers ClusterRole, bound to the approver's ServiceAccount.
	const binding = "svid-csi-approver:signers-external"
	if err := bed.Grant(ctx, "", binding, testbed.CertManagerNamespace, approverSA, rules); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rbac := bed.Kube.RbacV1()
		if err := rbac.ClusterRoleBindings().Delete(context.Background(), binding, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete ClusterRoleBinding %s: %v", binding, err)
		}
		if err := rbac.ClusterRoles().Delete(context.Background(), binding, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete ClusterRole %s: %v", binding, err)
		}
	})
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		ok, err := mayApprove(ctx, extSigner)
		return err == nil && ok, nil
	})
	if err != nil {
		t.Fatalf("the binding never let the approver approve %s: %v", extSigner, err)
	}
	// cert-manager's webhook caches authorization answers for a second.
	time.Sleep(2 * time.Second)

	cr := tn.create(t, ctx, tn.request(t, opts))
	c := decision(ctx, t, tn.ns, cr.Name)
	if c.Type != cmapi.CertificateRequestConditionApproved || c.Reason != spiffe.ConditionReason {
		t.Fatalf("condition = %s/%s %q, want Approved/%s\n%s", c.Type, c.Reason, c.Message, spiffe.ConditionReason, p.Tail(4096))
	}
	// The approval's Event arrives; no refusal with it.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := bed.Kube.CoreV1().Events(tn.ns).List(ctx, metav1.ListOptions{FieldSelector: fields.AndSelectors(
			fields.OneTermEqualSelector("involvedObject.name", cr.Name),
			fields.OneTermEqualSelector("reason", controller.EventApproved)).String()})
		return err == nil && len(list.Items) > 0, nil
	})
	if err != nil {
		t.Errorf("no %s Event on %s: %v", controller.EventApproved, cr.Name, err)
	}
	if evs, err := refusedEvents(ctx, tn.ns, cr.Name); err != nil || len(evs) > 0 {
		t.Errorf("%s Events on the approved request: %v (%v)", controller.EventRefused, evs, err)
	}
}
