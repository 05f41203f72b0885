package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/svid-csi/svid-csi/internal/testbed"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

const (
	namespace    = "cert-manager"
	driverName   = "svid-csi-driver"
	approverName = "svid-csi-approver"
)

func convert[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return out
}

// workloads returns the driver DaemonSet and the approver Deployment of a render.
func workloads(t testing.TB, objs []*unstructured.Unstructured) (*appsv1.DaemonSet, *appsv1.Deployment) {
	t.Helper()
	return convert[appsv1.DaemonSet](t, findOne(t, objs, "DaemonSet", driverName)),
		convert[appsv1.Deployment](t, findOne(t, objs, "Deployment", approverName))
}

// flagValue returns the value of --name=value in args and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if argFlag(a) == name {
			_, v, _ := strings.Cut(a, "=")
			return v, true
		}
	}
	return "", false
}

// expandArgs resolves $(VAR) in a container's args as the kubelet does, from
// its env (literal values, the rendered ConfigMaps, and the downward API
// fields the manifests use).
func expandArgs(t testing.TB, objs []*unstructured.Unstructured, c corev1.Container) []string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.ConfigMapKeyRef != nil:
			cm := convert[corev1.ConfigMap](t, findOne(t, objs, "ConfigMap", e.ValueFrom.ConfigMapKeyRef.Name))
			env[e.Name] = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env[e.Name] = namespace
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env[e.Name] = "node-1"
		default:
			t.Fatalf("%s: env %s: unsupported source %+v", c.Name, e.Name, e.ValueFrom)
		}
	}
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = envRef.ReplaceAllStringFunc(a, func(ref string) string { return env[ref[2:len(ref)-1]] })
	}
	return args
}

func TestEveryTarget(t *testing.T) {
	driverFlags := registeredFlags(t, "driver")
	approverFlags := registeredFlags(t, "approver")
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			objs := render(t, tg.dir).objects
			t.Run("CSIDriver", func(t *testing.T) { checkCSIDriver(t, objs) })
			t.Run("request mode", func(t *testing.T) { checkRequestMode(t, objs) })
			t.Run("namespaces", func(t *testing.T) { checkNamespaces(t, objs) })
			ds, dep := workloads(t, objs)
			t.Run("driver args", func(t *testing.T) { checkArgs(t, objs, &ds.Spec.Template.Spec, driverFlags) })
			t.Run("approver args", func(t *testing.T) { checkArgs(t, objs, &dep.Spec.Template.Spec, approverFlags) })
			t.Run("DaemonSet", func(t *testing.T) { checkDaemonSet(t, ds) })
			t.Run("Deployment", func(t *testing.T) { checkDeployment(t, dep) })
			t.Run("live config", func(t *testing.T) { checkLiveConfig(t, objs, ds, dep) })
			t.Run("runtime issuer", func(t *testing.T) { checkRuntimeIssuer(t, objs, ds, dep) })
			t.Run("signers", func(t *testing.T) { checkSigners(t, objs) })
			t.Run("CA bundle", func(t *testing.T) { checkCABundle(t, ds) })
			t.Run("RBAC subjects", func(t *testing.T) { checkBindings(t, objs) })
		})
	}
}

// The CSIDriver's name is the driver's default --driver-name, and both
// binaries are told the same name.
func checkCSIDriver(t *testing.T, objs []*unstructured.Unstructured) {
	drivers := find(objs, "CSIDriver")
	if len(drivers) != 1 {
		t.Fatalf("rendered %d CSIDriver objects, want 1", len(drivers))
	}
	d := convert[storagev1.CSIDriver](t, drivers[0])
	if d.Name != spiffe.DefaultDriverName {
		t.Errorf("CSIDriver name %q, want spiffe.DefaultDriverName %q", d.Name, spiffe.DefaultDriverName)
	}
	s := d.Spec
	switch {
	case s.AttachRequired == nil || *s.AttachRequired:
		t.Error("attachRequired must be false")
	case s.PodInfoOnMount == nil || !*s.PodInfoOnMount:
		t.Error("podInfoOnMount must be true")
	case len(s.VolumeLifecycleModes) != 1 || s.VolumeLifecycleModes[0] != storagev1.VolumeLifecycleEphemeral:
		t.Errorf("volumeLifecycleModes %v, want [Ephemeral]", s.VolumeLifecycleModes)
	case s.RequiresRepublish == nil || !*s.RequiresRepublish:
		t.Error("requiresRepublish must be true")
	case s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy:
		t.Error("fsGroupPolicy must be File")
	}
	ds, dep := workloads(t, objs)
	for _, spec := range []*corev1.PodSpec{&ds.Spec.Template.Spec, &dep.Spec.Template.Spec} {
		if v, ok := flagValue(spec.Containers[0].Args, "driver-name"); ok && v != d.Name {
			t.Errorf("%s: --driver-name=%s, CSIDriver is %s", spec.ServiceAccountName, v, d.Name)
		}
	}
}

