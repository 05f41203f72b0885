//go:build integration

package deploy_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

var bed *testbed.Bed

func TestMain(m *testing.M) {
	os.Exit(testbed.Main(m, &bed))
}

const fieldManager = "svid-csi-deploy-test"

func newApplier(t testing.TB) *testbed.Applier {
	t.Helper()
	a, err := bed.NewApplier(fieldManager)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Every overlay passes the API server's validation, admission and cert-manager's
// webhook, object by object, without changing anything.
func TestServerSideDryRun(t *testing.T) {
	a := newApplier(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for _, obj := range render(t, tg.dir).objects {
				if err := a.Apply(ctx, obj, true); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// helpFlags returns the flag names a built binary prints for -h (stdlib flag's
// usage: "  -name type").
func helpFlags(t testing.TB, path string) map[string]bool {
	t.Helper()
	out, _ := exec.Command(path, "-h").CombinedOutput() // -h exits non-zero on some flag setups
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([A-Za-z0-9][A-Za-z0-9_.-]*)`).FindAllStringSubmatch(string(out), -1) {
		names[m[1]] = true
	}
	if len(names) == 0 {
		t.Fatalf("%s -h printed no flags:\n%s", path, out)
	}
	return names
}

// binary returns a built binary of ours: bin/<name> (make bin), else builds it.
func binary(t testing.TB, name, pkg string) string {
	t.Helper()
	if p := bed.Binary(name); fileExists(p) {
		return p
	}
	p := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", p, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return p
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// The built binaries register every flag the rendered args use, and parse the
// rendered args (with $(VAR) expanded) without complaint: -version exits 0
// only after flag.Parse succeeded.
func TestBinariesAcceptRenderedArgs(t *testing.T) {
	bins := map[string]string{
		"driver":   binary(t, "svid-csi-driver", "github.com/svid-csi/svid-csi/driver"),
		"approver": binary(t, "svid-csi-approver", "github.com/svid-csi/svid-csi/approver"),
	}
	help := map[string]map[string]bool{"driver": helpFlags(t, bins["driver"]), "approver": helpFlags(t, bins["approver"])}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			objs := render(t, tg.dir).objects
			ds, dep := workloads(t, objs)
			for name, c := range map[string]corev1.Container{"driver": ds.Spec.Template.Spec.Containers[0], "approver": dep.Spec.Template.Spec.Containers[0]} {
				for _, a := range c.Args {
					if f := argFlag(a); !help[name][f] {
						t.Errorf("%s: %q: the built binary has no flag %q", name, a, f)
					}
				}
				args := append(expandArgs(t, objs, c), "-version")
				if out, err := exec.Command(bins[name], args...).CombinedOutput(); err != nil {
					t.Errorf("%s %s: %v\n%s", bins[name], strings.Join(args, " "), err, out)
				}
				// Past flag validation (exit 2) to the first API client
				// (exit 1): a kubeconfig that does not exist.
				args = append(expandArgs(t, objs, c), "--kubeconfig=/nonexistent/kubeconfig")
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				out, err := exec.CommandContext(ctx, bins[name], args...).CombinedOutput()
				cancel()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "/nonexistent/kubeconfig") {
					t.Errorf("%s %s: %v, want exit status 1 about the kubeconfig (flags valid)\n%s", bins[name], strings.Join(args, " "), err, out)
				}
			}
		})
	}
}

// access is one SubjectAccessReview question.
type access struct {
	verb, group, resource, subresource, namespace, name string
	fieldSelector                                       string
}

func (a access) String() string {
	s := a.verb + " " + a.resource
	if a.subresource != "" {
		s += "/" + a.subresource
	}
	if a.group != "" {
		s += "." + a.group
	}
	if a.name != "" {
		s += " " + a.name
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	}
	return s
}

func allowed(ctx context.Context, t testing.TB, user string, a access) bool {
	t.Helper()
	ra := &authorizationv1.ResourceAttributes{
		Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource,
		Namespace: a.namespace, Name: a.name,
	}
	if a.fieldSelector != "" {
		ra.FieldSelector = &authorizationv1.FieldSelectorAttributes{RawSelector: a.fieldSelector}
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
		ResourceAttributes: ra,
	}}
	got, err := bed.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %s for %s: %v", a, user, err)
	}
	return got.Status.Allowed
}

// applyExample installs overlays/example for real, once per package.
var exampleApplied bool

func applyExample(t testing.TB) []*unstructured.Unstructured {
	t.Helper()
	objs := render(t, "../../overlays/example").objects
	if exampleApplied {
		return objs
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := newApplier(t)
	for _, obj := range objs {
		if err := a.Apply(ctx, obj, false); err != nil {
			t.Fatal(err)
		}
	}
	exampleApplied = true
	return objs
}

// The RBAC of the example overlay (the base plus both components) grants the
// binaries what they do and nothing of what they must not.
func TestRBAC(t *testing.T) {
	applyExample(t)
	ctx := context.Background()
	approver := spiffe.ServiceAccountUsername(namespace, approverName)
	driver := spiffe.ServiceAccountUsername(namespace, driverName)
	const cm = "cert-manager.io"
	cases := []struct {
		user string
		a    access
		want bool
	}{
		{approver, access{verb: "list", group: cm, resource: "certificaterequests"}, true},
		{approver, access{verb: "watch", group: cm, resource: "certificaterequests"}, true},
		{approver, access{verb: "update", group: cm, resource: "certificaterequests", subresource: "status", namespace: "app"}, true},
		// cert-manager asks for the signer's wildcard name or its own: the
		// approver holds only its own issuer's (config.env).
		{approver, access{verb: "approve", group: cm, resource: "signers", name: "clusterissuers.cert-manager.io/svid-csi-ca"}, true},
		{approver, access{verb: "create", resource: "events", namespace: "app"}, true},
		{approver, access{verb: "create", group: "events.k8s.io", resource: "events", namespace: "app"}, true},
		// Node-bound: the pod a request names, by name.
		{approver, access{verb: "get", resource: "pods", namespace: "app", name: "web-0"}, true},
		{approver, access{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: namespace}, true},
		{approver, access{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: namespace, name: "svid-csi-approver"}, true},
		{approver, access{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: namespace, name: "svid-csi-approver"}, true},
		{approver, access{verb: "get", resource: "configmaps", namespace: namespace, name: "svid-csi-issuer"}, true},
		{approver, access{verb: "list", resource: "configmaps", namespace: namespace, fieldSelector: "metadata.name=svid-csi-issuer", name: "svid-csi-issuer"}, true},
		{approver, access{verb: "watch", resource: "configmaps", namespace: namespace, fieldSelector: "metadata.name=svid-csi-issuer", name: "svid-csi-issuer"}, true},
		// Never:
		{approver, access{verb: "create", group: cm, resource: "certificaterequests", namespace: "app"}, false},
		{approver, access{verb: "update", group: cm, resource: "certificaterequests", namespace: "app"}, false},
		{approver, access{verb: "list", resource: "pods", namespace: "app"}, false},
		{approver, access{verb: "watch", resource: "pods"}, false},
		{approver, access{verb: "update", resource: "pods", namespace: "app", name: "web-0"}, false},
		{approver, access{verb: "get", resource: "secrets", namespace: namespace, name: "svid-csi-ca"}, false},
		{approver, access{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: namespace, name: "cert-manager-controller"}, false},
		{approver, access{verb: "get", resource: "configmaps", namespace: namespace, name: "other"}, false},
		{approver, access{verb: "list", resource: "configmaps", namespace: namespace}, false},
		{approver, access{verb: "approve", group: cm, resource: "signers", name: "clusterissuers.cert-manager.io/*"}, false},
		{approver, access{verb: "approve", group: cm, resource: "signers", name: "issuers.cert-manager.io/*"}, false},
		{approver, access{verb: "approve", group: cm, resource: "signers", name: "clusterissuers.cert-manager.io/svid-csi-selfsigned"}, false},
		{approver, access{verb: "approve", group: cm, resource: "signers", name: "issuers.cert-manager.io/cert-manager.svid-csi-ca"}, false},

		{driver, access{verb: "list", group: cm, resource: "certificaterequests"}, true},
		{driver, access{verb: "watch", group: cm, resource: "certificaterequests"}, true},
		{driver, access{verb: "delete", group: cm, resource: "certificaterequests", namespace: "app"}, true},
		{driver, access{verb: "get", resource: "configmaps", namespace: namespace, name: "svid-csi-issuer"}, true},
		{driver, access{verb: "watch", resource: "configmaps", namespace: namespace, fieldSelector: "metadata.name=svid-csi-issuer", name: "svid-csi-issuer"}, true},
		{driver, access{verb: "create", resource: "events", namespace: "app"}, true},
		// Node-bound: it creates each pod's request with its own token.
		{driver, access{verb: "create", group: cm, resource: "certificaterequests", namespace: "app"}, true},
		// Never: it approves nothing, reads no pod.
		{driver, access{verb: "update", group: cm, resource: "certificaterequests", subresource: "status", namespace: "app"}, false},
		{driver, access{verb: "update", group: cm, resource: "certificaterequests", namespace: "app"}, false},
		{driver, access{verb: "get", resource: "pods", namespace: "app", name: "web-0"}, false},
		{driver, access{verb: "approve", group: cm, resource: "signers", name: "clusterissuers.cert-manager.io/*"}, false},
		{driver, access{verb: "approve", group: cm, resource: "signers", name: "clusterissuers.cert-manager.io/svid-csi-ca"}, false},
		{driver, access{verb: "get", resource: "secrets", namespace: namespace, name: "svid-csi-ca"}, false},
		{driver, access{verb: "list", resource: "configmaps", namespace: namespace}, false},
	}
	for _, c := range cases {
		if got := allowed(ctx, t, c.user, c.a); got != c.want {
			t.Errorf("%s may %s: %v, want %v", c.user, c.a, got, c.want)
		}
	}
}

// The example overlay works end to end with the real binaries: its CA chain
// becomes Ready; the approver runs with exactly the rendered args and only the
// rendered RBAC; the driver, with its rendered args (host paths moved under a
// temp dir), its RBAC, a token bound to a pod of its ServiceAccount on its
// node (as its DaemonSet pod has) and the rendered CSIDriver object, mounts
// an SVID of the example CA and the CA bundle into the volume of a pod whose
// ServiceAccount has no RBAC at all.
func TestExampleEndToEnd(t *testing.T) {
	objs := applyExample(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The bed's cert-manager runs the Certificate loops too, and no
	// cert-manager approver (as recommended with svid-csi: docs/deploy.md):
	// approve the example CA's request as an admin.
	if err := bed.ApproveCertificateRequests(ctx, namespace, "svid-csi-ca"); err != nil {
		t.Fatal(err)
	}
	if err := bed.WaitClusterIssuerReady(ctx, "svid-csi-ca"); err != nil {
		t.Fatal(err)
	}

	// The approver, as its Deployment runs it.
	_, dep := workloads(t, objs)
	args := expandArgs(t, objs, dep.Spec.Template.Spec.Containers[0])
	ports, err := testbed.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	health, metrics := ports[0], ports[1]
	kubeconfig := filepath.Join(bed.Dir, "deploy-approver.kubeconfig")
	if err := bed.WriteServiceAccountKubeconfig(ctx, kubeconfig, namespace, approverName); err != nil {
		t.Fatal(err)
	}
	for i, a := range args {
		switch argFlag(a) {
		case "health-address":
			args[i] = "--health-address=127.0.0.1:" + strconv.Itoa(health)
		case "metrics-address":
			args[i] = "--metrics-address=127.0.0.1:" + strconv.Itoa(metrics)
		}
	}
	args = append(args, "--kubeconfig="+kubeconfig)
	p, err := bed.StartProcess("deploy-approver", binary(t, "svid-csi-approver", "github.com/svid-csi/svid-csi/approver"), args...)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(15, 10*time.Second)
	if err := p.WaitHTTP(ctx, "http://127.0.0.1:"+strconv.Itoa(health)+"/readyz"); err != nil {
		t.Fatalf("approver never ready: %v", err)
	}

	// A workload namespace and ServiceAccount with no RBAC at all: the
	// example is node-bound.
	ns, err := bed.CreateNamespace(ctx, "deploy")
	if err != nil {
		t.Fatal(err)
	}
	const sa = "app"
	if err := bed.CreateServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa)
	t.Run("driver", func(t *testing.T) { runDriver(ctx, t, objs, ns, sa, id) })
}

// runDriver runs the driver as the DaemonSet does, with every absolute path in
// its args moved under a temp dir (the DaemonSet mounts them at their host
// paths), and publishes a pod's volume through the test bed's kubelet.
func runDriver(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured, ns, sa, id string) {
	ds, _ := workloads(t, objs)
	args := expandArgs(t, objs, ds.Spec.Template.Spec.Containers[0])
	node, _ := flagValue(args, "node-id")
	// Short: unix socket paths must stay under 108 bytes.
	root, err := os.MkdirTemp("", "svd-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	ports, err := testbed.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	health, metrics := ports[0], ports[1]
	for i, a := range args {
		name := argFlag(a)
		_, v, _ := strings.Cut(a, "=")
		switch {
		case name == "health-address":
			args[i] = "--health-address=127.0.0.1:" + strconv.Itoa(health)
		case name == "metrics-address":
			args[i] = "--metrics-address=127.0.0.1:" + strconv.Itoa(metrics)
		case strings.HasPrefix(v, "/"):
			args[i] = "--" + name + "=" + filepath.Join(root, v)
		}
	}
	// The CA bundle as the ca-bundle component mounts it: ca.crt of the
	// Secret svid-csi-ca.
	caPath, ok := flagValue(args, "source-ca-bundle")
	if !ok {
		t.Fatal("the example overlay passes no --source-ca-bundle")
	}
	secret, err := bed.Kube.CoreV1().Secrets(namespace).Get(ctx, "svid-csi-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(caPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caPath, secret.Data["ca.crt"], 0o644); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(bed.Dir, "deploy-driver.kubeconfig")
	if err := bed.WriteNodeBoundKubeconfig(ctx, kubeconfig, namespace, driverName, node); err != nil {
		t.Fatal(err)
	}
	args = append(args, "--kubeconfig="+kubeconfig)
	p, err := bed.StartProcess("deploy-driver", binary(t, "svid-csi-driver", "github.com/svid-csi/svid-csi/driver"), args...)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(15, 10*time.Second)
	if err := p.WaitHTTP(ctx, "http://127.0.0.1:"+strconv.Itoa(health)+"/readyz"); err != nil {
		t.Fatalf("driver never ready: %v", err)
	}

	kubeletRoot, _ := flagValue(args, "kubelet-root-dir")
	socket := filepath.Join(kubeletRoot, "plugins", spiffe.DefaultDriverName, "csi.sock")
	if ep, ok := flagValue(args, "endpoint"); ok {
		socket = strings.TrimPrefix(ep, "unix://")
	}
	kubelet, err := bed.NewKubelet(ctx, node, kubeletRoot, spiffe.DefaultDriverName, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer kubelet.Close()
	vol, err := kubelet.CreatePod(ctx, testbed.PodSpec{Namespace: ns, Name: "app", ServiceAccount: sa, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := kubelet.Publish(ctx, vol); err != nil {
		t.Fatalf("NodePublishVolume: %v\ndriver log:\n%s", err, p.Tail(8<<10))
	}
	defer func() {
		if err := kubelet.DeletePod(context.Background(), vol); err != nil {
			t.Errorf("delete pod: %v", err)
		}
	}()
	crt, err := os.ReadFile(filepath.Join(vol.TargetPath, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(crt)
	if block == nil {
		t.Fatal("tls.crt is not PEM")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("tls.crt URIs %v, want [%s]", leaf.URIs, id)
	}
	if leaf.Issuer.CommonName != "svid-csi-ca" {
		t.Errorf("issued by %q, want the example CA svid-csi-ca", leaf.Issuer.CommonName)
	}
	if _, err := os.Stat(filepath.Join(vol.TargetPath, "tls.key")); err != nil {
		t.Error(err)
	}
	ca, err := os.ReadFile(filepath.Join(vol.TargetPath, "ca.crt"))
	if err != nil || string(ca) != string(secret.Data["ca.crt"]) {
		t.Errorf("ca.crt in the volume: %v; want the Secret svid-csi-ca's ca.crt", err)
	}
}

func newCSR(t testing.TB, id string) []byte {
	t.Helper()
	_, csr, err := testbed.NewCSR([]string{id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
