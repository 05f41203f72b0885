package deploy_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// scratchOverlay writes kustomization.yaml into a new temp dir, with every
// "{repo}" in it replaced by the repository's root relative to that dir
// (kustomize refuses absolute paths), and returns the dir.
func scratchOverlay(t *testing.T, kustomization string) string {
	t.Helper()
	dir := t.TempDir()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, root)
	if err != nil {
		t.Fatal(err)
	}
	k := strings.ReplaceAll(kustomization, "{repo}", filepath.ToSlash(rel))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// userOverlay is a user's kustomization over resource (a path under {repo})
// with the components listed and the literals merged into svid-csi-config.
func userOverlay(resource string, components []string, literals ...string) string {
	var b strings.Builder
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {repo}/" + resource + "\ncomponents:\n")
	for _, c := range components {
		b.WriteString("  - {repo}/overlays/components/" + c + "\n")
	}
	b.WriteString("configMapGenerator:\n  - name: svid-csi-config\n    namespace: cert-manager\n    behavior: merge\n    literals:\n")
	for _, l := range literals {
		b.WriteString("      - " + l + "\n")
	}
	return b.String()
}

// stepIssuer is a user's overlay for an external issuer (step-issuer's
// StepClusterIssuer) with the runtime issuer under another name, as
// docs/deploy.md describes it.
var stepIssuer = userOverlay("kustomize", []string{"runtime-issuer", "config-rbac"},
	"ISSUER_NAME=step-ca", "ISSUER_KIND=StepClusterIssuer", "ISSUER_GROUP=certmanager.step.sm",
	"ISSUER_RESOURCE=stepclusterissuers.certmanager.step.sm", "RUNTIME_ISSUANCE_CONFIGMAP=my-issuer")

// signerNames returns the resourceNames of the signers ClusterRole's rule.
func signerNames(t *testing.T, dir string) []string {
	t.Helper()
	role := convert[rbacv1.ClusterRole](t, findOne(t, render(t, dir).objects, "ClusterRole", signersRole))
	if len(role.Rules) != 1 {
		t.Fatalf("ClusterRole %s has %d rules, want 1", signersRole, len(role.Rules))
	}
	return role.Rules[0].ResourceNames
}

// An overlay's own values reach everything that depends on them: the
// approver's one signer becomes the external issuer's, the runtime issuer's
// Role and flags name the overlay's ConfigMap, the issuer flags the overlay's
// issuer; and the per-target checks hold for it.
func TestExternalIssuerOverlay(t *testing.T) {
	objs := render(t, scratchOverlay(t, stepIssuer)).objects
	ds, dep := workloads(t, objs)
	t.Run("signers", func(t *testing.T) { checkSigners(t, objs) })
	t.Run("runtime issuer", func(t *testing.T) { checkRuntimeIssuer(t, objs, ds, dep) })
	t.Run("driver args", func(t *testing.T) { checkArgs(t, objs, &ds.Spec.Template.Spec, registeredFlags(t, "driver")) })
	t.Run("approver args", func(t *testing.T) { checkArgs(t, objs, &dep.Spec.Template.Spec, registeredFlags(t, "approver")) })

	role := convert[rbacv1.ClusterRole](t, findOne(t, objs, "ClusterRole", signersRole))
	if want := []string{"stepclusterissuers.certmanager.step.sm/step-ca"}; !slices.Equal(role.Rules[0].ResourceNames, want) {
		t.Errorf("signers %v, want %v", role.Rules[0].ResourceNames, want)
	}
	runtimeRole := convert[rbacv1.Role](t, findOne(t, objs, "Role", "svid-csi:runtime-issuer"))
	if len(runtimeRole.Rules) != 1 || !slices.Equal(runtimeRole.Rules[0].ResourceNames, []string{"my-issuer"}) {
		t.Errorf("Role svid-csi:runtime-issuer rules %+v, want resourceNames [my-issuer]", runtimeRole.Rules)
	}
	want := map[string]string{
		"runtime-issuance-configmap": "cert-manager/my-issuer",
		"issuer-name":                "step-ca",
		"issuer-kind":                "StepClusterIssuer",
		"issuer-group":               "certmanager.step.sm",
	}
	for _, c := range [][]string{
		expandArgs(t, objs, ds.Spec.Template.Spec.Containers[0]),
		expandArgs(t, objs, dep.Spec.Template.Spec.Containers[0]),
	} {
		for f, v := range want {
			if got, _ := flagValue(c, f); got != v {
				t.Errorf("--%s resolves to %q, want %q", f, got, v)
			}
		}
	}
}

