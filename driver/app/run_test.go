package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"

	"github.com/svid-csi/svid-csi/driver/registration"
)

// unreachableConfig is a driver configuration in a fresh directory whose
// API server refuses every connection.
func unreachableConfig(t *testing.T) Config {
	t.Helper()
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
	c.MetricsAddress = ""
	return c
}

// A start that fails (here: the health port is taken) returns the failure and
// leaves no socket behind: a registration socket nobody serves would have the
// kubelet retry it on every restart.
func TestFailedStartLeavesNoSocket(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = taken.Close() }()
	c := unreachableConfig(t)
	c.HealthAddress = taken.Addr().String()
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

// A driver whose API server is away is alive (its socket serves: the
// kubelet can unpublish, recovered volumes renew once it returns) but not
// ready, and says what it waits for; liveness never waits for the API
// server, so the kubelet does not restart it in a loop.
func TestAliveButNotReadyWithoutAPIServer(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	_ = free.Close()
	c := unreachableConfig(t)
	c.HealthAddress = addr
	completed, err := c.Complete()
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, completed) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		code, _ := get("/healthz")
		return code == http.StatusOK, nil
	})
	if err != nil {
		code, body := get("/healthz")
		t.Fatalf("/healthz never 200 with the API server away: %d %s", code, body)
	}
	// The informer retries for as long as the API server is away: readiness
	// waits for it, liveness does not.
	for range 3 {
		if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "the CertificateRequest cache") {
			t.Errorf("/readyz = %d %q, want 503 naming the CertificateRequest cache", code, body)
		}
		if code, body := get("/healthz"); code != http.StatusOK {
			t.Errorf("/healthz = %d %q, want 200", code, body)
		}
		time.Sleep(time.Second)
	}
}