var clusterScoped = map[string]bool{
	"CSIDriver": true, "ClusterRole": true, "ClusterRoleBinding": true, "ClusterIssuer": true,
	"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true,
}

// No Namespace object (a prune would delete cert-manager), and everything
// namespaced lives in cert-manager.
func checkNamespaces(t *testing.T, objs []*unstructured.Unstructured) {
	for _, o := range objs {
		switch {
		case o.GetKind() == "Namespace":
			t.Errorf("renders Namespace %q: the manifests must never create or own a namespace", o.GetName())
		case clusterScoped[o.GetKind()] && o.GetNamespace() != "":
			t.Errorf("cluster-scoped %s %s has namespace %q", o.GetKind(), o.GetName(), o.GetNamespace())
		case !clusterScoped[o.GetKind()] && o.GetNamespace() != namespace:
			t.Errorf("%s %s is in namespace %q, want %q", o.GetKind(), o.GetName(), o.GetNamespace(), namespace)
		}
		if o.GetLabels()["app.kubernetes.io/part-of"] != "svid-csi" {
			t.Errorf("%s %s lacks the label app.kubernetes.io/part-of=svid-csi", o.GetKind(), o.GetName())
		}
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// Every flag in the args is one the binary registers; every $(VAR) names an
// env var of the container (else the kubelet passes it literally); every
// ConfigMap key an env var reads is rendered.
func checkArgs(t *testing.T, objs []*unstructured.Unstructured, spec *corev1.PodSpec, registered map[string]bool) {
	if len(spec.Containers) == 0 {
		t.Fatal("no containers")
	}
	c := spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	seen := map[string]bool{}
	for _, a := range c.Args {
		name := argFlag(a)
		if name == "" {
			t.Errorf("%s: positional argument %q", c.Name, a)
			continue
		}
		if !registered[name] {
			t.Errorf("%s: %q: the binary has no flag %q (it has %v)", c.Name, a, name, sortedKeys(registered))
		}
		if seen[name] {
			t.Errorf("%s: flag %q given twice", c.Name, name)
		}
		seen[name] = true
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			if _, ok := env[m[1]]; !ok {
				t.Errorf("%s: %q refers to $(%s), which the container does not define", c.Name, a, m[1])
			}
		}
	}
	for _, e := range c.Env {
		ref := e.ValueFrom
		if ref == nil || ref.ConfigMapKeyRef == nil {
			continue
		}
		cm := convert[corev1.ConfigMap](t, findOne(t, objs, "ConfigMap", ref.ConfigMapKeyRef.Name))
		if v := cm.Data[ref.ConfigMapKeyRef.Key]; v == "" {
			t.Errorf("%s: env %s reads ConfigMap %s key %q, which is missing or empty", c.Name, e.Name, cm.Name, ref.ConfigMapKeyRef.Key)
		}
	}
}

func mountOf(c *corev1.Container, path string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func hostPathOf(spec *corev1.PodSpec, volume string) string {
	for _, v := range spec.Volumes {
		if v.Name == volume && v.HostPath != nil {
			return v.HostPath.Path
		}
	}
	return ""
}

// One container, privileged, with Bidirectional propagation on the kubelet's
// pods dir and the data root, each mounted at its host path.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	spec := &ds.Spec.Template.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("driver pod has %d containers and %d init containers, want exactly one container (no sidecars)",
			len(spec.Containers), len(spec.InitContainers))
	}
	c := &spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("driver container must be privileged (Bidirectional mount propagation needs it)")
	}
	// The kubelet root reaches the flag through a literal env value that
	// overlays/components/kubelet-root-dir rewrites with the host paths.
	literal := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			literal[e.Name] = e.Value
		}
	}
	kubeletRoot, ok := flagValue(c.Args, "kubelet-root-dir")
	kubeletRoot = envRef.ReplaceAllStringFunc(kubeletRoot, func(ref string) string { return literal[ref[2:len(ref)-1]] })
	if !ok {
		kubeletRoot = "/var/lib/kubelet"
	}
	dataRoot, ok := flagValue(c.Args, "data-root")
	if !ok {
		t.Fatal("no --data-root")
	}
	if strings.HasPrefix(dataRoot, "/tmp") {
		t.Errorf("--data-root=%s: tmp cleaners delete /tmp", dataRoot)
	}
	for _, p := range []string{filepath.Join(kubeletRoot, "pods"), dataRoot} {
		m := mountOf(c, p)
		switch {
		case m == nil:
			t.Errorf("%s is not mounted", p)
		case m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional:
			t.Errorf("%s: mountPropagation %v, want Bidirectional", p, m.MountPropagation)
		case hostPathOf(spec, m.Name) != p:
			t.Errorf("%s: mounted from host path %q, want the same path", p, hostPathOf(spec, m.Name))
		}
	}
	// The kubelet dials the socket path the driver registers, so the socket's
	// directory and plugins_registry must be the host's paths.
	socketDir := filepath.Join(kubeletRoot, "plugins", spiffe.DefaultDriverName)
	if ep, ok := flagValue(c.Args, "endpoint"); ok {
		socketDir = filepath.Dir(strings.TrimPrefix(ep, "unix://"))
	}
	for _, p := range []string{socketDir, filepath.Join(kubeletRoot, "plugins_registry")} {
		if m := mountOf(c, p); m == nil || hostPathOf(spec, m.Name) != p {
			t.Errorf("%s must be mounted from the same host path", p)
		}
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", spec.PriorityClassName)
	}
	// Liveness and startup never wait for the API server; readiness does.
	for _, p := range []struct {
		name, path string
		probe      *corev1.Probe
	}{{"startup", "/healthz", c.StartupProbe}, {"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path {
			t.Errorf("driver needs a %s probe on %s", p.name, p.path)
		}
	}
	if _, ok := flagValue(c.Args, "node-id"); !ok {
		t.Error("no --node-id")
	}
}

