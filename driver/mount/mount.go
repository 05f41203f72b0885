// Package mount puts a size-limited tmpfs at a volume's target path and takes
// it away again, never outside the kubelet's pods directory. The real
// implementation calls mount(2), umount(2) and statfs(2) through
// golang.org/x/sys/unix (the image has no mount(8)) and uses k8s.io/mount-utils
// only to detect mount points; tests use mount-utils' FakeMounter, which
// records mounts without touching the host.
package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	mountutils "k8s.io/mount-utils"
)

// defaultSize is the size limit of each volume's tmpfs: a certificate chain
// and a key need a few KiB; the limit only stops a runaway writer.
const defaultSize = "4m"

// tmpfsFlags are the mount flags of every volume: nothing on it may be a
// set-uid program, a device node or an executable.
const tmpfsFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// maxLayers bounds Cleanup's unmount loop: a crash between two mounts may
// have stacked a few tmpfs layers, never more than this.
const maxLayers = 8

// Interface is the seam between the node service and the host's mount table.
type Interface interface {
	// MountTmpfs creates target if needed and mounts a tmpfs there, unless
	// one is already mounted; created says whether this call mounted it (only
	// then may a failed publish undo it).
	MountTmpfs(target string) (created bool, err error)
	// IsMounted reports whether path is a mount point; a missing path is not.
	IsMounted(path string) (bool, error)
	// IsTmpfs reports whether path is a mount point with a tmpfs on top:
	// false after a lazy unmount, when path is a directory on the node's
	// disk again.
	IsTmpfs(path string) (bool, error)
	// OpenTmpfs holds the tmpfs mounted at path open and returns a path
	// that reaches it through that handle, to write through until done is
	// called: a lazy unmount after the check detaches the tmpfs, and the
	// writes go on landing in it, never in the directory on the node's
	// disk that path then is.
	OpenTmpfs(path string) (dir string, done func(), err error)
	// Cleanup unmounts path (every stacked tmpfs layer) if it is mounted and
	// removes the empty directory; a missing path is not an error.
	Cleanup(path string) error
}

// ErrNotTmpfs is the error, wrapped with the path, for a target that is no
// longer a tmpfs mount point (after a lazy unmount, a directory on the
// node's disk): nothing is written there.
var ErrNotTmpfs = errors.New("is no longer a tmpfs mount point: nothing is written there")

// NotTmpfs is ErrNotTmpfs for path.
func NotTmpfs(path string) error { return fmt.Errorf("%s %w", path, ErrNotTmpfs) }

// ErrOutside is the error, wrapped, for a path outside the kubelet's pods
// directory: nothing is mounted, unmounted or removed there.
var ErrOutside = errors.New("not under the kubelet's pods directory")

// maxPath and maxName are Linux's PATH_MAX (with its NUL) and NAME_MAX.
const (
	maxPath = 4095
	maxName = 255
)

// CheckTarget is nil when path, as written, is a clean absolute path of the
// shape the kubelet gives a CSI volume's target under podsDir (its
// <root-dir>/pods): <pods>/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount
// (any last element: csi-test's sanity suite uses its own). A Mounter also
// resolves symbolic links before it acts.
func CheckTarget(podsDir, path string) error {
	podsDir = filepath.Clean(podsDir)
	switch {
	case len(path) > maxPath:
		return fmt.Errorf("%.64q... is longer than %d bytes", path, maxPath)
	case !filepath.IsAbs(path) || filepath.Clean(path) != path:
		return fmt.Errorf("%.512q is not a clean absolute path", path)
	case !strings.HasPrefix(path, podsDir+string(filepath.Separator)):
		return fmt.Errorf("%.512q is %w %s", path, ErrOutside, podsDir)
	}
	parts := strings.Split(path[len(podsDir)+1:], string(filepath.Separator))
	if len(parts) != 5 || parts[1] != "volumes" || parts[2] != "kubernetes.io~csi" {
		return fmt.Errorf("%.512q is not a CSI volume's target path (%s/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount)", path, podsDir)
	}
	for _, p := range parts {
		if len(p) > maxName {
			return fmt.Errorf("%.512q has a name longer than %d bytes", path, maxName)
		}
	}
	return nil
}

// Mounter implements Interface; New and NewFake differ only in how they mount,
// unmount and tell a tmpfs.
type Mounter struct {
	podsDir string
	checker mountPointChecker
	data    string // tmpfs options: "size=4m,mode=0755"
	mount   func(target, data string) error
	unmount func(target string) error
	isTmpfs func(path string) (bool, error)
	// held: the tmpfs mounted at path, if that is what f is, reached
	// through f.
	held func(f *os.File, path string) (string, error)
}

