package app

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2/ktesting"

	"github.com/svid-csi/svid-csi/driver/registration"
)

// A start that fails (here: the health port is taken) returns the failure and
// leaves no socket behind: a registration socket nobody serves would have the
// kubelet retry it on every restart.
func TestFailedStartLeavesNoSocket(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = taken.Close() }()
	dir, err := os.MkdirTemp("", "svid-app") // short: unix socket paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Defaults()
	c.NodeID = "node-1"
	c.Kubeconfig = kubeconfig
	c.KubeletRootDir = filepath.Join(dir, "kubelet")
	c.DataRoot = filepath.Join(dir, "data")
	c.HealthAddress = taken.Addr().String()
	c.MetricsAddress = ""
	completed, err := c.Complete()
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	err = Run(ctx, completed)
	if err == nil || !strings.Contains(err.Error(), "health server") {
		t.Fatalf("Run with the health port taken = %v, want a health server error", err)
	}
	for _, sock := range []string{completed.Socket, registration.SocketPath(c.KubeletRootDir, c.DriverName)} {
		if _, err := os.Lstat(sock); err == nil {
			t.Errorf("%s left behind by a failed start", sock)
		}
	}
}
