//go:build integration

package driver

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

var bed *testbed.Bed

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		// The driver mounts tmpfs volumes: these tests need root, and CI runs as root.
		fmt.Fprintln(os.Stderr, "test/driver: must run as root (the driver mounts tmpfs)")
		os.Exit(1)
	}
	os.Exit(testbed.Main(m, &bed))
}

var kubeconfigs = map[string]string{}

// serviceAccountKubeconfig makes a ServiceAccount in cert-manager's namespace
// bound to the ClusterRole of the same name as the kustomize base ships it, once, and returns its token kubeconfig: programs run as
// they do in cluster, with no client certificate.
func serviceAccountKubeconfig(t testing.TB, name string) string {
	t.Helper()
	if k, ok := kubeconfigs[name]; ok {
		return k
	}
	rules, err := testbed.ShippedClusterRoleRules(name)
	if name == testbed.ApproverName {
		// Both approver ClusterRoles, the signers one rendered for the bed's
		// issuer, plus the issuers a runtime switch goes to, as the documented
		// overlay patch adds them.
		rules, err = testbed.ApproverClusterRoleRules(map[string]string{"ISSUER_NAME": testbed.ClusterIssuerName})
		for i, r := range rules {
			if len(r.Resources) == 1 && r.Resources[0] == "signers" {
				for _, ci := range runtimeIssuers {
					rules[i].ResourceNames = append(rules[i].ResourceNames, "clusterissuers.cert-manager.io/"+ci)
				}
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := testbed.CertManagerNamespace
	if err := bed.CreateServiceAccount(ctx, ns, name); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, "", name, ns, name, rules); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(bed.Dir, name+".kubeconfig")
	if err := bed.WriteServiceAccountKubeconfig(ctx, path, ns, name); err != nil {
		t.Fatal(err)
	}
	kubeconfigs[name] = path
	return path
}

// node is one driver process under a simulated kubelet, with an approver for
// its driver name. Each test uses its own driver name, so its requests are
// seen by its own approver only.
type node struct {
	t          testing.TB
	name       string
	driverName string
	dir        string
	dataRoot   string
	kubeletDir string
	socket     string
	metrics    string
	args       []string
	driver     *testbed.Process
	approver   *testbed.Process
	kubelet    *testbed.Kubelet
}

type nodeOpts struct {
	duration       time.Duration // certificate-request-duration for driver and approver
	driverTD       string        // trust domain of the driver (default cluster.local)
	tokenInSecrets bool
	// kubeconfig is the driver's (default: its ServiceAccount's token kubeconfig).
	kubeconfig string
	// caBundle is the driver's --source-ca-bundle (default: none).
	caBundle string
	// runtimeConfigMap names a runtime issuance ConfigMap in cert-manager's
	// namespace that both the driver and the approver follow, and may read.
	runtimeConfigMap string
	// noFlagsIssuer leaves out --issuer-name: no issuer but the ConfigMap's.
	noFlagsIssuer bool
	// configConfigMap names a shared configuration ConfigMap in
	// cert-manager's namespace that both binaries follow (--config-configmap),
	// and may read.
	configConfigMap string
	// nodeBound runs both in node-bound mode: the driver with a token bound
	// to a pod of its ServiceAccount on this node, as its DaemonSet pod has.
	nodeBound bool
	// wrapKubeconfig, if set, is given the driver's kubeconfig and returns
	// the one it runs with (a fault-injecting proxy's).
	wrapKubeconfig func(kubeconfig string) string
}

func startNode(t testing.TB, name string, o nodeOpts) *node {
	t.Helper()
	ctx := context.Background()
	if o.duration == 0 {
		o.duration = time.Hour
	}
	if o.driverTD == "" {
		o.driverTD = "cluster.local"
	}
	if o.kubeconfig == "" {
		o.kubeconfig = serviceAccountKubeconfig(t, "svid-csi-driver")
	}
	var modes []string // the mode flags of the driver, then the approver's
	if o.nodeBound {
		o.kubeconfig = filepath.Join(bed.Dir, name+"-driver.kubeconfig")
		if err := bed.WriteNodeBoundKubeconfig(ctx, o.kubeconfig, testbed.CertManagerNamespace, "svid-csi-driver", name); err != nil {
			t.Fatal(err)
		}
		modes = []string{"--request-mode=node-bound", "--request-modes=node-bound",
			"--driver-service-account=" + testbed.CertManagerNamespace + "/svid-csi-driver"}
	}
	if o.wrapKubeconfig != nil {
		o.kubeconfig = o.wrapKubeconfig(o.kubeconfig)
	}
	n := &node{t: t, name: name, driverName: name + ".spiffe.test", dir: filepath.Join(bed.Dir, name)}
	n.dataRoot, n.kubeletDir = filepath.Join(n.dir, "data"), filepath.Join(n.dir, "kubelet")
	n.socket = filepath.Join(n.dir, "csi.sock")
	for _, d := range []string{n.dataRoot, n.kubeletDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	yes := true
	csiDriver := &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: n.driverName},
		Spec: storagev1.CSIDriverSpec{
			AttachRequired:               new(bool),
			PodInfoOnMount:               &yes,
			VolumeLifecycleModes:         []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral},
			TokenRequests:                []storagev1.TokenRequest{{Audience: ""}},
			RequiresRepublish:            &yes,
			ServiceAccountTokenInSecrets: &o.tokenInSecrets,
		},
	}
	file := storagev1.FileFSGroupPolicy
	csiDriver.Spec.FSGroupPolicy = &file
	if o.nodeBound { // as the base ships it: no pod's token for the driver
		csiDriver.Spec.TokenRequests, csiDriver.Spec.ServiceAccountTokenInSecrets = nil, nil
	}
	if _, err := bed.Kube.StorageV1().CSIDrivers().Create(ctx, csiDriver, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ports := freePorts(t, 3)
	dur := o.duration.String()
	var shared []string // the issuer flags both binaries get
	if !o.noFlagsIssuer {
		shared = append(shared, "--issuer-name="+testbed.ClusterIssuerName, "--issuer-kind=ClusterIssuer")
	}
	for flag, cm := range map[string]string{"runtime-issuance-configmap": o.runtimeConfigMap, "config-configmap": o.configConfigMap} {
		if cm == "" {
			continue
		}
		shared = append(shared, "--"+flag+"="+testbed.CertManagerNamespace+"/"+cm)
		read := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: []string{cm}, Verbs: []string{"get", "list", "watch"}}}
		for _, sa := range []string{"svid-csi-driver", testbed.ApproverName} {
			if err := bed.Grant(ctx, testbed.CertManagerNamespace, cm+"-"+sa, testbed.CertManagerNamespace, sa, read); err != nil {
				t.Fatal(err)
			}
		}
	}
	approver, err := bed.StartProcess(name+"-approver", bed.Binary("svid-csi-approver"), append([]string{
		"--kubeconfig=" + serviceAccountKubeconfig(t, testbed.ApproverName),
		"--driver-name=" + n.driverName, "--trust-domain=cluster.local",
		"--certificate-request-duration=" + dur,
		"--leader-election=false",
		"--health-address=127.0.0.1:" + strconv.Itoa(ports[0]), "--metrics-address=",
		"--v=2"}, append(shared, modes[min(1, len(modes)):]...)...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { approver.Stop(syscall.SIGTERM, 10*time.Second) })
	n.approver = approver

	n.metrics = "127.0.0.1:" + strconv.Itoa(ports[1])
	n.args = []string{
		"--kubeconfig=" + o.kubeconfig,
		"--driver-name=" + n.driverName, "--node-id=" + name,
		"--endpoint=unix://" + n.socket,
		"--data-root=" + n.dataRoot, "--kubelet-root-dir=" + n.kubeletDir,
		"--trust-domain=" + o.driverTD,
		"--certificate-request-duration=" + dur,
		"--metrics-address=" + n.metrics,
		"--health-address=127.0.0.1:" + strconv.Itoa(ports[2]),
		"--v=4",
	}
	n.args = append(n.args, shared...)
	n.args = append(n.args, modes[:min(1, len(modes))]...)
	if o.caBundle != "" {
		n.args = append(n.args, "--source-ca-bundle="+o.caBundle)
	}
	n.startDriver()
	kubelet, err := bed.NewKubelet(ctx, name, n.kubeletDir, n.driverName, n.socket)
	if err != nil {
		t.Fatal(err)
	}
	n.kubelet = kubelet
	t.Cleanup(func() {
		kubelet.Close()
		n.driver.Stop(syscall.SIGTERM, 10*time.Second)
	})
	n.waitReady()
	return n
}