var _ Interface = (*Mounter)(nil)

// mountPointChecker is the one part of mount-utils the real mounter uses.
type mountPointChecker interface {
	IsLikelyNotMountPoint(path string) (bool, error)
}

// New returns the real mounter, confined to podsDir: mount(2), umount(2) and
// statfs(2), no external command.
func New(podsDir string) *Mounter {
	return &Mounter{
		podsDir: filepath.Clean(podsDir),
		// The zero mount-utils Mounter: its IsLikelyNotMountPoint only calls
		// statx(2). mountutils.New would exec umount(8) to probe its behaviour.
		checker: &mountutils.Mounter{},
		data:    tmpfsData(defaultSize),
		mount:   sysMount,
		unmount: sysUnmount,
		isTmpfs: sysIsTmpfs,
		held:    sysHeld,
	}
}

// NewFake returns a mounter confined to podsDir that records mounts in a
// mount-utils FakeMounter without touching the host.
func NewFake(podsDir string) *Mounter {
	fm := mountutils.NewFakeMounter(nil)
	return &Mounter{
		podsDir: filepath.Clean(podsDir),
		checker: fm,
		data:    tmpfsData(defaultSize),
		mount: func(target, data string) error {
			return fm.Mount("tmpfs", target, "tmpfs", []string{data, "nosuid", "nodev", "noexec"})
		},
		unmount: func(target string) error {
			if err := fm.Unmount(target); err != nil {
				return err
			}
			// The files written go with the tmpfs, as with a real one.
			entries, err := os.ReadDir(target)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if err := os.RemoveAll(filepath.Join(target, e.Name())); err != nil {
					return err
				}
			}
			return nil
		},
		isTmpfs: func(path string) (bool, error) {
			mps, err := fm.List()
			if err != nil {
				return false, err
			}
			top := ""
			for _, mp := range mps {
				if mp.Path == path {
					top = mp.Type
				}
			}
			return top == "tmpfs", nil
		},
		held: func(_ *os.File, path string) (string, error) { return path, nil },
	}
}

// sysHeld checks that the directory f holds is the root of the tmpfs
// mounted at path now (same device and inode, a tmpfs by fstatfs(2)), and
// returns the path through f's descriptor that reaches it whatever the mount
// table says later.
func sysHeld(f *os.File, path string) (string, error) {
	fd := int(f.Fd())
	var fsst unix.Statfs_t
	if err := unix.Fstatfs(fd, &fsst); err != nil {
		return "", fmt.Errorf("fstatfs %s: %w", path, errnoContext(err))
	}
	var held, at unix.Stat_t
	if err := unix.Fstat(fd, &held); err != nil {
		return "", fmt.Errorf("fstat %s: %w", path, errnoContext(err))
	}
	if err := unix.Stat(path, &at); err != nil {
		return "", fmt.Errorf("stat %s: %w", path, errnoContext(err))
	}
	if fsst.Type != unix.TMPFS_MAGIC || held.Dev != at.Dev || held.Ino != at.Ino {
		return "", fmt.Errorf("%s changed while it was opened", path)
	}
	return "/proc/self/fd/" + strconv.Itoa(fd), nil
}

func tmpfsData(size string) string { return "size=" + size + ",mode=0755" }

// sysMount mounts a tmpfs at target, retrying if a signal interrupts it.
func sysMount(target, data string) error {
	for {
		err := unix.Mount("tmpfs", target, "tmpfs", tmpfsFlags, data)
		if !errors.Is(err, unix.EINTR) {
			return errnoContext(err)
		}
	}
}

// sysUnmount unmounts the top layer at target (not lazily: a busy mount fails
// and is retried by the caller's next call; never through a symbolic link),
// retrying on EINTR.
func sysUnmount(target string) error {
	for {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		if !errors.Is(err, unix.EINTR) {
			return errnoContext(err)
		}
	}
}

// sysIsTmpfs says whether the filesystem holding path is a tmpfs.
func sysIsTmpfs(path string) (bool, error) {
	var st unix.Statfs_t
	for {
		err := unix.Statfs(path, &st)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, errnoContext(err)
		}
		return st.Type == unix.TMPFS_MAGIC, nil
	}
}

// errnoContext prefixes an errno's symbolic name ("EPERM: operation not
// permitted"), keeping it in the chain for errors.Is.
func errnoContext(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("%s: %w", unix.ErrnoName(errno), err)
	}
	return err
}

