package csi

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svid-csi/svid-csi/driver/manager"
	"github.com/svid-csi/svid-csi/driver/manager/managertest"
	"github.com/svid-csi/svid-csi/driver/socket"
	"github.com/svid-csi/svid-csi/driver/volume"
)

type testDriver struct {
	node    csi.NodeClient
	ident   csi.IdentityClient
	issuer  *managertest.Issuer
	mounter *managertest.CountingMounter
	store   *volume.Store
	volumes *manager.Manager
	dir     string // where targets and the socket go
}

type testOption func(*manager.Options)

// startDriver serves a Driver over a real volume manager, with a fake issuer
// and mounter, on a temporary unix socket and returns clients for it.
func startDriver(t testing.TB, logger klog.Logger, opts ...testOption) *testDriver {
	t.Helper()
	f := managertest.NewFakes(t)
	dir, store, fi, cm := f.Dir, f.Store, f.Issuer, f.Mounter
	o := manager.Options{Issuer: fi, Mounter: cm, Store: store,
		Files: manager.FileNames{Certificate: "tls.crt", Key: "tls.key", CA: "ca.crt"}}
	for _, fn := range opts {
		fn(&o)
	}
	if c, ok := o.Clock.(clock.PassiveClock); ok && c != nil {
		fi.Clock = c
	}
	volumes, err := manager.New(o)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Name: "spiffe.csi.cert-manager.io", Version: "test", NodeID: "node-1", PodsDir: filepath.Join(dir, "pods"),
		Volumes: volumes, NodeBound: o.NodeBound})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	if err := volumes.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	lis, err := socket.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { volumes.Run(ctx) })
	wg.Go(func() {
		if err := d.Serve(ctx, lis); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		cancel()
		wg.Wait()
	})
	return &testDriver{node: csi.NewNodeClient(conn), ident: csi.NewIdentityClient(conn),
		issuer: fi, mounter: cm, store: store, volumes: volumes, dir: dir}
}

func tokensJSON(token string) string {
	b, _ := json.Marshal(map[string]tokenStatus{"": {Token: token, ExpirationTimestamp: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}})
	return string(b)
}

// publishRequest is what the kubelet sends for an inline volume of a pod.
func (td *testDriver) publishRequest(volID, token string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:   volID,
		TargetPath: managertest.Target(td.dir, volID),
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly: true,
		VolumeContext: map[string]string{
			keyPodName:        "app-" + volID,
			keyPodNamespace:   "team-a",
			keyPodUID:         "uid-" + volID,
			keyServiceAccount: "app",
			keyEphemeral:      "true",
			keyTokens:         tokensJSON(token),
		},
	}
}

// assertNothingWritten checks a refused publish left nothing: no directory
// at the target, nothing mounted, no state, no volume managed.
func assertNothingWritten(t *testing.T, td *testDriver, target string) {
	t.Helper()
	if target != "" {
		if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a refused publish left %q: %v", target, err)
		}
		if mounted, _ := td.mounter.IsMounted(target); mounted {
			t.Errorf("a refused publish left %q mounted", target)
		}
	}
	if metas, err := td.store.List(); err != nil || len(metas) != 0 {
		t.Errorf("a refused publish left state: %v, %v", metas, err)
	}
	if n := td.volumes.Len(); n != 0 {
		t.Errorf("a refused publish left %d volumes managed", n)
	}
}