// startDriver (re)starts the driver process with the node's flags.
func (n *node) startDriver() {
	n.t.Helper()
	if n.driver == nil {
		p, err := bed.StartProcess(n.name+"-driver", bed.Binary("svid-csi-driver"), n.args...)
		if err != nil {
			n.t.Fatal(err)
		}
		n.driver = p
		return
	}
	if err := n.driver.Start(); err != nil {
		n.t.Fatal(err)
	}
}

// logSize is the length of the driver's log so far: what a restart writes
// comes after it.
func (n *node) logSize() int64 {
	n.t.Helper()
	st, err := os.Stat(n.driver.LogFile)
	if err != nil {
		n.t.Fatal(err)
	}
	return st.Size()
}

// waitLogLine waits up to 10 s for a line of the driver's log, written after
// offset, that contains every one of parts.
func (n *node) waitLogLine(offset int64, parts ...string) {
	n.t.Helper()
	n.waitLogLineWithin(offset, 10*time.Second, parts...)
}

// waitLogLineWithin is waitLogLine with its own timeout.
func (n *node) waitLogLineWithin(offset int64, timeout time.Duration, parts ...string) {
	n.t.Helper()
	var log string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		data, err := os.ReadFile(n.driver.LogFile)
		if err != nil || int64(len(data)) < offset {
			return false, err
		}
		log = string(data[offset:])
		for _, line := range strings.Split(log, "\n") {
			if containsAll(line, parts) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		n.t.Fatalf("no driver log line with %q: %v; log since:\n%s", parts, err, tail(log, 8192))
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }

// waitReady waits for the driver's Probe to answer ready over its socket.
func (n *node) waitReady() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids := csi.NewIdentityClient(n.kubelet.Conn())
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if exited, err := n.driver.Exited(); exited {
			return false, fmt.Errorf("driver exited: %v\n%s", err, n.driver.Tail(4096))
		}
		resp, err := ids.Probe(ctx, &csi.ProbeRequest{})
		return err == nil && resp.GetReady().GetValue(), nil
	})
	if err != nil {
		n.t.Fatalf("driver never ready: %v\n%s", err, tail(grepLines(n.driver.Tail(1<<20), "", "/csi.v1.Identity/Probe"), 8192))
	}
}

