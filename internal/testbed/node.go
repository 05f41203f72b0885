package testbed

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// NodeName is the real node's name: the API server reaches its kubelet by
// this hostname (--kubelet-preferred-address-types=Hostname), on loopback.
const NodeName = "localhost"

// Node is a real node on loopback: containerd and runc from Debian, the
// kubelet and kube-scheduler from the pinned k8s.io/kubernetes. Pods run with
// hostNetwork (the CNI config is loopback only) and images come from tarballs
// imported into containerd (there is no registry).
type Node struct {
	// Dir holds everything of the node; it is a shared bind mount of itself,
	// so Bidirectional mount propagation works below it.
	Dir string
	// KubeletRootDir is the kubelet's --root-dir.
	KubeletRootDir string
	// ContainerdSocket is containerd's gRPC socket (the CRI endpoint).
	ContainerdSocket string
	// Images are the image references imported into containerd.
	Images NodeImages

	bed        *Bed
	containerd *Process
	kubelet    *Process
	scheduler  *Process
	bindMount  bool
	healthz    string   // the kubelet's /healthz URL
	lock       *os.File // held while this bed has the machine's node
}

// NodeImages are the references of the images a node has.
type NodeImages struct {
	// Driver and Approver are this project's images, built from bin/ as
	// `make images` builds them.
	Driver, Approver string
	// Tools is a static busybox (sh, cat, sleep, ...): the pause image of
	// every pod sandbox and the image of test workloads.
	Tools string
}

// containerdNamespace is the one the CRI plugin uses.
const containerdNamespace = "k8s.io"

func (b *Bed) startNode(ctx context.Context) error {
	n := &Node{Dir: filepath.Join(b.Dir, "node"), bed: b}
	b.Node = n
	if err := n.takeMachine(); err != nil {
		return err
	}
	if err := sweepStaleNodes(os.TempDir()); err != nil {
		return err
	}
	n.KubeletRootDir = filepath.Join(n.Dir, "kubelet")
	n.ContainerdSocket = filepath.Join(n.Dir, "containerd", "containerd.sock")
	for _, d := range []string{n.KubeletRootDir, filepath.Join(n.Dir, "containerd"), filepath.Join(n.Dir, "cni", "net.d"),
		filepath.Join(n.Dir, "cni", "bin"), filepath.Join(n.Dir, "pod-logs"), filepath.Join(n.Dir, "images")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := n.makeShared(); err != nil {
		return err
	}
	return runSteps(ctx, []step{
		{"containerd", n.startContainerd},
		{"images", n.importImages},
		{"kubelet", n.startKubelet},
		{"kube-scheduler", n.startScheduler},
		{"node Ready", n.waitReady},
	})
}

// nodeLock is the file whose lock says which bed has this machine's node:
// the kernel drops it when that bed's process dies, even by SIGKILL.
func nodeLock() string { return filepath.Join(os.TempDir(), "svid-bed-node.lock") }

// takeMachine takes the node lock, or fails if another bed holds it.
func (n *Node) takeMachine() error {
	f, err := os.OpenFile(nodeLock(), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", nodeLock(), err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("another test bed runs this machine's node (%s is locked: %w): one kubelet per machine", nodeLock(), err)
	}
	n.lock = f
	return nil
}

// makeShared bind-mounts the node's directory onto itself and makes it a
// shared peer group: the host's / may be private, and the driver's
// Bidirectional mounts (and the kubelet's check for them) need a shared one.
func (n *Node) makeShared() error {
	if err := unix.Mount(n.Dir, n.Dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s onto itself: %w", n.Dir, err)
	}
	n.bindMount = true
	if err := unix.Mount("", n.Dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", n.Dir, err)
	}
	return nil
}

func (n *Node) startContainerd(ctx context.Context) error {
	for _, bin := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found: install Debian's containerd and runc (make deps)", bin)
		}
	}
	dir := filepath.Join(n.Dir, "containerd")
	// The pod sandboxes run the tools image (busybox sleep): there is no
	// registry to pull registry.k8s.io/pause from.
	n.Images.Tools = toolsImage
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # Root here may not lower OOM scores: runc fails otherwise with "can't get
  # final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[9]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), n.ContainerdSocket, n.ContainerdSocket+".ttrpc",
		filepath.Join(dir, "opt"), n.Images.Tools, filepath.Join(n.Dir, "cni", "bin"), filepath.Join(n.Dir, "cni", "net.d"), filepath.Join(dir, "runc"))
	configFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", configFile, err)
	}
	// A loopback-only network: enough for the CRI to report the network
	// ready; every pod of the bed uses the host's network.
	cni := `{"cniVersion": "1.0.0", "name": "svid-bed-loopback", "plugins": [{"type": "loopback"}]}`
	if err := os.WriteFile(filepath.Join(n.Dir, "cni", "net.d", "10-loopback.conflist"), []byte(cni), 0o644); err != nil {
		return fmt.Errorf("write the CNI config: %w", err)
	}
	bin, _ := exec.LookPath("containerd")
	p, err := n.bed.StartProcess("containerd", bin, "--config="+configFile, "--log-level=info")
	if err != nil {
		return err
	}
	n.containerd = p
	return p.waitFor(ctx, "its socket", func(ctx context.Context) error {
		_, err := n.ctr(ctx, "version")
		return err
	})
}

