package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Meta is what the driver persists about a published volume, on the host's
// tmpfs data root. It never holds a token or a key: the key lives only in the
// volume's own tmpfs, the token only in memory. Nor does it hold the
// certificate's validity: the certificate in the volume is its one source.
type Meta struct {
	VolumeID       string `json:"volumeID"`
	TargetPath     string `json:"targetPath"`
	PodNamespace   string `json:"podNamespace"`
	PodName        string `json:"podName"`
	PodUID         string `json:"podUID"`
	ServiceAccount string `json:"serviceAccount"`
	FSGroup        int64  `json:"fsGroup"` // -1 when none
}

// Store keeps one metadata file per volume under <root>/volumes.
type Store struct {
	dir string
}

// NewStore creates the store's directory under root.
func NewStore(root string) (*Store, error) {
	dir := filepath.Join(root, "volumes")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// StateFile is the volume's state file, named by a hash of its ID: IDs may
// hold any character.
func (s *Store) StateFile(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(s.dir, hex.EncodeToString(sum[:16])+".json")
}

// Save writes m atomically (a temporary file renamed over the old one).
func (s *Store) Save(m Meta) error {
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode state of volume %s: %w", m.VolumeID, err)
	}
	f, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("save state of volume %s: %w", m.VolumeID, err)
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("save state of volume %s: %w", m.VolumeID, err)
	}
	if err := os.Rename(f.Name(), s.StateFile(m.VolumeID)); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("save state of volume %s: %w", m.VolumeID, err)
	}
	return nil
}

// Delete removes a volume's state; a missing one is not an error.
func (s *Store) Delete(volumeID string) error {
	if err := os.Remove(s.StateFile(volumeID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete state of volume %s: %w", volumeID, err)
	}
	return nil
}

// List returns every saved volume. Unreadable files are removed and reported.
func (s *Store) List() ([]Meta, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list state directory %s: %w", s.dir, err)
	}
	var metas []Meta
	var errs []error
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(s.dir, name)
		if strings.HasPrefix(name, ".tmp-") {
			_ = os.Remove(p) // an interrupted Save
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		data, err := os.ReadFile(p)
		var m Meta
		if err == nil {
			err = json.Unmarshal(data, &m)
		}
		if err == nil && (m.VolumeID == "" || s.StateFile(m.VolumeID) != p) {
			err = errors.New("volume ID does not match the file name")
		}
		if err != nil {
			_ = os.Remove(p)
			errs = append(errs, fmt.Errorf("drop unreadable state %s: %w", p, err))
			continue
		}
		metas = append(metas, m)
	}
	return metas, errors.Join(errs...)
}