// The approver: leader-elected replicas, non-root, read-only, no capabilities.
func checkDeployment(t *testing.T, dep *appsv1.Deployment) {
	spec := &dep.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("approver pod has %d containers, want 1", len(spec.Containers))
	}
	c := &spec.Containers[0]
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Error("approver needs at least 2 replicas")
	}
	psc, sc := spec.SecurityContext, c.SecurityContext
	switch {
	case psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot:
		t.Error("approver must run as non-root")
	case psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("approver needs seccomp RuntimeDefault")
	case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("approver needs a read-only root filesystem")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("approver must not allow privilege escalation")
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
		t.Error("approver must drop ALL capabilities and add none")
	case c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz":
		t.Error("approver needs a liveness probe on /healthz")
	case c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz":
		t.Error("approver needs a readiness probe on /readyz")
	}
}

// runtimeFlag is the one value of --runtime-issuance-configmap: the workload's
// namespace and RUNTIME_ISSUANCE_CONFIGMAP of svid-csi-config.
const runtimeFlag = "$(POD_NAMESPACE)/$(RUNTIME_ISSUANCE_CONFIGMAP)"

// With --runtime-issuance-configmap, both binaries get the same flag, which
// resolves (through their env) to <namespace>/<RUNTIME_ISSUANCE_CONFIGMAP of
// the rendered svid-csi-config>; no ConfigMap of that name is rendered (it is
// the operator's: server-side apply and GitOps self-heal must never touch
// it); and both ServiceAccounts may get/list/watch that one ConfigMap, and no
// other.
func checkRuntimeIssuer(t *testing.T, objs []*unstructured.Unstructured, ds *appsv1.DaemonSet, dep *appsv1.Deployment) {
	dc, ac := ds.Spec.Template.Spec.Containers[0], dep.Spec.Template.Spec.Containers[0]
	dv, dok := flagValue(dc.Args, "runtime-issuance-configmap")
	av, aok := flagValue(ac.Args, "runtime-issuance-configmap")
	if dok != aok || dv != av {
		t.Fatalf("driver has --runtime-issuance-configmap=%q (%v), approver %q (%v): want the same", dv, dok, av, aok)
	}
	if !dok {
		for _, sa := range []string{driverName, approverName} {
			if names := readableConfigMaps(t, objs, sa); !slices.Equal(names, []string{configName}) {
				t.Errorf("ServiceAccount %s may read ConfigMaps %v without a runtime issuer, want exactly [%s]", sa, names, configName)
			}
		}
		for _, m := range []metav1.ObjectMeta{ds.Spec.Template.ObjectMeta, dep.Spec.Template.ObjectMeta} {
			if v, ok := m.Annotations[runtimeAnnotation]; ok {
				t.Errorf("pod template annotated %s=%s without a runtime issuer", runtimeAnnotation, v)
			}
		}
		return
	}
	if dv != runtimeFlag {
		t.Errorf("--runtime-issuance-configmap=%s, want %s (the name is one value in config.env)", dv, runtimeFlag)
	}
	name := renderedConfig(t, objs)["RUNTIME_ISSUANCE_CONFIGMAP"]
	if name == "" {
		t.Fatal("svid-csi-config has no RUNTIME_ISSUANCE_CONFIGMAP")
	}
	for _, c := range []corev1.Container{dc, ac} {
		if got, _ := flagValue(expandArgs(t, objs, c), "runtime-issuance-configmap"); got != namespace+"/"+name {
			t.Errorf("%s: --runtime-issuance-configmap=%s resolves to %q, want %q", c.Name, dv, got, namespace+"/"+name)
		}
	}
	if isRendered(objs, "ConfigMap", name) {
		t.Errorf("renders ConfigMap %s: the runtime issuer ConfigMap is the operator's (apply and self-heal would undo its edits, prune would delete it)", name)
	}
	want := []string{name, configName}
	slices.Sort(want)
	for _, sa := range []string{driverName, approverName} {
		if !roleAllows(t, objs, sa, "configmaps", name, "get", "list", "watch") {
			t.Errorf("ServiceAccount %s may not get/list/watch ConfigMap %s", sa, name)
		}
		if names := readableConfigMaps(t, objs, sa); !slices.Equal(names, want) {
			t.Errorf("ServiceAccount %s may read ConfigMaps %v, want exactly %v", sa, names, want)
		}
	}
	// The binaries read the name at start only: it is in the pod templates,
	// so renaming it rolls them.
	for _, m := range []metav1.ObjectMeta{ds.Spec.Template.ObjectMeta, dep.Spec.Template.ObjectMeta} {
		if got := m.Annotations[runtimeAnnotation]; got != name {
			t.Errorf("pod template annotation %s=%q, want %q (RUNTIME_ISSUANCE_CONFIGMAP)", runtimeAnnotation, got, name)
		}
	}
}

