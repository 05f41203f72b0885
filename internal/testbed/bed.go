package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options tune a bed; the zero value is ready to use.
type Options struct {
	// BinDir holds kube-apiserver, kube-controller-manager,
	// cert-manager-controller, cert-manager-webhook and this project's
	// binaries. Default: $SVID_CSI_BIN_DIR, else <repository>/bin.
	BinDir string
	// Dir is where state, certificates and logs go. Default: a new temp dir,
	// removed by Stop.
	Dir string
	// Node adds a real node: containerd, a kubelet named "localhost" and
	// kube-scheduler (see node.go), and the controllers its workloads need.
	// One per machine (a lock file says which bed has it).
	Node bool
}

// Bed is a running control plane.
type Bed struct {
	Dir    string
	BinDir string

	// Admin is a cluster-admin (system:masters) client configuration.
	Admin *rest.Config
	// AdminKubeconfig is the path of a kubeconfig file for Admin.
	AdminKubeconfig string
	// Kube and CertManager are clients made from Admin.
	Kube        kubernetes.Interface
	CertManager cmclient.Interface

	// ClusterCAPEM is the CA that signs the API server's serving certificate.
	ClusterCAPEM []byte
	// Issuer is the CA ClusterIssuer ready for tests; IssuerCAPEM its root.
	Issuer      string
	IssuerCAPEM []byte

	// Node is the real node, when Options.Node asked for one.
	Node *Node

	withNode     bool
	apiServerURL string
	apiPort      int
	clusterCA    *authority
	ownDir       bool
	etcdDir      string
	saSigningKey string
	webhookCert  string
	webhookKey   string
	procs        []*Process
	// certManagerController is the cert-manager controller process.
	certManagerController *Process
	apiServer             *Process
}

// AdminUser is the username of the bed's Admin client.
const AdminUser = "testbed-admin"

// ClusterIssuerName is the CA ClusterIssuer every bed creates.
const ClusterIssuerName = "testbed-ca"

// CertManagerNamespace is where cert-manager keeps its cluster resources.
const CertManagerNamespace = "cert-manager"

// Start brings up etcd, kube-apiserver, kube-controller-manager and
// cert-manager, and returns when a CA ClusterIssuer is Ready. On error,
// whatever was started is stopped again.
func Start(ctx context.Context, opts Options) (bed *Bed, err error) {
	b := &Bed{Dir: opts.Dir, BinDir: opts.BinDir, withNode: opts.Node}
	if b.BinDir == "" {
		if b.BinDir, err = defaultBinDir(); err != nil {
			return nil, err
		}
	}
	if b.Dir == "" {
		// Short, under /tmp: unix socket paths must stay under 108 bytes.
		if b.Dir, err = os.MkdirTemp("", "svid-bed-"); err != nil {
			return nil, fmt.Errorf("create bed dir: %w", err)
		}
		b.ownDir = true
	}
	defer func() {
		if err != nil {
			b.DumpLogs(os.Stderr)
			b.Stop()
		}
	}()
	steps := []step{
		{"etcd and kube-apiserver", b.startAPIServer},
		{"kube-controller-manager", b.startControllerManager},
		{"cert-manager", b.startCertManager},
		{"CA ClusterIssuer", b.createClusterIssuer},
	}
	if opts.Node {
		steps = append(steps, step{"node", b.startNode})
	}
	if err := runSteps(ctx, steps); err != nil {
		return nil, fmt.Errorf("start test bed: %w", err)
	}
	return b, nil
}

// step is one stage of bringing something up.
type step struct {
	name string
	run  func(context.Context) error
}