// Why every overlay with its own values needs the config-rbac component:
// without it the base's replacements (run inside the base) leave the signer
// at the base's issuer, whatever the overlay merges.
func TestConfigRBACComponentIsNeeded(t *testing.T) {
	without := strings.Replace(stepIssuer, "  - {repo}/overlays/components/config-rbac\n", "", 1)
	if without == stepIssuer {
		t.Fatal("the overlay lists no config-rbac component to remove")
	}
	if got, want := signerNames(t, scratchOverlay(t, without)), []string{"clusterissuers.cert-manager.io/svid-csi-ca"}; !slices.Equal(got, want) {
		t.Errorf("without config-rbac the signers are %v; the documented reason for the component is that they stay %v", got, want)
	}
}

// The patches docs/deploy.md gives work over the component: another signer
// for a runtime switch is appended; a namespaced Issuer's per-namespace
// signers replace the list.
func TestSignerPatches(t *testing.T) {
	add := stepIssuer + `patches:
  - target: {group: rbac.authorization.k8s.io, kind: ClusterRole, name: svid-csi-approver:signers}
    patch: |-
      - op: add
        path: /rules/0/resourceNames/-
        value: clusterissuers.cert-manager.io/other-ca
`
	if got, want := signerNames(t, scratchOverlay(t, add)),
		[]string{"stepclusterissuers.certmanager.step.sm/step-ca", "clusterissuers.cert-manager.io/other-ca"}; !slices.Equal(got, want) {
		t.Errorf("with the added signer: %v, want %v", got, want)
	}
	namespaced := userOverlay("kustomize", []string{"config-rbac"},
		"ISSUER_NAME=team-ca", "ISSUER_KIND=Issuer", "ISSUER_RESOURCE=issuers.cert-manager.io") + `patches:
  - target: {group: rbac.authorization.k8s.io, kind: ClusterRole, name: svid-csi-approver:signers}
    patch: |-
      - op: replace
        path: /rules/0/resourceNames
        value:
          - issuers.cert-manager.io/team-a.team-ca
          - issuers.cert-manager.io/team-b.team-ca
`
	if got, want := signerNames(t, scratchOverlay(t, namespaced)),
		[]string{"issuers.cert-manager.io/team-a.team-ca", "issuers.cert-manager.io/team-b.team-ca"}; !slices.Equal(got, want) {
		t.Errorf("namespaced Issuer: %v, want %v", got, want)
	}
}

