package registration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2/ktesting"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/svid-csi/svid-csi/driver/socket"
)

func TestRegistration(t *testing.T) {
	root := t.TempDir()
	sock := SocketPath(root, "spiffe.csi.cert-manager.io")
	if sock != filepath.Join(root, "plugins_registry", "spiffe.csi.cert-manager.io-reg.sock") {
		t.Fatalf("socket path %s", sock)
	}
	// Something at the path that is not a socket is refused and kept.
	if err := os.MkdirAll(filepath.Dir(sock), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := socket.Listen(sock); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("Listen over a regular file: %v, want an error", err)
	}
	if b, _ := os.ReadFile(sock); string(b) != "keep" {
		t.Fatal("Listen removed a file that is not a socket")
	}
	// A stale socket from a previous run is replaced.
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	_ = stale.Close()
	lis, err := socket.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	s := New("spiffe.csi.cert-manager.io", "/var/lib/kubelet/plugins/spiffe.csi.cert-manager.io/csi.sock")
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	c := regapi.NewRegistrationClient(conn)
	info, err := c.GetInfo(context.Background(), &regapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != regapi.CSIPlugin || info.Name != "spiffe.csi.cert-manager.io" ||
		info.Endpoint != "/var/lib/kubelet/plugins/spiffe.csi.cert-manager.io/csi.sock" || !slices.Equal(info.SupportedVersions, []string{"1.0.0"}) {
		t.Fatalf("GetInfo = %v", info)
	}
	if _, err := c.NotifyRegistrationStatus(context.Background(), &regapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
}