// tenant is a namespace whose ServiceAccount "app" may create requests, as
// the project's docs tell users to grant.
func newTenant(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := bed.CreateNamespace(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.CreateServiceAccount(ctx, ns, "app"); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, ns, "svid-csi-workload", ns, "app", []rbacv1.PolicyRule{{
		APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create"},
	}}); err != nil {
		t.Fatal(err)
	}
	return ns
}

func (n *node) pod(t testing.TB, ns, name string, attrs map[string]string, fsGroup *int64) *testbed.PodVolume {
	t.Helper()
	v, err := n.kubelet.CreatePod(context.Background(), testbed.PodSpec{
		Namespace: ns, Name: name, ServiceAccount: "app", Attributes: attrs, ReadOnly: true, FSGroup: fsGroup,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// svid reads and checks the volume's files: a certificate chaining to the
// bed's CA with exactly the expected URI, and the key that matches it.
func svid(t testing.TB, v *testbed.PodVolume, wantID string) *x509.Certificate {
	t.Helper()
	certPEM, err := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(v.TargetPath, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := bed.VerifySVID(certPEM, wantID)
	if err != nil {
		t.Fatalf("tls.crt: %v", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("tls.key is not a PKCS#8 PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.(*ecdsa.PrivateKey).PublicKey.Equal(cert.PublicKey) {
		t.Fatal("tls.key does not match tls.crt")
	}
	return cert
}

func isMountPoint(t testing.TB, path string) bool {
	t.Helper()
	return slices.Contains(mountPoints(t), path)
}

// mountPoints are the mount points of /proc/self/mountinfo.
func mountPoints(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			out = append(out, f[4])
		}
	}
	return out
}

// requestsIn lists the CertificateRequests left in a namespace.
func requestsIn(t testing.TB, ns string) int {
	t.Helper()
	l, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

func waitNoRequests(t testing.TB, ns string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return requestsIn(t, ns) == 0, nil
	})
	if err != nil {
		t.Fatalf("%d CertificateRequests left in %s", requestsIn(t, ns), ns)
	}
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := testbed.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

func id(ns string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/app" }

// creators are the users who created CertificateRequests in ns, as the API
// server authenticated them, one per request (the test itself left out).
func creators(t testing.TB, ns string) []string {
	t.Helper()
	evs, err := bed.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		if ev.ObjectRef.Namespace == ns && ev.ObjectRef.Resource == "certificaterequests" && ev.ObjectRef.Subresource == "" &&
			ev.Verb == "create" && ev.ResponseStatus.Code == 201 && ev.User.Username != testbed.AdminUser {
			out = append(out, ev.User.Username)
		}
	}
	return out
}

// auditCount is how many requests on CertificateRequests in ns the API
// server served to anyone but the test itself.
func auditCount(t testing.TB, ns string) int {
	t.Helper()
	evs, err := bed.AuditEvents()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs {
		if ev.ObjectRef.Namespace == ns && ev.User.Username != testbed.AdminUser {
			n++
		}
	}
	return n
}