// ctr runs Debian's ctr against the node's containerd.
func (n *Node) ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	args = append([]string{"--address", n.ContainerdSocket, "--namespace", containerdNamespace}, args...)
	out, err := exec.CommandContext(ctx, "ctr", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args[4:], " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (n *Node) importImages(ctx context.Context) error {
	tars, refs, err := buildNodeImages(n.bed.BinDir, filepath.Join(n.Dir, "images"))
	if err != nil {
		return err
	}
	n.Images = refs
	for _, tar := range tars {
		if _, err := n.ctr(ctx, "images", "import", tar); err != nil {
			return fmt.Errorf("import %s: %w", tar, err)
		}
	}
	return nil
}

func (n *Node) startKubelet(ctx context.Context) error {
	b := n.bed
	pki := filepath.Join(n.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", pki, err)
	}
	// The node's identity, as the Node authorizer and NodeRestriction want.
	cert, key, err := b.clusterCA.writeKeyPair(pki, "kubelet", "system:node:"+NodeName, []string{"system:nodes"}, false)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := b.WriteKubeconfig(kubeconfig, "", cert, key); err != nil {
		return err
	}
	ports, err := FreePorts(2)
	if err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %q
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
# cgroup v1 and no systemd on these machines; swap is tolerated. Every pod
# cgroup lives below /%[6]s, which the bed alone creates and removes.
cgroupDriver: cgroupfs
cgroupRoot: /%[6]s
failCgroupV1: false
failSwapOn: false
podLogsDir: %[5]q
# A shared test machine: never evict or garbage-collect the imported images.
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
clusterDomain: cluster.local
syncFrequency: 10s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
`, ports[0], ports[1], filepath.Join(b.Dir, "pki", "ca.crt"), n.ContainerdSocket, filepath.Join(n.Dir, "pod-logs"), cgroupRoot)
	if err := makeCgroupRoot(); err != nil {
		return err
	}
	configFile := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", configFile, err)
	}
	p, err := b.StartProcess("kubelet", b.Binary("kubelet"),
		"--config="+configFile,
		"--kubeconfig="+kubeconfig,
		"--root-dir="+n.KubeletRootDir,
		"--cert-dir="+filepath.Join(n.Dir, "kubelet-pki"),
		// The kubelet refuses a loopback node IP and takes the host's
		// default-route address as InternalIP; nothing of the bed connects to
		// it: the API server reaches the kubelet by hostname (localhost), and
		// the probes of the bed's pods name 127.0.0.1 (the bed's component).
		"--hostname-override="+NodeName,
		"--v=1")
	if err != nil {
		return err
	}
	n.kubelet = p
	n.healthz = "http://127.0.0.1:" + strconv.Itoa(ports[1]) + "/healthz"
	return p.WaitHTTP(ctx, n.healthz)
}

// RestartKubelet stops the kubelet (SIGTERM) and starts it again with the
// same configuration; pods keep running under containerd meanwhile.
// It returns once the new kubelet serves and has renewed its node Lease
// (the Node stays Ready meanwhile, so Ready alone proves nothing).
func (n *Node) RestartKubelet(ctx context.Context) error {
	n.kubelet.Stop(syscall.SIGTERM, 30*time.Second)
	restarted := time.Now()
	if err := n.kubelet.Start(); err != nil {
		return err
	}
	if err := n.kubelet.WaitHTTP(ctx, n.healthz); err != nil {
		return err
	}
	return n.kubelet.waitFor(ctx, "the restarted kubelet's heartbeat", func(ctx context.Context) error {
		l, err := n.bed.Kube.CoordinationV1().Leases("kube-node-lease").Get(ctx, NodeName, getOpts)
		if err != nil {
			return err
		}
		if l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(restarted) {
			return fmt.Errorf("node Lease not renewed since the restart: %w", errNotReady)
		}
		return nil
	})
}

// KillContainer sends SIGKILL to a container's task, as a crash would: the
// kubelet restarts it. containerID is a pod status's "containerd://<id>".
func (n *Node) KillContainer(ctx context.Context, containerID string) error {
	id, ok := strings.CutPrefix(containerID, "containerd://")
	if !ok {
		return fmt.Errorf("container ID %q: not a containerd one", containerID)
	}
	_, err := n.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
	return err
}

func (n *Node) startScheduler(ctx context.Context) error {
	b := n.bed
	ports, err := FreePorts(1)
	if err != nil {
		return err
	}
	port := ports[0]
	p, err := b.StartProcess("kube-scheduler", b.Binary("kube-scheduler"),
		"--kubeconfig="+b.AdminKubeconfig,
		"--authentication-kubeconfig="+b.AdminKubeconfig,
		"--authorization-kubeconfig="+b.AdminKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(port),
		"--leader-elect=false",
		"--v=1")
	if err != nil {
		return err
	}
	n.scheduler = p
	// Its /healthz is open to anyone (--authorization-always-allow-paths);
	// its serving certificate is self-signed, on loopback.
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return p.waitFor(ctx, "healthz", httpOK(insecure, "https://127.0.0.1:"+strconv.Itoa(port)+"/healthz"))
}

func (n *Node) waitReady(ctx context.Context) error {
	return n.kubelet.waitFor(ctx, "node "+NodeName+" Ready", func(ctx context.Context) error {
		node, err := n.bed.Kube.CoreV1().Nodes().Get(ctx, NodeName, getOpts)
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node %s: %s: %s", NodeName, c.Reason, c.Message)
			}
		}
		return fmt.Errorf("node %s: %w", NodeName, errNotReady)
	})
}

// stopNode takes the node down so that nothing is left behind: workloads'
// pods first (their volumes unpublished by a driver that still runs), then
// DaemonSet pods, then the kubelet, every container task, containerd and the
// shims, and last every mount below the node's directory.
func (b *Bed) stopNode() {
	n := b.Node
	if n == nil {
		return
	}
	if n.kubelet != nil && running(n.kubelet) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		if err := n.deletePods(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "test bed: node: %v\n", err)
		}
		cancel()
		n.kubelet.Stop(syscall.SIGTERM, 30*time.Second)
	}
	if n.scheduler != nil {
		n.scheduler.Stop(syscall.SIGTERM, 10*time.Second)
	}
	if n.containerd != nil && running(n.containerd) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		n.killTasks(ctx)
		cancel()
		n.containerd.Stop(syscall.SIGTERM, 20*time.Second)
	}
	if n.containerd != nil {
		n.killShims()
	}
	if err := unmountUnder(n.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "test bed: node: %v\n", err)
	}
	if n.bindMount {
		if err := unix.Unmount(n.Dir, unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "test bed: node: unmount %s: %v\n", n.Dir, err)
		}
	}
	removeCgroups()
	if n.lock != nil {
		n.lock.Close() // the lock goes with the file
	}
	b.Node = nil
}

func running(p *Process) bool {
	exited, _ := p.Exited()
	return !exited
}

// deletePods deletes the pods of workloads, waits for the kubelet to have
// stopped them, then does the same for DaemonSet pods.
func (n *Node) deletePods(ctx context.Context) error {
	kube := n.bed.Kube
	list := func(ctx context.Context) ([]corev1.Pod, error) {
		pods, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + NodeName})
		if err != nil {
			return nil, err
		}
		return pods.Items, nil
	}
	ownedByDaemonSet := func(p *corev1.Pod) bool {
		for _, o := range p.OwnerReferences {
			if o.Kind == "DaemonSet" {
				return true
			}
		}
		return false
	}
	// No controller may bring them back meanwhile.
	nss, err := kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	bg := metav1.DeletePropagationBackground
	for _, ns := range nss.Items {
		apps := kube.AppsV1()
		_ = apps.Deployments(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
		_ = apps.ReplicaSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
		_ = apps.StatefulSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	}
	for _, daemons := range []bool{false, true} {
		if daemons {
			for _, ns := range nss.Items {
				_ = kube.AppsV1().DaemonSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
			}
		}
		grace := int64(5)
		phase, cancel := context.WithTimeout(ctx, 40*time.Second)
		err := wait.PollUntilContextCancel(phase, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			pods, err := list(ctx)
			if err != nil {
				return false, nil
			}
			left := 0
			for i := range pods {
				p := &pods[i]
				if ownedByDaemonSet(p) && !daemons {
					continue
				}
				left++
				if p.DeletionTimestamp == nil {
					_ = kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
				}
			}
			return left == 0, nil
		})
		cancel()
		if err != nil {
			// Force: the objects go, and what the kubelet has not stopped
			// is killed with the node's tasks.
			pods, _ := list(ctx)
			zero := int64(0)
			var left []string
			for _, p := range pods {
				if ownedByDaemonSet(&p) && !daemons {
					continue
				}
				left = append(left, fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, p.Status.Phase))
				_ = kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
			}
			fmt.Fprintf(os.Stderr, "test bed: node: pods the kubelet did not stop in time, force-deleted: %s\n", strings.Join(left, ", "))
		}
	}
	return nil
}

// killTasks kills and deletes every container task, so no container process
// outlives containerd (their shims are not its children).
func (n *Node) killTasks(ctx context.Context) {
	out, err := n.ctr(ctx, "tasks", "list", "--quiet")
	if err != nil {
		fmt.Fprintf(os.Stderr, "test bed: node: %v\n", err)
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = n.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
	}
	for _, id := range strings.Fields(out) {
		_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := n.ctr(ctx, "tasks", "delete", id)
			return err == nil, nil
		})
	}
}

// killShims kills what is left of this node's containers and containerd
// shims (found by the containerd address on their command line).
func (n *Node) killShims() {
	killPodProcesses()
	killMatching("containerd-shim", n.ContainerdSocket)
}

// cgroupRoot is the kubelet's --cgroup-root: every pod cgroup is below it.
const cgroupRoot = "svid-bed"

// cgroupHierarchies are the cgroup hierarchies mounted below /sys/fs/cgroup
// (cgroup v1, which these machines have: the kubelet runs with
// failCgroupV1: false).
func cgroupHierarchies() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		// cgroup v1 hierarchies, and the hybrid layout's cgroup2 "unified"
		// one, where runc creates the same paths.
		if len(fields) > 4 && strings.HasPrefix(fields[4], "/sys/fs/cgroup/") &&
			(strings.Contains(line, " - cgroup ") || strings.Contains(line, " - cgroup2 ")) {
			out = append(out, fields[4])
		}
	}
	return out
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy: the
// kubelet refuses a root that does not exist.
func makeCgroupRoot() error {
	hs := cgroupHierarchies()
	if len(hs) == 0 {
		return errors.New("no cgroup v1 hierarchy mounted under /sys/fs/cgroup: the bed's node needs cgroup v1")
	}
	for _, h := range hs {
		if err := os.MkdirAll(filepath.Join(h, cgroupRoot), 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", filepath.Join(h, cgroupRoot), err)
		}
	}
	return nil
}

// removeCgroups removes the bed's cgroup root (empty once every container is
// gone), deepest first, in every hierarchy.
func removeCgroups() {
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, cgroupRoot), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(os.Stderr, "test bed: node: remove cgroup %s: %v\n", dirs[i], err)
			}
		}
	}
}

// sweepStaleNodes cleans up after beds whose test binary was killed before it
// could stop its node (their kubelet and containerd died with it, but
// container processes, shims and mounts outlive them). Called with the node
// lock held: no other bed has a node, so every node directory is stale.
func sweepStaleNodes(tmp string) error {
	beds, err := filepath.Glob(filepath.Join(tmp, "svid-bed-*", "node"))
	if err != nil || len(beds) == 0 {
		return err
	}
	killPodProcesses()
	for _, dir := range beds {
		killMatching("containerd-shim", filepath.Join(dir, "containerd", "containerd.sock"))
		if err := unmountUnder(dir); err != nil {
			return fmt.Errorf("clean up %s: %w", dir, err)
		}
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
			return fmt.Errorf("clean up %s: %w", dir, err)
		}
		fmt.Fprintf(os.Stderr, "test bed: removed the node a killed bed left in %s\n", dir)
	}
	removeCgroups()
	return nil
}

func killMatching(parts ...string) {
	for _, pid := range matchingProcesses(parts...) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func matchingProcesses(parts ...string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		line := strings.ReplaceAll(string(cmdline), "\x00", " ")
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killPodProcesses kills every process in the bed's pod cgroups.
func killPodProcesses() {
	_ = filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", cgroupRoot), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}