// The test setups' RBAC helpers render what ships: the base's signer, or the
// one of a scratch overlay with other values; the main ClusterRole holds no
// signers rule any more.
func TestShippedClusterRoleRules(t *testing.T) {
	cases := []struct {
		config map[string]string
		want   string
	}{
		{nil, "clusterissuers.cert-manager.io/svid-csi-ca"},
		{map[string]string{"ISSUER_NAME": "testbed-ca"}, "clusterissuers.cert-manager.io/testbed-ca"},
		{map[string]string{"ISSUER_NAME": "ext", "ISSUER_RESOURCE": "externalclusterissuers.issuers.example.com"}, "externalclusterissuers.issuers.example.com/ext"},
	}
	for _, c := range cases {
		rules, err := testbed.ConfiguredClusterRoleRules(signersRole, c.config)
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) != 1 || !slices.Equal(rules[0].ResourceNames, []string{c.want}) {
			t.Errorf("config %v: signers rules %+v, want resourceNames [%s]", c.config, rules, c.want)
		}
	}
	rules, err := testbed.ShippedClusterRoleRules(approverName)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if contains(r.Resources, "signers") {
			t.Errorf("ClusterRole %s still grants %+v", approverName, r)
		}
	}
	both, err := testbed.ApproverClusterRoleRules(map[string]string{"ISSUER_NAME": "testbed-ca"})
	if err != nil {
		t.Fatal(err)
	}
	if len(both) != len(rules)+1 || !slices.Equal(both[len(both)-1].ResourceNames, []string{"clusterissuers.cert-manager.io/testbed-ca"}) {
		t.Errorf("ApproverClusterRoleRules: %+v, want %s's rules and the testbed-ca signer", both, approverName)
	}
	if _, err := testbed.ShippedClusterRoleRules("no-such-role"); err == nil {
		t.Error("a ClusterRole that is not shipped: no error")
	}
}

// A user's overlay built on overlays/example (whose components ran inside
// it, before this overlay's values were merged) gets RBAC that follows its
// values once it lists config-rbac: the signer and the runtime ConfigMap's
// Role name what it merges, as the flags do.
func TestLayeredOverlayFollowsItsValues(t *testing.T) {
	layered := userOverlay("overlays/example", []string{"config-rbac"}, "ISSUER_NAME=other-ca", "RUNTIME_ISSUANCE_CONFIGMAP=my-issuer")
	objs := render(t, scratchOverlay(t, layered)).objects
	ds, dep := workloads(t, objs)
	t.Run("signers", func(t *testing.T) { checkSigners(t, objs) })
	t.Run("runtime issuer", func(t *testing.T) { checkRuntimeIssuer(t, objs, ds, dep) })
	if got, want := signerNames(t, scratchOverlay(t, layered)), []string{"clusterissuers.cert-manager.io/other-ca"}; !slices.Equal(got, want) {
		t.Errorf("signers %v, want %v", got, want)
	}
	runtimeRole := convert[rbacv1.Role](t, findOne(t, objs, "Role", "svid-csi:runtime-issuer"))
	if len(runtimeRole.Rules) != 1 || !slices.Equal(runtimeRole.Rules[0].ResourceNames, []string{"my-issuer"}) {
		t.Errorf("Role svid-csi:runtime-issuer rules %+v, want resourceNames [my-issuer]", runtimeRole.Rules)
	}
}

// The ConfigMap CA bundle (for a bundle of several CAs, during a CA switch)
// mounts the whole ConfigMap's ca.crt, so that the kubelet updates it in
// place, and passes it to the driver; it renders no such ConfigMap: the
// bundle is the operator's (or trust-manager's).
func TestCABundleConfigMapComponent(t *testing.T) {
	objs := render(t, scratchOverlay(t, userOverlay("kustomize", []string{"ca-bundle-configmap"}))).objects
	ds, _ := workloads(t, objs)
	checkCABundle(t, ds)
	if path, ok := flagValue(ds.Spec.Template.Spec.Containers[0].Args, "source-ca-bundle"); !ok || path != "/etc/svid-csi/ca/ca.crt" {
		t.Fatalf("--source-ca-bundle = %q, %v", path, ok)
	}
	var found bool
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "ca-bundle" {
			found = v.ConfigMap != nil && v.ConfigMap.Name == "svid-csi-trust-bundle" &&
				len(v.ConfigMap.Items) == 1 && v.ConfigMap.Items[0].Key == "ca.crt"
		}
	}
	if !found {
		t.Error("no ca-bundle volume from ConfigMap svid-csi-trust-bundle, key ca.crt")
	}
	for _, u := range find(objs, "ConfigMap") {
		if u.GetName() == "svid-csi-trust-bundle" {
			t.Error("the trust bundle ConfigMap is rendered: it is the operator's")
		}
	}
}
