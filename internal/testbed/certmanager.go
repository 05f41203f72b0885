package testbed

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

var getOpts = metav1.GetOptions{}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func (b *Bed) startCertManager(ctx context.Context) error {
	if err := b.installCRDs(ctx); err != nil {
		return err
	}
	if _, err := b.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: CertManagerNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", CertManagerNamespace, err)
	}
	if err := b.startWebhook(ctx); err != nil {
		return err
	}
	p, err := b.StartProcess("cert-manager-controller", b.Binary("cert-manager-controller"),
		"--kubeconfig="+b.AdminKubeconfig,
		"--cluster-resource-namespace="+CertManagerNamespace,
		// The issuer loops, and the Certificate loops a cluster's cert-manager
		// runs too (the example overlay's CA is a Certificate).
		"--controllers=issuers,clusterissuers,certificaterequests-issuer-ca,certificaterequests-issuer-selfsigned,"+
			"certificates-trigger,certificates-issuing,certificates-key-manager,"+
			"certificates-request-manager,certificates-readiness,certificates-revision-manager",
		"--v=2")
	b.certManagerController = p
	return err
}

// installCRDs applies cert-manager's own CRDs from the module it is built from.
func (b *Bed) installCRDs(ctx context.Context) error {
	dir, err := certManagerModuleDir()
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "deploy", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs under %s/deploy/crds (%v)", dir, err)
	}
	dyn, err := dynamic.NewForConfig(b.Admin)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read CRD %s: %w", f, err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			obj := &unstructured.Unstructured{}
			if err := dec.Decode(&obj.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return fmt.Errorf("decode CRD %s: %w", f, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			if _, err := dyn.Resource(crdResource).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create CRD %s: %w", obj.GetName(), err)
			}
			names = append(names, obj.GetName())
		}
	}
	return b.apiServer.waitFor(ctx, "CRDs established", func(ctx context.Context) error {
		for _, name := range names {
			crd, err := dyn.Resource(crdResource).Get(ctx, name, getOpts)
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			established := false
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					established = true
				}
			}
			if !established {
				return fmt.Errorf("CRD %s: %w", name, errNotReady)
			}
		}
		return nil
	})
}

func certManagerModuleDir() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	if err != nil {
		return "", fmt.Errorf("locate the cert-manager module (go list -m): %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", errors.New("locate the cert-manager module: not downloaded (run go mod download)")
	}
	return dir, nil
}

// startWebhook runs cert-manager's webhook on loopback and registers it with
// the API server, as its Helm chart does, with a url instead of a Service.
func (b *Bed) startWebhook(ctx context.Context) error {
	ports, err := FreePorts(2)
	if err != nil {
		return err
	}
	port, healthPort := ports[0], ports[1]
	wh, err := b.StartProcess("cert-manager-webhook", b.Binary("cert-manager-webhook"),
		"--kubeconfig="+b.AdminKubeconfig,
		"--secure-port="+strconv.Itoa(port),
		"--listen-host=127.0.0.1",
		"--healthz-port="+strconv.Itoa(healthPort),
		"--tls-cert-file="+b.webhookCert,
		"--tls-private-key-file="+b.webhookKey,
		"--v=2")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b.ClusterCAPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if err := wh.waitFor(ctx, "healthz", httpOK(client, "http://127.0.0.1:"+strconv.Itoa(healthPort)+"/healthz")); err != nil {
		return err
	}
	base := "https://127.0.0.1:" + strconv.Itoa(port)
	none := admissionv1.SideEffectClassNone
	fail := admissionv1.Fail
	equivalent := admissionv1.Equivalent
	timeout := int32(10)
	mutatePath, validatePath := base+"/mutate", base+"/validate"
	mutating := &admissionv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "cert-manager-webhook"},
		Webhooks: []admissionv1.MutatingWebhook{{
			Name:                    "webhook.cert-manager.io",
			ClientConfig:            admissionv1.WebhookClientConfig{URL: &mutatePath, CABundle: b.ClusterCAPEM},
			Rules:                   []admissionv1.RuleWithOperations{rule([]string{"cert-manager.io"}, "certificaterequests", admissionv1.Create)},
			AdmissionReviewVersions: []string{"v1"},
			MatchPolicy:             &equivalent,
			TimeoutSeconds:          &timeout,
			FailurePolicy:           &fail,
			SideEffects:             &none,
		}},
	}
	validating := &admissionv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "cert-manager-webhook"},
		Webhooks: []admissionv1.ValidatingWebhook{{
			Name:                    "webhook.cert-manager.io",
			ClientConfig:            admissionv1.WebhookClientConfig{URL: &validatePath, CABundle: b.ClusterCAPEM},
			Rules:                   []admissionv1.RuleWithOperations{rule([]string{"cert-manager.io", "acme.cert-manager.io"}, "*/*", admissionv1.Create, admissionv1.Update)},
			AdmissionReviewVersions: []string{"v1"},
			MatchPolicy:             &equivalent,
			TimeoutSeconds:          &timeout,
			FailurePolicy:           &fail,
			SideEffects:             &none,
		}},
	}
	reg := b.Kube.AdmissionregistrationV1()
	if _, err := reg.MutatingWebhookConfigurations().Create(ctx, mutating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("register mutating webhook: %w", err)
	}
	if _, err := reg.ValidatingWebhookConfigurations().Create(ctx, validating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("register validating webhook: %w", err)
	}
	return nil
}