// configName is the shared configuration ConfigMap: not hashed, read live.
const configName = "svid-csi-config"

// runtimeAnnotation on both pod templates carries RUNTIME_ISSUANCE_CONFIGMAP.
const runtimeAnnotation = "svid-csi.io/runtime-issuance-configmap"

// Both binaries follow svid-csi-config live: it is rendered under its own
// name (no hash), both get --config-configmap naming it in their namespace,
// and both ServiceAccounts may get/list/watch it.
func checkLiveConfig(t *testing.T, objs []*unstructured.Unstructured, ds *appsv1.DaemonSet, dep *appsv1.Deployment) {
	if !isRendered(objs, "ConfigMap", configName) {
		t.Fatalf("ConfigMap %s not rendered under its own name", configName)
	}
	for _, c := range []corev1.Container{ds.Spec.Template.Spec.Containers[0], dep.Spec.Template.Spec.Containers[0]} {
		if got, _ := flagValue(expandArgs(t, objs, c), "config-configmap"); got != namespace+"/"+configName {
			t.Errorf("%s: --config-configmap resolves to %q, want %s/%s", c.Name, got, namespace, configName)
		}
	}
	for _, sa := range []string{driverName, approverName} {
		if !roleAllows(t, objs, sa, "configmaps", configName, "get", "list", "watch") {
			t.Errorf("ServiceAccount %s may not get/list/watch ConfigMap %s", sa, configName)
		}
	}
}

