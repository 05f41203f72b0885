// Package ociimage builds single-layer OCI image tarballs from local files,
// for `make images` and the test bed: no Docker, no registry, no base image.
// The same inputs give the same bytes (fixed times, sorted entries), so the
// same digest.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is every timestamp in an image: file mtimes, config and history.
var epoch = time.Unix(0, 0).UTC()

// File is one entry of the image's layer. Parent directories are added as
// root-owned 0755 unless listed themselves.
type File struct {
	// Path is absolute and clean: "/svid-csi-driver", "/etc/passwd".
	Path string
	// Mode is the entry's type (a regular file unless fs.ModeDir or
	// fs.ModeSymlink) and permission bits, with fs.ModeSetuid, ModeSetgid and
	// ModeSticky honoured. Zero permission bits mean 0644 for a file, 0755
	// for a directory.
	Mode fs.FileMode
	// Data is a regular file's content, or Source a local file to copy (its
	// content only: mode, owner and times come from this File). At most one.
	Data   []byte
	Source string
	// Link is a symlink's target.
	Link string
	// Uid and Gid own the entry (0 is root).
	Uid, Gid int
}

// Spec describes an image: its reference, its config and its one layer.
type Spec struct {
	// Ref names the image in the tarball, a tag: "ghcr.io/svid-csi/svid-csi-driver:dev".
	Ref        string
	Entrypoint []string
	Cmd        []string
	// User is "uid:gid" or a name the image's /etc/passwd knows.
	User       string
	WorkingDir string
	// Env holds "KEY=value" entries.
	Env   []string
	Files []File
}

// Image builds the image: linux on this machine's architecture, one layer.
func (s Spec) Image() (v1.Image, error) {
	layerTar, err := s.layer()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Ref, err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Created:      v1.Time{Time: epoch},
		OS:           "linux",
		Architecture: runtime.GOARCH,
		Config: v1.Config{
			Entrypoint: s.Entrypoint,
			Cmd:        s.Cmd,
			User:       s.User,
			WorkingDir: s.WorkingDir,
			Env:        s.Env,
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", s.Ref, err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "svid-csi internal/ociimage"},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: append layer: %w", s.Ref, err)
	}
	return img, nil
}

// WriteTarball writes the image as a `docker save` tarball at path, the
// format `ctr -n k8s.io images import` and `docker load` read, tagged
// spec.Ref. The file appears complete or not at all.
func WriteTarball(spec Spec, path string) error {
	tag, err := name.NewTag(spec.Ref)
	if err != nil {
		return fmt.Errorf("image ref %q: %w", spec.Ref, err)
	}
	img, err := spec.Image()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // after the rename, a no-op
	if err := tarball.Write(tag, img, f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// layer returns the uncompressed layer: every file and its parents, sorted.
func (s Spec) layer() ([]byte, error) {
	entries := map[string]*tar.Header{} // by clean absolute path
	content := map[string][]byte{}
	for _, f := range s.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file %q: path must be absolute and clean", f.Path)
		}
		if _, dup := entries[f.Path]; dup {
			return nil, fmt.Errorf("file %s: listed twice", f.Path)
		}
		hdr, data, err := f.entry()
		if err != nil {
			return nil, fmt.Errorf("file %s: %w", f.Path, err)
		}
		entries[f.Path], content[f.Path] = hdr, data
	}
	// Parents, and no file used as one.
	for _, p := range slices.Collect(maps.Keys(entries)) {
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			hdr, ok := entries[dir]
			if !ok {
				entries[dir] = dirHeader(dir, 0o755, 0, 0)
				continue
			}
			if hdr.Typeflag != tar.TypeDir {
				return nil, fmt.Errorf("file %s: parent %s is not a directory", p, dir)
			}
		}
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range slices.Sorted(maps.Keys(entries)) {
		if err := tw.WriteHeader(entries[p]); err != nil {
			return nil, fmt.Errorf("file %s: %w", p, err)
		}
		if _, err := tw.Write(content[p]); err != nil {
			return nil, fmt.Errorf("file %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// entry returns f's tar header and content.
func (f File) entry() (*tar.Header, []byte, error) {
	if f.Uid < 0 || f.Gid < 0 {
		return nil, nil, fmt.Errorf("uid %d, gid %d: must not be negative", f.Uid, f.Gid)
	}
	perm := f.Mode.Perm()
	switch f.Mode.Type() {
	case fs.ModeDir:
		if f.Data != nil || f.Source != "" || f.Link != "" {
			return nil, nil, fmt.Errorf("a directory has no Data, Source or Link")
		}
		if perm == 0 {
			perm = 0o755
		}
		return dirHeader(f.Path, tarMode(f.Mode, perm), f.Uid, f.Gid), nil, nil
	case fs.ModeSymlink:
		if f.Link == "" || f.Data != nil || f.Source != "" {
			return nil, nil, fmt.Errorf("a symlink needs Link and has no Data or Source")
		}
		return &tar.Header{
			Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(f.Path, "/"), Linkname: f.Link,
			Mode: 0o777, Uid: f.Uid, Gid: f.Gid, ModTime: epoch, Format: tar.FormatPAX,
		}, nil, nil
	case 0:
	default:
		return nil, nil, fmt.Errorf("mode %v: only regular files, directories and symlinks", f.Mode)
	}
	if f.Link != "" {
		return nil, nil, fmt.Errorf("a regular file has no Link")
	}
	data := f.Data
	if f.Source != "" {
		if f.Data != nil {
			return nil, nil, fmt.Errorf("both Data and Source %s", f.Source)
		}
		var err error
		if data, err = os.ReadFile(f.Source); err != nil {
			return nil, nil, err
		}
	}
	if perm == 0 {
		perm = 0o644
	}
	return &tar.Header{
		Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Size: int64(len(data)),
		Mode: tarMode(f.Mode, perm), Uid: f.Uid, Gid: f.Gid, ModTime: epoch, Format: tar.FormatPAX,
	}, data, nil
}

func dirHeader(p string, mode int64, uid, gid int) *tar.Header {
	return &tar.Header{
		Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/",
		Mode: mode, Uid: uid, Gid: gid, ModTime: epoch, Format: tar.FormatPAX,
	}
}

// tarMode is the tar header mode: permission bits plus set-uid, set-gid and sticky.
func tarMode(m fs.FileMode, perm fs.FileMode) int64 {
	mode := int64(perm)
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