func rule(groups []string, resource string, ops ...admissionv1.OperationType) admissionv1.RuleWithOperations {
	return admissionv1.RuleWithOperations{
		Operations: ops,
		Rule:       admissionv1.Rule{APIGroups: groups, APIVersions: []string{"v1"}, Resources: []string{resource}},
	}
}

// createClusterIssuer makes the bed's CA ClusterIssuer (ClusterIssuerName).
func (b *Bed) createClusterIssuer(ctx context.Context) error {
	caPEM, err := b.CreateCAClusterIssuer(ctx, ClusterIssuerName)
	if err != nil {
		return err
	}
	b.Issuer, b.IssuerCAPEM = ClusterIssuerName, caPEM
	return nil
}

// CreateCAClusterIssuer makes a self-signed root, stores it as a Secret in
// cert-manager's namespace and creates a CA ClusterIssuer of that name on
// it; it returns the root (PEM) when cert-manager says the issuer is Ready.
func (b *Bed) CreateCAClusterIssuer(ctx context.Context, name string) ([]byte, error) {
	if b.certManagerController == nil {
		return nil, fmt.Errorf("create ClusterIssuer %s: the bed runs no cert-manager", name)
	}
	root, err := newAuthority("svid-csi test bed SPIFFE root " + name)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(root.key)
	if err != nil {
		return nil, fmt.Errorf("marshal issuer CA key: %w", err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: CertManagerNamespace},
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       root.certPEM,
			corev1.TLSPrivateKeyKey: encodePEM("PRIVATE KEY", keyDER),
			"ca.crt":                root.certPEM,
		},
	}
	if _, err := b.Kube.CoreV1().Secrets(CertManagerNamespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create issuer CA secret: %w", err)
	}
	issuer := &cmapi.ClusterIssuer{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: name}}},
	}
	if _, err := b.CertManager.CertmanagerV1().ClusterIssuers().Create(ctx, issuer, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create ClusterIssuer %s: %w", name, err)
	}
	if err := b.certManagerController.waitFor(ctx, "ClusterIssuer Ready", func(ctx context.Context) error {
		return b.clusterIssuerReady(ctx, name)
	}); err != nil {
		return nil, err
	}
	return root.certPEM, nil
}

// clusterIssuerReady is nil once cert-manager says the ClusterIssuer is Ready.
func (b *Bed) clusterIssuerReady(ctx context.Context, name string) error {
	ci, err := b.CertManager.CertmanagerV1().ClusterIssuers().Get(ctx, name, getOpts)
	if err != nil {
		return err
	}
	for _, c := range ci.Status.Conditions {
		if c.Type == cmapi.IssuerConditionReady && c.Status == cmmeta.ConditionTrue {
			return nil
		}
	}
	return fmt.Errorf("ClusterIssuer %s: %w (%+v)", name, errNotReady, ci.Status.Conditions)
}