// readableConfigMaps returns the ConfigMap names the rendered Roles and
// ClusterRoles bound to a ServiceAccount grant anything on ("*" for a rule
// without resourceNames), sorted and without repeats.
func readableConfigMaps(t *testing.T, objs []*unstructured.Unstructured, sa string) []string {
	var names []string
	for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
		for _, u := range find(objs, kind) {
			rb := convert[rbacv1.ClusterRoleBinding](t, u) // same shape as RoleBinding
			bound := false
			for _, s := range rb.Subjects {
				bound = bound || (s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == namespace)
			}
			if !bound || !isRendered(objs, rb.RoleRef.Kind, rb.RoleRef.Name) {
				continue
			}
			role := convert[rbacv1.ClusterRole](t, findOne(t, objs, rb.RoleRef.Kind, rb.RoleRef.Name)) // same shape as Role
			for _, r := range role.Rules {
				if !(contains(r.APIGroups, "") || contains(r.APIGroups, "*")) || !(contains(r.Resources, "configmaps") || contains(r.Resources, "*")) {
					continue
				}
				if len(r.ResourceNames) == 0 {
					names = append(names, "*")
				}
				names = append(names, r.ResourceNames...)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// renderedConfig returns the data of the rendered svid-csi-config.
func renderedConfig(t testing.TB, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	var found *corev1.ConfigMap
	for _, u := range find(objs, "ConfigMap") {
		if strings.HasPrefix(u.GetName(), configName) {
			if found != nil {
				t.Fatalf("two svid-csi-config ConfigMaps rendered: %s and %s", found.Name, u.GetName())
			}
			found = convert[corev1.ConfigMap](t, u)
		}
	}
	if found == nil {
		t.Fatal("no svid-csi-config ConfigMap rendered")
	}
	if found.Name != configName {
		t.Fatalf("svid-csi-config rendered as %s: a hashed name would roll every pod on each edit, and the binaries watch %s", found.Name, configName)
	}
	return found.Data
}

const signersRole = "svid-csi-approver:signers"

// The approver may approve exactly one signer, the configured issuer's:
// ISSUER_RESOURCE/ISSUER_NAME of the rendered svid-csi-config, in the
// ClusterRole svid-csi-approver:signers bound to it, one rule with no
// wildcard; no other rendered role grants anything on signers, or approve.
func checkSigners(t *testing.T, objs []*unstructured.Unstructured) {
	cfg := renderedConfig(t, objs)
	want := cfg["ISSUER_RESOURCE"] + "/" + cfg["ISSUER_NAME"]
	role := convert[rbacv1.ClusterRole](t, findOne(t, objs, "ClusterRole", signersRole))
	if len(role.Rules) != 1 {
		t.Fatalf("ClusterRole %s has %d rules, want exactly 1: %+v", signersRole, len(role.Rules), role.Rules)
	}
	r := role.Rules[0]
	for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
		for _, v := range list {
			if strings.Contains(v, "*") {
				t.Errorf("ClusterRole %s: %q: no wildcard may appear in the signers rule", signersRole, v)
			}
		}
	}
	if !slices.Equal(r.APIGroups, []string{"cert-manager.io"}) || !slices.Equal(r.Resources, []string{"signers"}) ||
		!slices.Equal(r.Verbs, []string{"approve"}) || len(r.NonResourceURLs) != 0 {
		t.Errorf("ClusterRole %s: rule %+v, want approve on cert-manager.io signers only", signersRole, r)
	}
	if !slices.Equal(r.ResourceNames, []string{want}) {
		t.Errorf("ClusterRole %s: resourceNames %v, want [%s] (ISSUER_RESOURCE/ISSUER_NAME of svid-csi-config; an overlay that merges its own config needs overlays/components/config-rbac)",
			signersRole, r.ResourceNames, want)
	}
	crb := convert[rbacv1.ClusterRoleBinding](t, findOne(t, objs, "ClusterRoleBinding", signersRole))
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != signersRole || len(crb.Subjects) != 1 ||
		crb.Subjects[0].Kind != "ServiceAccount" || crb.Subjects[0].Name != approverName || crb.Subjects[0].Namespace != namespace {
		t.Errorf("ClusterRoleBinding %s: %+v to %+v, want ClusterRole %s to ServiceAccount %s/%s only",
			signersRole, crb.RoleRef, crb.Subjects, signersRole, namespace, approverName)
	}
	for _, kind := range []string{"ClusterRole", "Role"} {
		for _, u := range find(objs, kind) {
			if kind == "ClusterRole" && u.GetName() == signersRole {
				continue
			}
			other := convert[rbacv1.ClusterRole](t, u) // same shape as Role
			for _, r := range other.Rules {
				if contains(r.Resources, "signers") || contains(r.Resources, "*") || contains(r.Verbs, "approve") || contains(r.Verbs, "*") {
					t.Errorf("%s %s: rule %+v: only %s may grant on signers, and no role a wildcard", kind, other.Name, r, signersRole)
				}
			}
		}
	}
}

// roleAllows reports whether a Role bound to the ServiceAccount in namespace
// allows every verb on the named core resource.
func roleAllows(t *testing.T, objs []*unstructured.Unstructured, sa, resource, name string, verbs ...string) bool {
	for _, u := range find(objs, "RoleBinding") {
		rb := convert[rbacv1.RoleBinding](t, u)
		bound := false
		for _, s := range rb.Subjects {
			bound = bound || (s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == namespace)
		}
		if !bound || rb.RoleRef.Kind != "Role" {
			continue
		}
		role := convert[rbacv1.Role](t, findOne(t, objs, "Role", rb.RoleRef.Name))
		missing := map[string]bool{}
		for _, v := range verbs {
			missing[v] = true
		}
		for _, r := range role.Rules {
			if !contains(r.APIGroups, "") || !contains(r.Resources, resource) ||
				(len(r.ResourceNames) > 0 && !contains(r.ResourceNames, name)) {
				continue
			}
			for _, v := range r.Verbs {
				delete(missing, v)
			}
		}
		if len(missing) == 0 {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// --source-ca-bundle points into a volume mounted into the driver.
func checkCABundle(t *testing.T, ds *appsv1.DaemonSet) {
	c := &ds.Spec.Template.Spec.Containers[0]
	path, ok := flagValue(c.Args, "source-ca-bundle")
	if !ok {
		return
	}
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(path, m.MountPath+"/") {
			if m.SubPath != "" {
				t.Errorf("%s is mounted with subPath: the kubelet never updates it", m.MountPath)
			}
			return
		}
	}
	t.Errorf("--source-ca-bundle=%s is in no mounted volume", path)
}

// Every ServiceAccount subject of a binding is rendered (a binding to a
// ServiceAccount that an overlay renamed or moved grants nothing).
func checkBindings(t *testing.T, objs []*unstructured.Unstructured) {
	sas := map[string]bool{}
	for _, o := range find(objs, "ServiceAccount") {
		sas[o.GetNamespace()+"/"+o.GetName()] = true
	}
	for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
		for _, u := range find(objs, kind) {
			rb := convert[rbacv1.ClusterRoleBinding](t, u) // same shape as RoleBinding
			for _, s := range rb.Subjects {
				if s.Kind == "ServiceAccount" && !sas[s.Namespace+"/"+s.Name] {
					t.Errorf("%s %s binds ServiceAccount %s/%s, which is not rendered", kind, rb.Name, s.Namespace, s.Name)
				}
			}
			if !isRendered(objs, rb.RoleRef.Kind, rb.RoleRef.Name) {
				t.Errorf("%s %s refers to %s %s, which is not rendered", kind, rb.Name, rb.RoleRef.Kind, rb.RoleRef.Name)
			}
		}
	}
}

func isRendered(objs []*unstructured.Unstructured, kind, name string) bool {
	for _, o := range find(objs, kind) {
		if o.GetName() == name {
			return true
		}
	}
	return false
}

// A changed config.env changes svid-csi-config in place and no pod
// template: both binaries read its values live, so nothing rolls (and no
// request is denied while a rollout would spread). Renaming the runtime
// issuer ConfigMap, which the binaries read at start only, rolls both.
func TestConfigChangeRollsNoPod(t *testing.T) {
	ds0, dep0 := workloads(t, render(t, "../../overlays/example").objects)
	for name, c := range map[string]struct {
		literals []string
		rolls    bool
	}{
		"trust domain and duration": {[]string{"TRUST_DOMAIN=example.org", "CERTIFICATE_REQUEST_DURATION=2h"}, false},
		"issuer":                    {[]string{"ISSUER_NAME=other-ca", "ISSUER_RESOURCE=clusterissuers.cert-manager.io"}, false},
		"runtime ConfigMap name":    {[]string{"RUNTIME_ISSUANCE_CONFIGMAP=renamed"}, true},
	} {
		t.Run(name, func(t *testing.T) {
			objs := render(t, scratchOverlay(t, userOverlay("overlays/example", []string{"config-rbac"}, c.literals...))).objects
			data := renderedConfig(t, objs)
			for _, l := range c.literals {
				k, v, _ := strings.Cut(l, "=")
				if data[k] != v {
					t.Errorf("svid-csi-config %s=%q, want %q", k, data[k], v)
				}
			}
			ds, dep := workloads(t, objs)
			same := equality.Semantic.DeepEqual(ds.Spec.Template, ds0.Spec.Template) &&
				equality.Semantic.DeepEqual(dep.Spec.Template, dep0.Spec.Template)
			if same == c.rolls {
				t.Errorf("pod templates unchanged = %v, want %v", same, !c.rolls)
			}
		})
	}
}

// The kustomizations follow the project's rules: no deprecated or renaming
// fields, nothing remote.
func TestKustomizationRules(t *testing.T) {
	forbidden := []string{"commonLabels:", "namePrefix:", "nameSuffix:", "patchesStrategicMerge:", "patchesJson6902:", "bases:", "://"}
	var files []string
	for _, root := range []string{"../../kustomize", "../../overlays", "testdata"} {
		err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() == "kustomization.yaml" {
				files = append(files, p)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(files) < 8 {
		t.Fatalf("found only %d kustomization.yaml files: %v", len(files), files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			for _, bad := range forbidden {
				if strings.Contains(line, bad) {
					t.Errorf("%s:%d: %q is not allowed (%s)", f, i+1, bad, strings.TrimSpace(line))
				}
			}
		}
		isComponent := strings.Contains(string(data), "kind: Component")
		if strings.Contains(f, "components") != isComponent {
			t.Errorf("%s: components live in overlays/components and only there (kind: Component)", f)
		}
	}
}

// overlays/components/kubelet-root-dir without KUBELET_ROOT_DIR in the
// config fails the build, naming the key, rather than rendering the default
// paths silently.
func TestKubeletRootDirNeedsTheKey(t *testing.T) {
	fs := filesys.MakeFsInMemory()
	for _, dir := range []string{"kustomize", "overlays/components/kubelet-root-dir"} {
		entries, err := os.ReadDir(filepath.Join("../..", dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join("../..", dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := fs.WriteFile("/"+dir+"/"+e.Name(), data); err != nil {
				t.Fatal(err)
			}
		}
	}
	kust := "resources:\n- ../kustomize\ncomponents:\n- ../overlays/components/kubelet-root-dir\n"
	if err := fs.WriteFile("/overlay/kustomization.yaml", []byte(kust)); err != nil {
		t.Fatal(err)
	}
	_, err := testbed.Render(fs, "/overlay")
	if err == nil || !strings.Contains(err.Error(), "KUBELET_ROOT_DIR") {
		t.Fatalf("build without KUBELET_ROOT_DIR: %v, want an error naming it", err)
	}
	// And with it, the build works.
	kust += "configMapGenerator:\n- name: svid-csi-config\n  namespace: cert-manager\n  behavior: merge\n  literals:\n  - KUBELET_ROOT_DIR=/var/lib/k0s/kubelet\n"
	if err := fs.WriteFile("/overlay/kustomization.yaml", []byte(kust)); err != nil {
		t.Fatal(err)
	}
	if _, err := testbed.Render(fs, "/overlay"); err != nil {
		t.Fatal(err)
	}
}

// The request modes are consistent across the objects: the approver accepts
// the driver's mode; the driver may create requests and the approver get
// pods (node-bound, whichever mode the driver is in: the approver always
// accepts node-bound, whose checks are the stricter); pod-token, when the
// approver accepts it, gets the pods' tokens from the kubelet and the
// workload ClusterRole, and neither exists otherwise.
func checkRequestMode(t *testing.T, objs []*unstructured.Unstructured) {
	ds, dep := workloads(t, objs)
	mode, _ := flagValue(expandArgs(t, objs, ds.Spec.Template.Spec.Containers[0]), "request-mode")
	approverArgs := expandArgs(t, objs, dep.Spec.Template.Spec.Containers[0])
	v, _ := flagValue(approverArgs, "request-modes")
	modes := strings.Split(v, ",")
	if !slices.Contains(modes, mode) {
		t.Fatalf("driver --request-mode=%s, approver --request-modes=%s: the driver's requests would all be denied", mode, v)
	}
	if !slices.Contains(modes, spiffe.ModeNodeBound) {
		t.Errorf("approver --request-modes=%s: node-bound is always accepted", v)
	}
	if sa, _ := flagValue(approverArgs, "driver-service-account"); sa != namespace+"/"+ds.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("approver --driver-service-account=%s, the driver runs as %s/%s", sa, namespace, ds.Spec.Template.Spec.ServiceAccountName)
	}
	podToken := slices.Contains(modes, spiffe.ModePodToken)
	d := convert[storagev1.CSIDriver](t, findOne(t, objs, "CSIDriver", spiffe.DefaultDriverName))
	switch tokens := len(d.Spec.TokenRequests) > 0; {
	case !podToken && tokens:
		t.Errorf("node-bound only, yet the CSIDriver has the kubelet send every pod's token: %+v", d.Spec.TokenRequests)
	case podToken && (len(d.Spec.TokenRequests) != 1 || d.Spec.TokenRequests[0].Audience != ""):
		t.Errorf("pod-token: tokenRequests %+v, want [{audience: \"\"}]", d.Spec.TokenRequests)
	case podToken && (d.Spec.ServiceAccountTokenInSecrets == nil || !*d.Spec.ServiceAccountTokenInSecrets):
		t.Error("pod-token: serviceAccountTokenInSecrets must be true")
	}
	allows := func(role, group, resource, verb string) bool {
		r := convert[rbacv1.ClusterRole](t, findOne(t, objs, "ClusterRole", role))
		for _, rule := range r.Rules {
			if slices.Contains(rule.APIGroups, group) && slices.Contains(rule.Resources, resource) && slices.Contains(rule.Verbs, verb) {
				return true
			}
		}
		return false
	}
	if !allows("svid-csi-driver", "cert-manager.io", "certificaterequests", "create") {
		t.Error("the driver may not create CertificateRequests: node-bound requests would fail")
	}
	if !allows("svid-csi-approver", "", "pods", "get") {
		t.Error("the approver may not get pods: node-bound requests would never be decided")
	}
	findOne(t, objs, "ValidatingAdmissionPolicy", "svid-csi-driver-requests")
	findOne(t, objs, "ValidatingAdmissionPolicyBinding", "svid-csi-driver-requests")
	workloadRole := slices.ContainsFunc(find(objs, "ClusterRole"), func(o *unstructured.Unstructured) bool { return o.GetName() == "svid-csi-workload" })
	if workloadRole != podToken {
		t.Errorf("ClusterRole svid-csi-workload rendered: %v, approver accepts pod-token: %v", workloadRole, podToken)
	}
}
