package testbed

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// The approver's two ClusterRoles: what it reads and writes, and the one
// signer it may approve (ISSUER_RESOURCE/ISSUER_NAME of svid-csi-config).
const (
	ApproverClusterRole        = "svid-csi-approver"
	ApproverSignersClusterRole = "svid-csi-approver:signers"
)

// ShippedClusterRoleRules renders the repository's kustomize base as
// `kubectl apply -k kustomize` does (replacements applied, so the signers
// ClusterRole names the base's issuer) and returns the rules of one of its
// ClusterRoles, so that tests run the binaries with exactly the RBAC the
// project ships.
func ShippedClusterRoleRules(name string) ([]rbacv1.PolicyRule, error) {
	return ConfiguredClusterRoleRules(name, nil)
}

// ConfiguredClusterRoleRules is ShippedClusterRoleRules for other per-cluster
// values: it renders a scratch overlay the way docs/deploy.md tells users to
// write one (the base, overlays/components/config-rbac, and a
// configMapGenerator merge of config into svid-csi-config) and returns the
// rules of the ClusterRole name. With no config it renders the base itself.
func ConfiguredClusterRoleRules(name string, config map[string]string) ([]rbacv1.PolicyRule, error) {
	roles, err := renderClusterRoles(config)
	if err != nil {
		return nil, err
	}
	rules, ok := roles[name]
	if !ok {
		return nil, fmt.Errorf("no ClusterRole %q in the rendered kustomize base", name)
	}
	return rules, nil
}

// ApproverClusterRoleRules returns the rules of both approver ClusterRoles
// rendered for config (as ConfiguredClusterRoleRules): everything the shipped
// approver may do, signers included, for an issuer that config names (say
// {"ISSUER_NAME": ClusterIssuerName} for the bed's).
func ApproverClusterRoleRules(config map[string]string) ([]rbacv1.PolicyRule, error) {
	roles, err := renderClusterRoles(config)
	if err != nil {
		return nil, err
	}
	var rules []rbacv1.PolicyRule
	for _, name := range []string{ApproverClusterRole, ApproverSignersClusterRole} {
		r, ok := roles[name]
		if !ok {
			return nil, fmt.Errorf("no ClusterRole %q in the rendered kustomize base", name)
		}
		rules = append(rules, r...)
	}
	return rules, nil
}

// renderClusterRoles renders the base (config nil) or a scratch overlay of it
// and returns every ClusterRole's rules by name.
func renderClusterRoles(config map[string]string) (map[string][]rbacv1.PolicyRule, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, "kustomize")
	if len(config) > 0 {
		if dir, err = writeConfigOverlay(root, config); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	}
	r, err := Render(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, err
	}
	roles := map[string][]rbacv1.PolicyRule{}
	for _, obj := range r.Objects {
		if obj.GetKind() != "ClusterRole" {
			continue
		}
		var role rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &role); err != nil {
			return nil, fmt.Errorf("ClusterRole %s: %w", obj.GetName(), err)
		}
		roles[role.Name] = role.Rules
	}
	return roles, nil
}

// writeConfigOverlay writes a kustomization over the base with the
// config-rbac component and config merged into svid-csi-config, in a new
// temporary directory (paths relative: kustomize refuses absolute ones).
func writeConfigOverlay(root string, config map[string]string) (string, error) {
	dir, err := os.MkdirTemp("", "svid-csi-overlay-")
	if err != nil {
		return "", fmt.Errorf("scratch overlay: %w", err)
	}
	var rel [2]string
	for i, p := range []string{"kustomize", "overlays/components/config-rbac"} {
		if rel[i], err = filepath.Rel(dir, filepath.Join(root, p)); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("relative path to %s: %w", p, err)
		}
	}
	keys := make([]string, 0, len(config))
	for k := range config {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n", rel[0], rel[1])
	fmt.Fprintf(&b, "configMapGenerator:\n  - name: svid-csi-config\n    namespace: %s\n    behavior: merge\n    literals:\n", CertManagerNamespace)
	for _, k := range keys {
		fmt.Fprintf(&b, "      - %s\n", strconv.Quote(k+"="+config[k]))
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("write the scratch overlay: %w", err)
	}
	return dir, nil
}

// NewCSR makes a CSR as the driver does (a fresh P-256 key, an empty subject)
// with the given URI and DNS SANs, PEM-encoded.
func NewCSR(uris, dnsNames []string) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	tmpl := &x509.CertificateRequest{DNSNames: dnsNames}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			return nil, nil, fmt.Errorf("parse URI SAN %q: %w", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