// runSteps runs steps in order and stops at the first error, named.
func runSteps(ctx context.Context, steps []step) error {
	for _, s := range steps {
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// Stop stops every process (newest first) and removes the bed's directory if
// Start made it.
func (b *Bed) Stop() {
	// The node first, pods before the kubelet before containerd, while the
	// API server and the controllers still answer.
	b.stopNode()
	for i := len(b.procs) - 1; i >= 0; i-- {
		b.procs[i].Stop(syscall.SIGTERM, 10*time.Second)
	}
	if err := unmountUnder(b.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "test bed: %v\n", err)
	}
	if b.etcdDir != "" {
		_ = os.RemoveAll(b.etcdDir)
	}
	if b.ownDir {
		_ = os.RemoveAll(b.Dir)
	}
}

// DumpLogs writes the tail of every process's log, for a failed test.
func (b *Bed) DumpLogs(w io.Writer) {
	for _, p := range b.procs {
		fmt.Fprintf(w, "===== %s (%s) =====\n%s\n", p.Name, p.LogFile, p.Tail(16<<10))
	}
}

// StartProcess runs one more program under the bed, stopped with it. Its log
// is <bed dir>/<name>.log, part of DumpLogs.
func (b *Bed) StartProcess(name, path string, args ...string) (*Process, error) {
	p := NewProcess(name, path, b.Dir, args...)
	if err := p.Start(); err != nil {
		return nil, err
	}
	b.procs = append(b.procs, p)
	return p, nil
}

// Binary is the path of a program in the bed's bin directory.
func (b *Bed) Binary(name string) string { return filepath.Join(b.BinDir, name) }

// RestartAPIServer stops kube-apiserver and starts it again on the same port,
// for tests of clients that must survive it.
func (b *Bed) RestartAPIServer(ctx context.Context, down time.Duration) error {
	b.apiServer.Stop(syscall.SIGTERM, 20*time.Second)
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := b.apiServer.Start(); err != nil {
		return err
	}
	return b.apiServer.waitFor(ctx, "readyz", b.apiReady)
}

// WriteKubeconfig writes a kubeconfig for the API server with the given
// credentials (a bearer token, or a client certificate and key file).
func (b *Bed) WriteKubeconfig(path, token, certFile, keyFile string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bed"] = &clientcmdapi.Cluster{Server: b.apiServerURL, CertificateAuthorityData: b.ClusterCAPEM}
	cfg.AuthInfos["bed"] = &clientcmdapi.AuthInfo{Token: token, ClientCertificate: certFile, ClientKey: keyFile}
	cfg.Contexts["bed"] = &clientcmdapi.Context{Cluster: "bed", AuthInfo: "bed"}
	cfg.CurrentContext = "bed"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// TokenConfig is a client configuration that authenticates with a bearer
// token only, as a pod does in cluster.
func (b *Bed) TokenConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            b.apiServerURL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: b.ClusterCAPEM},
		QPS:             100,
		Burst:           200,
	}
}

func (b *Bed) startAPIServer(ctx context.Context) error {
	pki := filepath.Join(b.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", pki, err)
	}
	ca, err := newAuthority("svid-csi test bed cluster CA")
	if err != nil {
		return err
	}
	b.ClusterCAPEM, b.clusterCA = ca.certPEM, ca
	caFile := filepath.Join(pki, "ca.crt")
	if err := os.WriteFile(caFile, ca.certPEM, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", caFile, err)
	}
	servingCert, servingKey, err := ca.writeKeyPair(pki, "apiserver", "kube-apiserver", nil, true)
	if err != nil {
		return err
	}
	adminCert, adminKey, err := ca.writeKeyPair(pki, "admin", AdminUser, []string{"system:masters"}, false)
	if err != nil {
		return err
	}
	saKey, saPub, err := writeSigningKey(pki)
	if err != nil {
		return err
	}
	if b.webhookCert, b.webhookKey, err = ca.writeKeyPair(pki, "webhook", "cert-manager-webhook", nil, true); err != nil {
		return err
	}
	b.saSigningKey = saKey
	ports, err := FreePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	etcdBin, err := b.etcdBinary()
	if err != nil {
		return err
	}
	if b.etcdDir, err = etcdDataDir(b.Dir); err != nil {
		return err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcd, err := b.StartProcess("etcd", etcdBin,
		"--name=bed", "--data-dir="+b.etcdDir,
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=bed="+peerURL, "--logger=zap", "--log-level=warn",
		// Debian's etcd 3.4 predates the progress requests kube-apiserver makes
		// of newer etcds; frequent progress notifications keep its watch cache
		// current the same way, so watches from "now" do not time out.
		"--experimental-watch-progress-notify-interval=500ms")
	if err != nil {
		return err
	}
	if err := etcd.waitFor(ctx, "health", httpOK(http.DefaultClient, clientURL+"/health")); err != nil {
		return err
	}

	auditPolicy, auditLog, err := b.auditFiles()
	if err != nil {
		return err
	}
	b.apiPort = apiPort
	b.apiServerURL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	b.apiServer, err = b.StartProcess("kube-apiserver", b.Binary("kube-apiserver"),
		"--etcd-servers="+clientURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+filepath.Join(b.Dir, "apiserver-certs"),
		"--tls-cert-file="+servingCert, "--tls-private-key-file="+servingKey,
		"--client-ca-file="+caFile,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// The node (node.go) is "localhost" on loopback: logs and exec reach
		// its kubelet by name, as an admin (the kubelet authorizes by webhook).
		"--kubelet-preferred-address-types=Hostname",
		"--kubelet-client-certificate="+adminCert, "--kubelet-client-key="+adminKey,
		"--profiling=false",
		"--audit-policy-file="+auditPolicy, "--audit-log-path="+auditLog,
		"--v=1")
	if err != nil {
		return err
	}
	b.AdminKubeconfig = filepath.Join(b.Dir, "admin.kubeconfig")
	if err := b.WriteKubeconfig(b.AdminKubeconfig, "", adminCert, adminKey); err != nil {
		return err
	}
	if b.Admin, err = clientcmd.BuildConfigFromFlags("", b.AdminKubeconfig); err != nil {
		return fmt.Errorf("load admin kubeconfig: %w", err)
	}
	b.Admin.QPS, b.Admin.Burst = 200, 400
	if b.Kube, err = kubernetes.NewForConfig(b.Admin); err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	if b.CertManager, err = cmclient.NewForConfig(b.Admin); err != nil {
		return fmt.Errorf("admin cert-manager client: %w", err)
	}
	return b.apiServer.waitFor(ctx, "readyz", b.apiReady)
}

func (b *Bed) apiReady(ctx context.Context) error {
	body, err := b.Kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("readyz: %w (%s)", err, body)
	}
	return nil
}

