package testbed

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Rendered is the output of one kustomize build.
type Rendered struct {
	YAML    []byte
	Objects []*unstructured.Unstructured
}

// Render builds dir of fs as `kubectl kustomize` does (default options: load
// restrictions to the root, no plugins, no remote bases).
func Render(fs filesys.FileSystem, dir string) (*Rendered, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: as YAML: %w", dir, err)
	}
	r := &Rendered{YAML: out}
	for _, res := range m.Resources() {
		obj, err := res.Map()
		if err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", dir, res.CurId(), err)
		}
		r.Objects = append(r.Objects, &unstructured.Unstructured{Object: obj})
	}
	return r, nil
}

// Applier server-side applies objects as an admin, as `kubectl apply
// --server-side --force-conflicts` does.
type Applier struct {
	dyn          dynamic.Interface
	mapper       *restmapper.DeferredDiscoveryRESTMapper
	fieldManager string
}

// NewApplier returns an Applier that owns its fields as fieldManager.
func (b *Bed) NewApplier(fieldManager string) (*Applier, error) {
	dyn, err := dynamic.NewForConfig(b.Admin)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(b.Kube.Discovery()))
	return &Applier{dyn: dyn, mapper: mapper, fieldManager: fieldManager}, nil
}

// Apply applies one object; with dryRun the API server validates and admits
// it (webhooks included) and changes nothing.
func (a *Applier) Apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) error {
	gvk := obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s %s: no API for it: %w", gvk.Kind, obj.GetName(), err)
	}
	opts := metav1.ApplyOptions{FieldManager: a.fieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var r dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == "namespace" {
		r = a.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	} else if obj.GetNamespace() != "" {
		return fmt.Errorf("%s %s is cluster-scoped but has namespace %q", gvk.Kind, obj.GetName(), obj.GetNamespace())
	}
	if _, err := r.Apply(ctx, obj.GetName(), obj, opts); err != nil {
		return fmt.Errorf("%s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

// ApplyAll applies objects in order.
func (a *Applier) ApplyAll(ctx context.Context, objs []*unstructured.Unstructured) error {
	for _, obj := range objs {
		if err := a.Apply(ctx, obj, false); err != nil {
			return err
		}
	}
	return nil
}
