package csi

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svid-csi/svid-csi/driver/issuance"
)

// Republish, health reads and renewals of one volume run at once without a
// data race (run with -race): the volume's metadata never changes once added.
func TestRenewDuringRepublishNoRace(t *testing.T) {
	td := startDriver(t, testLogger(t))
	ctx := context.Background()
	if _, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-1", "tok-1")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 50 {
			if _, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-1", "tok-2")); err != nil {
				t.Error(err)
			}
			_, _ = td.node.NodeGetVolumeHealth(ctx, nil)
		}
	})
	for range 20 {
		td.d.renew(ctx, "vol-1")
	}
	wg.Wait()
}

// A live volume whose state was lost is published again; when that publish
// fails, the mount it found (and the pod's files) must survive.
func TestFailedPublishKeepsAMountItDidNotMake(t *testing.T) {
	td := startDriver(t, testLogger(t))
	ctx := context.Background()
	req := td.publishRequest("vol-1", "tok-1")
	if _, err := td.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	td.d.remove("vol-1") // state lost, mount live
	td.issuer.set(func(f *fakeIssuer) {
		f.err = &issuance.Error{Code: codes.Unavailable, Reason: "api", Message: "API down"}
	})
	if _, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-1", "tok-2")); err == nil {
		t.Fatal("publish with the API down: want an error")
	}
	if _, err := os.Stat(filepath.Join(req.TargetPath, "tls.key")); err != nil {
		t.Fatalf("the live volume was destroyed by a failed publish: %v", err)
	}
}

// Until its caches are synced the driver answers a first publish Unavailable
// (the kubelet retries) and issues nothing.
func TestPublishBeforeSyncIsUnavailable(t *testing.T) {
	td := startDriver(t, testLogger(t))
	td.issuer.set(func(f *fakeIssuer) { f.unsynced = true })
	_, err := td.node.NodePublishVolume(context.Background(), td.publishRequest("vol-1", "tok-1"))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("publish before sync: %v, want Unavailable", err)
	}
	if n := len(td.issuer.Calls()); n != 0 {
		t.Fatalf("%d issuances before sync, want 0", n)
	}
}
