// Package volume keeps what the driver must find again after a restart: the
// per-volume metadata on the data root, and the files inside each volume,
// replaced as one set the way the kubelet's AtomicWriter does it.
package volume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	// dataLink is the symlink that points at the current generation of files.
	dataLink    = "..data"
	dataLinkTmp = "..data_tmp"
	genPrefix   = ".."
	// FileMode is the mode of every file written into a volume.
	FileMode fs.FileMode = 0o440
)

// WriteFiles replaces the files in dir as one set: they are written into a new
// timestamped directory, then the ..data symlink is swapped to it with one
// rename(2), so a reader that resolves ..data once never mixes generations.
// The user-visible names are symlinks through ..data. gid < 0 leaves the
// files owned by the driver's group.
func WriteFiles(dir string, files map[string][]byte, gid int64) error {
	names := map[string]bool{}
	for name := range files {
		names[name] = true
	}
	return swap(dir, names, func(gen string) error {
		for name, data := range files {
			if err := writeFile(filepath.Join(gen, name), data, gid); err != nil {
				return err
			}
		}
		return nil
	})
}

// UpdateFiles replaces some files of dir's current set and keeps the others
// as they are, in one swap as WriteFiles does: the files in changed are
// written, those named in keep are carried over from the current generation
// as hard links (their bytes never pass through memory), and any other file
// of the set goes.
func UpdateFiles(dir string, keep []string, changed map[string][]byte, gid int64) error {
	cur, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(dir, dataLink), err)
	}
	names := map[string]bool{}
	for _, name := range keep {
		names[name] = true
	}
	for name := range changed {
		if names[name] {
			return fmt.Errorf("file %q both kept and changed", name)
		}
		names[name] = true
	}
	return swap(dir, names, func(gen string) error {
		for _, name := range keep {
			if err := os.Link(filepath.Join(dir, filepath.Base(cur), name), filepath.Join(gen, name)); err != nil {
				return fmt.Errorf("keep %s: %w", name, err)
			}
		}
		for name, data := range changed {
			if err := writeFile(filepath.Join(gen, name), data, gid); err != nil {
				return err
			}
		}
		return nil
	})
}

// swap makes a new generation holding the files names, filled by fill, the
// current one: ..data is swapped to it with one rename(2), the user-visible
// links are created and the old generations pruned.
func swap(dir string, names map[string]bool, fill func(gen string) error) (err error) {
	for name := range names {
		if name == "" || strings.ContainsRune(name, '/') || strings.HasPrefix(name, "..") {
			return fmt.Errorf("invalid file name %q", name)
		}
	}
	gen, err := os.MkdirTemp(dir, genPrefix+time.Now().UTC().Format("2006_01_02_15_04_05.")+"*")
	if err != nil {
		return fmt.Errorf("create generation directory in %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(gen)
		}
	}()
	if err := os.Chmod(gen, 0o755); err != nil {
		return fmt.Errorf("chmod %s: %w", gen, err)
	}
	if err := fill(gen); err != nil {
		return err
	}
	tmp := filepath.Join(dir, dataLinkTmp)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		return fmt.Errorf("swap %s: %w", dataLink, err)
	}
	// From here on the new set is live: failures below leave it in place.
	err = nil
	var errs []error
	for name := range names {
		link := filepath.Join(dir, name)
		if _, lerr := os.Lstat(link); lerr == nil {
			continue
		}
		if serr := os.Symlink(filepath.Join(dataLink, name), link); serr != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", link, serr))
		}
	}
	errs = append(errs, prune(dir, filepath.Base(gen), names))
	return errors.Join(errs...)
}

func writeFile(path string, data []byte, gid int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, int(gid)); err != nil {
			return fmt.Errorf("chown %s to group %d: %w", path, gid, err)
		}
	}
	// The umask may have narrowed the mode given to open(2).
	if err := os.Chmod(path, FileMode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

// prune removes old generations and user-visible links of files no longer
// in the set.
func prune(dir, current string, names map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == dataLink || name == current:
		case strings.HasPrefix(name, genPrefix) && e.IsDir():
			// The old generation and leftovers of an interrupted write.
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				errs = append(errs, fmt.Errorf("remove old generation %s: %w", name, err))
			}
		case !strings.HasPrefix(name, genPrefix) && e.Type()&fs.ModeSymlink != 0:
			if !names[name] {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					errs = append(errs, fmt.Errorf("remove stale link %s: %w", name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Written reports whether dir holds a set of files WriteFiles wrote.
func Written(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, dataLink))
	return err == nil
}

// ReadFiles reads the named files of the current generation in dir,
// resolving ..data once so they belong to the same set.
func ReadFiles(dir string, names ...string) (map[string][]byte, error) {
	root, err := os.OpenRoot(filepath.Join(dir, dataLink))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", filepath.Join(dir, dataLink), err)
	}
	defer func() { _ = root.Close() }()
	out := make(map[string][]byte, len(names))
	for _, name := range names {
		data, err := root.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read %s in %s: %w", name, dir, err)
		}
		out[name] = data
	}
	return out, nil
}