func (b *Bed) startControllerManager(ctx context.Context) error {
	controllers := "serviceaccount-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller"
	if b.withNode {
		// What the shipped workloads need on a node; node-lifecycle removes
		// the not-ready taint a kubelet registers with.
		controllers += ",deployment-controller,replicaset-controller,daemonset-controller,disruption-controller,node-lifecycle-controller"
	}
	ports, err := FreePorts(1)
	if err != nil {
		return err
	}
	kcm, err := b.StartProcess("kube-controller-manager", b.Binary("kube-controller-manager"),
		"--kubeconfig="+b.AdminKubeconfig,
		"--authentication-kubeconfig="+b.AdminKubeconfig,
		"--authorization-kubeconfig="+b.AdminKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[0]),
		"--leader-elect=false",
		"--controllers="+controllers,
		"--root-ca-file="+filepath.Join(b.Dir, "pki", "ca.crt"),
		"--service-account-private-key-file="+b.saSigningKey,
		"--use-service-account-credentials=false",
		"--v=1")
	if err != nil {
		return err
	}
	// The ServiceAccount controller makes "default" in every namespace: the
	// sign that the controller manager is up and has synced.
	return kcm.waitFor(ctx, "the default ServiceAccount", func(ctx context.Context) error {
		_, err := b.Kube.CoreV1().ServiceAccounts("default").Get(ctx, "default", getOpts)
		return err
	})
}

func (b *Bed) etcdBinary() (string, error) {
	if p := b.Binary("etcd"); fileExists(p) {
		return p, nil
	}
	p, err := exec.LookPath("etcd")
	if err != nil {
		return "", errors.New("etcd not found in bin/ or PATH: install Debian's etcd-server (make deps)")
	}
	return p, nil
}

// etcdDataDir puts etcd's data on tmpfs when the machine has /dev/shm: fsync
// on a disk is what makes a control plane slow to start.
func etcdDataDir(bedDir string) (string, error) {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "svid-bed-etcd-"); err == nil {
			return dir, nil
		}
	}
	dir := filepath.Join(bedDir, "etcd-data")
	return dir, os.MkdirAll(dir, 0o700)
}

func defaultBinDir() (string, error) {
	if d := os.Getenv("SVID_CSI_BIN_DIR"); d != "" {
		return d, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("find bin dir: %w (or set SVID_CSI_BIN_DIR)", err)
	}
	return filepath.Join(root, "bin"), nil
}

// repoRoot is the svid-csi checkout the tests run in.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the repository: %w", err)
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.HasPrefix(string(data), "module github.com/svid-csi/svid-csi\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the svid-csi repository")
		}
		dir = parent
	}
}

// FreePorts returns n distinct loopback ports that were free a moment ago:
// all are held until every one is found, so none is handed out twice.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func httpOK(client *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
