// Package mount puts a size-limited tmpfs at a volume's target path and takes
// it away again; the real implementation uses k8s.io/mount-utils, tests use
// its FakeMounter.
package mount

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	mountutils "k8s.io/mount-utils"
)

// DefaultSize is the size limit of each volume's tmpfs: a certificate chain
// and a key need a few KiB; the limit only stops a runaway writer.
const DefaultSize = "4m"

// Interface is the seam between the node service and the host's mount table.
type Interface interface {
	// MountTmpfs creates target if needed and mounts a tmpfs there, unless
	// one is already mounted; created says whether this call mounted it (only
	// then may a failed publish undo it).
	MountTmpfs(target string) (created bool, err error)
	// IsMounted reports whether path is a mount point; a missing path is not.
	IsMounted(path string) (bool, error)
	// Cleanup unmounts path if it is mounted and removes the directory; a
	// missing path is not an error.
	Cleanup(path string) error
}

// Mounter implements Interface over a mount-utils Interface.
type Mounter struct {
	m    mountutils.Interface
	size string
}

var _ Interface = (*Mounter)(nil)

// New returns the real mounter, which execs mount(8) and umount(8).
func New() *Mounter { return &Mounter{m: mountutils.New(""), size: DefaultSize} }

// NewFake returns a mounter that records mounts without touching the host.
func NewFake() *Mounter { return &Mounter{m: mountutils.NewFakeMounter(nil), size: DefaultSize} }

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
	opts := []string{"size=" + m.size, "mode=0755", "nosuid", "nodev", "noexec"}
	if err := m.m.Mount("tmpfs", target, "tmpfs", opts); err != nil {
		return false, fmt.Errorf("mount tmpfs at %s: %w", target, err)
	}
	return true, nil
}

// IsMounted implements Interface.
func (m *Mounter) IsMounted(path string) (bool, error) {
	notMnt, err := m.m.IsLikelyNotMountPoint(path)
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
	for range 4 {
		mounted, err := m.IsMounted(path)
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		if err := m.m.Unmount(path); err != nil {
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