// confine is nil when path is under the pods directory both as written and
// with every symbolic link on the way resolved (the part that exists yet),
// and is not itself a symbolic link: umount(2) would follow it.
func (m *Mounter) confine(path string) error {
	if err := CheckTarget(m.podsDir, path); err != nil {
		return err
	}
	root, err := resolveExisting(m.podsDir)
	if err != nil {
		return err
	}
	real, err := resolveExisting(path)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(real, root+string(filepath.Separator)) {
		return fmt.Errorf("%.512q resolves to %.512q, which is %w %s", path, real, ErrOutside, root)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%.512q is a symbolic link", path)
	}
	return nil
}

// resolveExisting resolves the symbolic links of path's longest existing
// prefix and appends the rest as written.
func resolveExisting(path string) (string, error) {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) || p == filepath.Dir(p) {
			return "", fmt.Errorf("resolve %.512q: %w", path, err)
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// MountTmpfs implements Interface. A mount already at target is taken only
// if it is a tmpfs: a key is never written onto anything else.
func (m *Mounter) MountTmpfs(target string) (bool, error) {
	if err := m.confine(target); err != nil {
		return false, err
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return false, fmt.Errorf("create target %s: %w", target, err)
	}
	mounted, err := m.IsMounted(target)
	if err != nil {
		return false, err
	}
	if mounted {
		tmpfs, err := m.isTmpfs(target)
		if err != nil {
			return false, fmt.Errorf("check the filesystem at %s: %w", target, err)
		}
		if !tmpfs {
			return false, fmt.Errorf("%s is mounted, and not with a tmpfs: not writing a key onto it", target)
		}
		return false, nil
	}
	if err := m.mount(target, m.data); err != nil {
		return false, fmt.Errorf("mount tmpfs (%s) at %s: %w", m.data, target, err)
	}
	return true, nil
}

// IsMounted implements Interface.
func (m *Mounter) IsMounted(path string) (bool, error) {
	notMnt, err := m.checker.IsLikelyNotMountPoint(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check mount point %s: %w", path, err)
	}
	return !notMnt, nil
}

// IsTmpfs implements Interface.
func (m *Mounter) IsTmpfs(path string) (bool, error) {
	mounted, err := m.IsMounted(path)
	if err != nil || !mounted {
		return false, err
	}
	tmpfs, err := m.isTmpfs(path)
	if err != nil {
		return false, fmt.Errorf("check the filesystem at %s: %w", path, err)
	}
	return tmpfs, nil
}

// OpenTmpfs implements Interface: the directory is opened first, then path
// is checked to be a tmpfs mount point whose root is that directory.
func (m *Mounter) OpenTmpfs(path string) (string, func(), error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open %s: %w", path, err)
	}
	done := func() { _ = f.Close() }
	ok, err := m.IsTmpfs(path)
	if err == nil && !ok {
		err = NotTmpfs(path)
	}
	var dir string
	if err == nil {
		dir, err = m.held(f, path)
	}
	if err != nil {
		done()
		return "", nil, err
	}
	return dir, done, nil
}

// Cleanup implements Interface, only under the pods directory and only for
// tmpfs layers: a mount of anything else at path is not the driver's, and is
// left as it is. Once the layers are gone the directory is removed with
// rmdir(2), never recursively: the files went with the tmpfs, and a
// recursive removal would reach into whatever else is mounted below.
func (m *Mounter) Cleanup(path string) error {
	if err := m.confine(path); err != nil {
		return err
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// Unmount every layer: a crash between two mounts may have stacked them.
	for i := 0; ; i++ {
		mounted, err := m.IsMounted(path)
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		tmpfs, err := m.isTmpfs(path)
		if err != nil {
			return fmt.Errorf("check the filesystem at %s: %w", path, err)
		}
		if !tmpfs {
			return fmt.Errorf("%s is mounted, and not with a tmpfs: not the driver's to unmount", path)
		}
		if i == maxLayers {
			return fmt.Errorf("unmount %s: still mounted after %d unmounts", path, maxLayers)
		}
		if err := m.unmount(path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	if err := removeOwnEntries(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove target %s: %w", path, err)
	}
	return nil
}

// removeOwnEntries removes what the driver's writes leave in a directory
// no tmpfs covers any more (a driver that wrote onto the disk after a lazy
// unmount, or the fake mounter): the generations and ..data links, and the
// user-visible links through ..data. Anything else, or anything on another
// device (a mount below), stays, and the rmdir that follows fails on it.
func removeOwnEntries(dir string) error {
	var top unix.Stat_t
	if err := unix.Lstat(dir, &top); err != nil {
		return fmt.Errorf("stat %s: %w", dir, errnoContext(err))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Dev != top.Dev {
			continue
		}
		own := strings.HasPrefix(e.Name(), "..")
		if !own && e.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			own = err == nil && strings.HasPrefix(target, "..data"+string(filepath.Separator))
		}
		if !own {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}
