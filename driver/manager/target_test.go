package manager

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/manager/managertest"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// lazyUnmounted is a mounter whose targets stop being tmpfs mount points
// when gone is set, as after `umount -l`: the directory is still there, on
// the node's disk.
type lazyUnmounted struct {
	mount.Interface
	gone atomic.Bool
}

func (l *lazyUnmounted) IsTmpfs(path string) (bool, error) {
	if l.gone.Load() {
		return false, nil
	}
	return l.Interface.IsTmpfs(path)
}

func (l *lazyUnmounted) OpenTmpfs(path string) (string, func(), error) {
	if l.gone.Load() {
		return "", nil, mount.NotTmpfs(path)
	}
	return l.Interface.OpenTmpfs(path)
}

// Once a volume's target is no longer its tmpfs, neither a renewal nor a CA
// bundle change writes there (the key would land on the node's disk), and
// the renewal spends no issuance: it fails, and is retried after a backoff.
func TestNothingWrittenOnceTheTargetIsNoTmpfs(t *testing.T) {
	lazy := &lazyUnmounted{}
	ca := []byte("bundle-1")
	var caNow atomic.Pointer[[]byte]
	caNow.Store(&ca)
	tm := start(t, func(o *Options) {
		lazy.Interface = o.Mounter
		o.Mounter = lazy
		o.CABundle = func() []byte { return *caNow.Load() }
	})
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	before, _ := managertest.ReadPair(t, md.TargetPath)
	calls := len(tm.issuer.Calls())
	lazy.gone.Store(true)

	v := tm.m.lookup("vol-1")
	tm.m.sched.Schedule("vol-1", tm.m.opts.Clock.Now())
	eventually(t, "a failed renewal", func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.failures == 1
	})
	v.mu.Lock()
	lastErr := v.lastErr
	v.mu.Unlock()
	if !strings.Contains(lastErr, "no longer a tmpfs mount point") {
		t.Errorf("renewal error %q, want it to say the target is no longer a tmpfs mount point", lastErr)
	}
	if got := len(tm.issuer.Calls()); got != calls {
		t.Errorf("%d issuances for a target that is gone, want none", got-calls)
	}
	if due, ok := tm.m.sched.Due("vol-1"); !ok || !due.After(tm.m.opts.Clock.Now()) {
		t.Errorf("renewal due %v (scheduled %v), want retried after a backoff", due, ok)
	}

	ca2 := []byte("bundle-2")
	caNow.Store(&ca2)
	if _, err := tm.m.refreshCA(tm.ctx, v); err == nil || failure.ReasonOf(err) != failure.Local {
		t.Errorf("CA refresh onto a target that is gone = %v, want a local failure", err)
	}
	files, err := volume.ReadFiles(md.TargetPath, "ca.crt")
	if err != nil || string(files["ca.crt"]) != "bundle-1" {
		t.Errorf("CA bundle in the volume = %q, %v; want the one written before, untouched", files["ca.crt"], err)
	}
	after, _ := managertest.ReadPair(t, md.TargetPath)
	if after.SerialNumber.Cmp(before.SerialNumber) != 0 {
		t.Error("a new certificate was written after the target stopped being a tmpfs")
	}
}

// A tmpfs that a publish killed before it wrote anything left at the target,
// with no state, is taken over by the next publish: when that one fails too,
// it is unmounted, or it would stay mounted until the node reboots. One
// holding files is left mounted: a pod may be reading them.
func TestFailedPublishUndoesAnEmptyLeftoverTmpfs(t *testing.T) {
	for _, withFiles := range []bool{false, true} {
		t.Run(map[bool]string{false: "empty", true: "with files"}[withFiles], func(t *testing.T) {
			tm := start(t)
			md := tm.meta("vol-1")
			if _, err := tm.mounter.MountTmpfs(md.TargetPath); err != nil { // the killed publish's mount
				t.Fatal(err)
			}
			if withFiles {
				if err := volume.WriteFiles(md.TargetPath, map[string][]byte{"tls.crt": []byte("x")}, -1); err != nil {
					t.Fatal(err)
				}
			}
			tm.issuer.Fail(failure.New(failure.Denied, "request denied: nope"))
			if err := tm.m.Publish(tm.ctx, md, token("tok-1")); failure.ReasonOf(err) != failure.Denied {
				t.Fatalf("publish = %v, want the issuer's denial", err)
			}
			mounted, err := tm.mounter.IsMounted(md.TargetPath)
			if err != nil {
				t.Fatal(err)
			}
			if mounted != withFiles {
				t.Errorf("target mounted after the failed publish = %v, want %v", mounted, withFiles)
			}
			if metas, _ := tm.store.List(); len(metas) != 0 || tm.m.Len() != 0 {
				t.Errorf("state %v, %d volumes managed; want none", metas, tm.m.Len())
			}
		})
	}
}

// An unpublish at a path the volume is not published at cleans up only that
// path: the volume stays mounted, tracked, saved and renewed at its own,
// until the kubelet unpublishes it there.
func TestUnpublishAtAnotherPathKeepsTheVolume(t *testing.T) {
	tm := start(t)
	md := tm.meta("vol-1")
	if err := tm.m.Publish(tm.ctx, md, token("tok-1")); err != nil {
		t.Fatal(err)
	}
	other := managertest.Target(tm.dir, "elsewhere")
	if err := os.MkdirAll(other, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := tm.m.Unpublish(tm.ctx, "vol-1", other); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(other); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the other path is still there: %v", err)
	}
	if mounted, _ := tm.mounter.IsMounted(md.TargetPath); !mounted {
		t.Error("the volume's own tmpfs was unmounted")
	}
	if err := tm.m.Published("vol-1", md.TargetPath); err != nil {
		t.Errorf("Published at its own path = %v", err)
	}
	if _, ok := tm.m.sched.Due("vol-1"); !ok {
		t.Error("renewal no longer scheduled")
	}
	if metas, _ := tm.store.List(); len(metas) != 1 {
		t.Errorf("state %v, want the volume's", metas)
	}
	if _, key := managertest.ReadPair(t, md.TargetPath); key == nil {
		t.Error("no key in the volume")
	}

	if err := tm.m.Unpublish(tm.ctx, "vol-1", md.TargetPath); err != nil {
		t.Fatal(err)
	}
	if mounted, _ := tm.mounter.IsMounted(md.TargetPath); mounted || tm.m.Len() != 0 {
		t.Error("still mounted or managed after the unpublish at its own path")
	}
}
