// Package mount puts a size-limited tmpfs at a volume's target path and takes
// it away again. The real implementation calls mount(2) and umount(2) through
// golang.org/x/sys/unix (the image has no mount(8)) and uses k8s.io/mount-utils
// only to detect mount points; tests use mount-utils' FakeMounter, which
// records mounts without touching the host.
package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

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
	// Cleanup unmounts path (every stacked layer) if it is mounted and
	// removes the directory; a missing path is not an error.
	Cleanup(path string) error
}

// Mounter implements Interface; New and NewFake differ only in how they mount
// and unmount.
type Mounter struct {
	checker mountPointChecker
	data    string // tmpfs options: "size=4m,mode=0755"
	mount   func(target, data string) error
	unmount func(target string) error
}

var _ Interface = (*Mounter)(nil)

// mountPointChecker is the one part of mount-utils the real mounter uses.
type mountPointChecker interface {
	IsLikelyNotMountPoint(path string) (bool, error)
}

// New returns the real mounter: mount(2) and umount(2), no external command.
func New() *Mounter {
	return &Mounter{
		// The zero mount-utils Mounter: its IsLikelyNotMountPoint only calls
		// statx(2). mountutils.New would exec umount(8) to probe its behaviour.
		checker: &mountutils.Mounter{},
		data:    tmpfsData(defaultSize),
		mount:   sysMount,
		unmount: sysUnmount,
	}
}

// NewFake returns a mounter that records mounts in a mount-utils
// FakeMounter without touching the host.
func NewFake() *Mounter {
	fm := mountutils.NewFakeMounter(nil)
	return &Mounter{
		checker: fm,
		data:    tmpfsData(defaultSize),
		mount: func(target, data string) error {
			return fm.Mount("tmpfs", target, "tmpfs", []string{data, "nosuid", "nodev", "noexec"})
		},
		unmount: fm.Unmount,
	}
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
// and is retried by the caller's next call), retrying on EINTR.
func sysUnmount(target string) error {
	for {
		err := unix.Unmount(target, 0)
		if !errors.Is(err, unix.EINTR) {
			return errnoContext(err)
		}
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

// MountTmpfs implements Interface.
func (m *Mounter) MountTmpfs(target string) (bool, error) {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return false, fmt.Errorf("create target %s: %w", target, err)
	}
	mounted, err := m.IsMounted(target)
	if err != nil {
		return false, err
	}
	if mounted {
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

// Cleanup implements Interface.
func (m *Mounter) Cleanup(path string) error {
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
		if i == maxLayers {
			return fmt.Errorf("unmount %s: still mounted after %d unmounts", path, maxLayers)
		}
		if err := m.unmount(path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	// Not a mount point any more: what is left is this volume's own directory
	// (files only remain there with the fake mounter).
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove target %s: %w", path, err)
	}
	return nil
}
