//go:build integration

package deploy_test

import (
	"context"
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// applyUnforced server-side applies objects as fieldManager without
// --force-conflicts, as `kubectl apply --server-side` does by default (and
// Argo CD's self-heal with ServerSideApply=true): a field another manager owns
// makes it fail with a conflict instead of taking the field over.
func applyUnforced(ctx context.Context, t testing.TB, objs []*unstructured.Unstructured) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(bed.Admin)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(bed.Kube.Discovery()))
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			r = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := r.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager}); err != nil {
			t.Errorf("re-apply %s %s/%s: %v", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
	}
}

// The runtime issuer ConfigMap is the operator's: overlays/example does not
// render it, so once an operator has created and edited it (plain writes, as
// `kubectl create configmap` and `kubectl edit` do), re-applying the example
// server-side, unforced, neither conflicts nor touches it: same data, same
// resourceVersion, no field owned by the manifests' manager.
func TestRuntimeIssuerConfigMapIsTheOperators(t *testing.T) {
	objs := applyExample(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := renderedConfig(t, objs)["RUNTIME_ISSUANCE_CONFIGMAP"]
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && o.GetName() == name {
			t.Fatalf("overlays/example renders ConfigMap %s: it must be the operator's", name)
		}
	}

	// The example's own issuer, so that the other tests on this bed see no
	// other issuer while it exists; removed at the end.
	cms := bed.Kube.CoreV1().ConfigMaps(namespace)
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Data:       map[string]string{"issuer-name": "svid-csi-ca", "issuer-kind": "ClusterIssuer", "issuer-group": "cert-manager.io"},
	}
	created, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: "kubectl-create"})
	if err != nil {
		t.Fatalf("create ConfigMap %s as an operator: %v", name, err)
	}
	t.Cleanup(func() {
		if err := cms.Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete ConfigMap %s: %v", name, err)
		}
	})
	created.Annotations = map[string]string{"example.org/changed-by": "platform-team"}
	edited, err := cms.Update(ctx, created, metav1.UpdateOptions{FieldManager: "kubectl-edit"})
	if err != nil {
		t.Fatalf("edit ConfigMap %s as an operator: %v", name, err)
	}

	applyUnforced(ctx, t, objs)

	got, err := cms.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the operator's ConfigMap %s after re-applying the example: %v", name, err)
	}
	if got.ResourceVersion != edited.ResourceVersion || !maps.Equal(got.Data, edited.Data) ||
		!maps.Equal(got.Annotations, edited.Annotations) || !maps.Equal(got.Labels, edited.Labels) {
		t.Errorf("re-applying the example changed the operator's ConfigMap %s: resourceVersion %s -> %s, data %v -> %v, annotations %v -> %v, labels %v -> %v",
			name, edited.ResourceVersion, got.ResourceVersion, edited.Data, got.Data, edited.Annotations, got.Annotations, edited.Labels, got.Labels)
	}
	for _, mf := range got.ManagedFields {
		if mf.Manager == fieldManager {
			t.Errorf("ConfigMap %s: the manifests' field manager %s owns fields %s", name, fieldManager, mf.FieldsV1)
		}
	}
}
