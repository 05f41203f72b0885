//go:build integration

package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestKilledFirstPublishLeavesNoMount: the driver is killed (-9) while a
// first publish waits for the approver, with the volume's tmpfs mounted and
// nothing written. The restarted driver takes that empty tmpfs over: when
// the kubelet's retry fails too (the approver is still away), it is
// unmounted, not left mounted until the node reboots; once the approver is
// back, the next retry publishes, and nothing is left once the pod goes.
func TestKilledFirstPublishLeavesNoMount(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := startNode(t, "killpub", nodeOpts{nodeBound: true})
	ns := newTenant(t, "killpub")
	n.approver.Stop(syscall.SIGTERM, 10*time.Second)
	v := n.pod(t, ns, "web", nil, nil)

	first := make(chan error, 1)
	go func() { first <- n.kubelet.Publish(ctx, v) }()
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return isMountPoint(t, v.TargetPath) && requestsIn(t, ns) == 1, nil
	})
	if err != nil {
		t.Fatalf("the first publish never mounted its tmpfs and created its request: %v\n%s", err, n.driver.Tail(4096))
	}
	n.driver.Stop(syscall.SIGKILL, 5*time.Second)
	if err := <-first; err == nil {
		t.Fatal("the first publish succeeded with no approver")
	}
	if !isMountPoint(t, v.TargetPath) {
		t.Fatal("the killed publish left no tmpfs: the test would prove nothing")
	}
	if entries, err := os.ReadDir(v.TargetPath); err != nil || len(entries) != 0 {
		t.Fatalf("the killed publish's tmpfs holds %v (%v), want nothing written", entries, err)
	}

	logFrom := n.logSize()
	n.startDriver()
	n.waitReady()
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second) // the approver is still away
	err = n.kubelet.Publish(rctx, v)
	rcancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("retry with the approver away = %v, want DeadlineExceeded", err)
	}
	n.waitLogLine(logFrom, "Taking over the empty tmpfs", v.VolumeID)
	// The kubelet's deadline ends its wait as the driver's own ends the
	// publish: the undo follows within moments.
	n.waitLogLine(logFrom, "CSI call failed", v.VolumeID, "DeadlineExceeded")
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		return !isMountPoint(t, v.TargetPath), nil
	})
	if err != nil {
		t.Fatalf("the leftover tmpfs is still mounted after the retry failed\n%s", n.driver.Tail(4096))
	}
	if _, err := os.Lstat(v.TargetPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target left after the failed retry: %v", err)
	}
	assertNoState(t, n, v.VolumeID)

	if err := n.approver.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n.kubelet.Publish(ctx, v); err != nil {
		t.Fatalf("publish once the approver is back: %v\n%s", err, n.driver.Tail(4096))
	}
	svid(t, v, id(ns))
	unpublishAndCheck(t, ctx, n, v)
	waitNoRequests(t, ns)
}

// TestLazyUnmountedTargetGetsNoKey: once a volume's tmpfs is lazily
// unmounted under the driver (umount -l), its target is a directory on the
// node's disk. The renewal that falls due writes nothing there, and says
// why; the unpublish that follows still succeeds and leaves nothing.
func TestLazyUnmountedTargetGetsNoKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, "lazy", nodeOpts{duration: 30 * time.Second})
	ns := newTenant(t, "lazy")
	v, _, stopRepublish := n.republishedPod(t, ctx, ns, time.Second)
	defer stopRepublish()
	logFrom := n.logSize()
	if err := unix.Unmount(v.TargetPath, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(t, v.TargetPath) {
		t.Fatal("still a mount point after umount -l")
	}
	// Renewal is due at about 2/3 of the 30 s lifetime.
	n.waitLogLineWithin(logFrom, 40*time.Second, "Renewal failed", v.VolumeID, "no longer a tmpfs mount point")
	entries, err := os.ReadDir(v.TargetPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("%s written onto the node's disk at %s", e.Name(), filepath.Join(v.TargetPath, e.Name()))
	}
	stopRepublish()
	unpublishAndCheck(t, ctx, n, v)
}
