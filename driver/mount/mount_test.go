package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/svid-csi/svid-csi/driver/volume"
)

// mountInfo is one /proc/self/mountinfo line at a mount point.
type mountInfo struct {
	opts      []string // per-mount options: rw,nosuid,nodev,...
	fsType    string
	superOpts []string // filesystem options: size=4096k,mode=755,...
}

// mountsAt returns the mountinfo entries at path, bottom layer first.
func mountsAt(t *testing.T, path string) []mountInfo {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []mountInfo
	for line := range strings.Lines(string(raw)) {
		// ID parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(strings.TrimSpace(line), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 3 || f[4] != path {
			continue
		}
		out = append(out, mountInfo{opts: strings.Split(f[5], ","), fsType: g[0], superOpts: strings.Split(g[2], ",")})
	}
	return out
}

// needRoot skips when not root: mount(2) needs CAP_SYS_ADMIN. CI and the
// driver run as root, so there this test always runs.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: the real mounter calls mount(2), which needs CAP_SYS_ADMIN; run as root (CI does)")
	}
}

// TestRealTmpfs mounts a real tmpfs through mount(2).
func TestRealTmpfs(t *testing.T) {
	needRoot(t)
	pods := filepath.Join(t.TempDir(), "pods")
	target := csiTarget(pods, "uid")
	t.Cleanup(func() { forceUnmount(target) })
	m := New(pods)

	created, err := m.MountTmpfs(target)
	if err != nil || !created {
		t.Fatalf("first MountTmpfs = %v, %v; want true, nil", created, err)
	}
	// A second call finds the mount and stacks nothing.
	created, err = m.MountTmpfs(target)
	if err != nil || created {
		t.Fatalf("second MountTmpfs = %v, %v; want false, nil", created, err)
	}
	mi := mountsAt(t, target)
	if len(mi) != 1 {
		t.Fatalf("%d mounts at %s, want 1: %+v", len(mi), target, mi)
	}
	if mi[0].fsType != "tmpfs" {
		t.Errorf("fstype %q, want tmpfs", mi[0].fsType)
	}
	for _, o := range []string{"nosuid", "nodev", "noexec"} {
		if !slices.Contains(mi[0].opts, o) {
			t.Errorf("mount options %v lack %s", mi[0].opts, o)
		}
	}
	for _, o := range []string{"size=4096k", "mode=755"} { // the kernel's spelling of size=4m,mode=0755
		if !slices.Contains(mi[0].superOpts, o) {
			t.Errorf("tmpfs options %v lack %s", mi[0].superOpts, o)
		}
	}
	if ok, err := m.IsMounted(target); err != nil || !ok {
		t.Fatalf("IsMounted = %v, %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o400); err != nil {
		t.Fatal(err)
	}
	// The size limit holds.
	if err := os.WriteFile(filepath.Join(target, "big"), make([]byte, 5<<20), 0o400); err == nil {
		t.Error("wrote 5 MiB into a 4 MiB tmpfs")
	}

	for range 2 { // idempotent
		if err := m.Cleanup(target); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target left: %v", err)
	}
	if mi := mountsAt(t, target); len(mi) != 0 {
		t.Errorf("still mounted: %+v", mi)
	}
	if ok, _ := m.IsMounted(target); ok {
		t.Error("IsMounted true after Cleanup")
	}
}

// TestRealCleanupStacked unmounts every layer a crash between two mounts may
// have stacked, then removes the directory.
func TestRealCleanupStacked(t *testing.T) {
	m, target := mountedTarget(t)
	for range 2 { // what MountTmpfs never does: mount over a mount
		if err := sysMount(target, tmpfsData(defaultSize)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(mountsAt(t, target)); n != 3 {
		t.Fatalf("%d layers at %s, want 3", n, target)
	}
	if err := m.Cleanup(target); err != nil {
		t.Fatal(err)
	}
	if mi := mountsAt(t, target); len(mi) != 0 {
		t.Errorf("layers left: %+v", mi)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target left: %v", err)
	}
}

func TestCleanupMissing(t *testing.T) {
	pods := t.TempDir()
	missing := csiTarget(pods, "no-such-uid")
	for name, m := range map[string]*Mounter{"real": New(pods), "fake": NewFake(pods)} {
		if err := m.Cleanup(missing); err != nil {
			t.Errorf("%s: Cleanup(missing) = %v", name, err)
		}
		if ok, err := m.IsMounted(missing); ok || err != nil {
			t.Errorf("%s: IsMounted(missing) = %v, %v", name, ok, err)
		}
	}
}

// TestRealMountError checks a failed mount(2) names the target and errno.
func TestRealMountError(t *testing.T) {
	needRoot(t)
	pods := t.TempDir()
	file := filepath.Join(pods, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := sysMount(file+"/x", tmpfsData(defaultSize)) // a path under a regular file
	if err == nil {
		t.Fatal("mount under a file succeeded")
	}
	if got := err.Error(); !strings.HasPrefix(got, "ENOTDIR: ") {
		t.Errorf("error %q lacks the errno name", got)
	}
	m := New(pods)
	if _, err := m.MountTmpfs(file); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("MountTmpfs(file) = %v, want an error naming %s", err, file)
	}
}

func TestFake(t *testing.T) {
	pods := t.TempDir()
	target := csiTarget(pods, "uid")
	m := NewFake(pods)
	for i, want := range []bool{true, false} {
		created, err := m.MountTmpfs(target)
		if err != nil || created != want {
			t.Fatalf("MountTmpfs #%d = %v, %v; want %v", i+1, created, err, want)
		}
	}
	if ok, _ := m.IsMounted(target); !ok {
		t.Fatal("fake mount not recorded")
	}
	if err := m.Cleanup(target); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.IsMounted(target); ok {
		t.Fatal("fake unmount not recorded")
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target left: %v", err)
	}
}

// mountedTarget mounts a real tmpfs at a CSI target under a fresh pods
// directory (as root), unmounted when the test ends.
func mountedTarget(t *testing.T) (m *Mounter, target string) {
	t.Helper()
	needRoot(t)
	pods := t.TempDir()
	target = csiTarget(pods, "uid")
	t.Cleanup(func() { forceUnmount(target) })
	m = New(pods)
	if _, err := m.MountTmpfs(target); err != nil {
		t.Fatal(err)
	}
	return m, target
}

// csiTarget is where the kubelet puts the target of a pod's CSI volume.
func csiTarget(pods, uid string) string {
	return filepath.Join(pods, uid, "volumes", "kubernetes.io~csi", "spiffe", "mount")
}

// forceUnmount leaves no mount behind when a test fails half-way (t.TempDir's
// removal would fail on it).
func forceUnmount(path string) {
	for range maxLayers {
		if unix.Unmount(path, unix.MNT_DETACH) != nil {
			return
		}
	}
}

// TestRealIsTmpfs tells a volume's tmpfs from what is left after a lazy
// unmount (the target directory on the node's disk), and never takes over a
// mount that is not a tmpfs: a key is written only into a tmpfs.
func TestRealIsTmpfs(t *testing.T) {
	m, target := mountedTarget(t)
	if ok, err := m.IsTmpfs(target); err != nil || !ok {
		t.Fatalf("IsTmpfs on the volume's tmpfs = %v, %v", ok, err)
	}
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil { // umount -l
		t.Fatal(err)
	}
	if ok, err := m.IsTmpfs(target); err != nil || ok {
		t.Fatalf("IsTmpfs after a lazy unmount = %v, %v; want false", ok, err)
	}

	// A bind mount of a directory that is not a tmpfs (a file system whose
	// type the test checks first) is refused, and left as it is.
	disk, err := os.MkdirTemp(filepath.Dir(os.Args[0]), "disk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(disk) })
	var st unix.Statfs_t
	if err := unix.Statfs(disk, &st); err != nil || st.Type == unix.TMPFS_MAGIC {
		t.Skipf("the test binary's directory is on a tmpfs (%v): no other file system to bind", err)
	}
	if err := unix.Mount(disk, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := m.MountTmpfs(target); err == nil || !strings.Contains(err.Error(), "not with a tmpfs") {
		t.Errorf("MountTmpfs over a bind mount = %v, want a refusal", err)
	}
	if ok, err := m.IsTmpfs(target); err != nil || ok {
		t.Errorf("IsTmpfs on a bind mount = %v, %v; want false", ok, err)
	}
	if err := m.Cleanup(target); err == nil || !strings.Contains(err.Error(), "not the driver's to unmount") {
		t.Errorf("Cleanup of a bind mount = %v, want a refusal", err)
	}
	if mi := mountsAt(t, target); len(mi) != 1 {
		t.Errorf("%d mounts at the target, want the bind mount alone: %+v", len(mi), mi)
	}
}

// TestConfinedToPodsDir: nothing is mounted, unmounted or removed outside the
// kubelet's pods directory, whether the path says so or a symbolic link on the
// way leads there; a target that is itself a symbolic link is refused (umount
// would follow it).
func TestConfinedToPodsDir(t *testing.T) {
	base := t.TempDir()
	pods := filepath.Join(base, "pods")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{pods, outside} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	precious := filepath.Join(outside, "precious")
	if err := os.WriteFile(precious, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(pods, "escape")); err != nil {
		t.Fatal(err)
	}
	linked := csiTarget(pods, "linked")
	if err := os.MkdirAll(filepath.Dir(linked), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "dir"), linked); err != nil {
		t.Fatal(err)
	}
	// A live volume of another pod, with a file in it: nothing outside a
	// target, such as its pod's directory, is ever removed.
	live := csiTarget(pods, "live")
	if err := os.MkdirAll(live, 0o750); err != nil {
		t.Fatal(err)
	}
	liveKey := filepath.Join(live, "tls.key")
	if err := os.WriteFile(liveKey, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"outside":              outside,
		"the pods dir itself":  pods,
		"a pod's directory":    filepath.Join(pods, "live"),
		"not a CSI volume":     filepath.Join(pods, "live", "volumes", "kubernetes.io~empty-dir", "v", "mount"),
		"too deep":             filepath.Join(live, "deeper"),
		"dot-dot":              pods + "/uid/../../outside",
		"relative":             "pods/uid/volumes/kubernetes.io~csi/v/mount",
		"a sibling prefix":     csiTarget(pods+"-other", "uid"),
		"under a link":         filepath.Join(pods, "escape", "volumes", "kubernetes.io~csi", "v", "mount"),
		"a link as target":     linked,
		"longer than PATH_MAX": csiTarget(pods, strings.Repeat("u", 5000)),
	}
	for name, m := range map[string]*Mounter{"real": New(pods), "fake": NewFake(pods)} {
		for what, path := range cases {
			if err := m.Cleanup(path); err == nil {
				t.Errorf("%s: Cleanup(%s: %s) succeeded", name, what, path)
			}
			if _, err := m.MountTmpfs(path); err == nil {
				t.Errorf("%s: MountTmpfs(%s: %s) succeeded", name, what, path)
				forceUnmount(path)
			}
		}
		if data, err := os.ReadFile(liveKey); err != nil || string(data) != "key" {
			t.Fatalf("%s: another volume's file was touched: %q, %v", name, data, err)
		}
		if data, err := os.ReadFile(precious); err != nil || string(data) != "keep" {
			t.Fatalf("%s: a file outside the pods dir was touched: %q, %v", name, data, err)
		}
		if _, err := os.Lstat(filepath.Join(outside, "uid")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: a directory was created outside the pods dir: %v", name, err)
		}
	}
	if err := CheckTarget(pods, csiTarget(pods, "uid")); err != nil {
		t.Errorf("CheckTarget on a kubelet target path: %v", err)
	}
	if err := CheckTarget(pods, outside); !errors.Is(err, ErrOutside) {
		t.Errorf("CheckTarget(outside) = %v, want ErrOutside", err)
	}
}

// TestRealOpenTmpfsOutlivesALazyUnmount: what is written through the held
// tmpfs after a lazy unmount lands in the detached tmpfs, never in the
// directory on the node's disk; once unmounted, the target cannot be opened
// for writing any more.
func TestRealOpenTmpfsOutlivesALazyUnmount(t *testing.T) {
	m, target := mountedTarget(t)
	dir, done, err := m.OpenTmpfs(target)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil { // umount -l, after the check
		t.Fatal(err)
	}
	if err := volume.WriteFiles(dir, map[string][]byte{"tls.key": []byte("secret")}, -1); err != nil {
		t.Fatalf("write through the held tmpfs: %v", err)
	}
	files, err := volume.ReadFiles(dir, "tls.key")
	if err != nil || string(files["tls.key"]) != "secret" {
		t.Errorf("read back through the held tmpfs: %q, %v", files["tls.key"], err)
	}
	done()
	if entries, err := os.ReadDir(target); err != nil || len(entries) != 0 {
		t.Errorf("the directory on disk holds %v (%v), want nothing", entries, err)
	}
	if _, _, err := m.OpenTmpfs(target); err == nil || !strings.Contains(err.Error(), "no longer a tmpfs mount point") {
		t.Errorf("OpenTmpfs after the lazy unmount = %v, want a refusal", err)
	}
}

// TestCleanupStaleFilesOnDisk: a target no tmpfs covers that holds what the
// driver writes (an older driver that wrote onto the disk after a lazy
// unmount) is cleaned up, so the unpublish does not fail for ever; a file
// the driver never writes stays, and the cleanup says so.
func TestCleanupStaleFilesOnDisk(t *testing.T) {
	pods := t.TempDir()
	m := New(pods)
	for _, foreign := range []bool{false, true} {
		target := csiTarget(pods, fmt.Sprintf("uid-%v", foreign))
		if err := os.MkdirAll(target, 0o750); err != nil {
			t.Fatal(err)
		}
		for range 2 { // two generations, the older pruned
			if err := volume.WriteFiles(target, map[string][]byte{"tls.crt": []byte("c"), "tls.key": []byte("k")}, -1); err != nil {
				t.Fatal(err)
			}
		}
		if foreign {
			if err := os.WriteFile(filepath.Join(target, "notes"), []byte("mine"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		err := m.Cleanup(target)
		switch {
		case !foreign && err != nil:
			t.Errorf("Cleanup of the driver's stale files: %v", err)
		case !foreign:
			if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("target left: %v", err)
			}
		case err == nil:
			t.Error("Cleanup removed a directory holding a file the driver never writes")
		default:
			if data, rerr := os.ReadFile(filepath.Join(target, "notes")); rerr != nil || string(data) != "mine" {
				t.Errorf("the foreign file: %q, %v", data, rerr)
			}
		}
	}
}
