// Package cabundle holds the CA bundle the driver writes into every volume,
// read from --source-ca-bundle (one or more PEM CERTIFICATE blocks, nothing
// else), and follows the file as it changes.
package cabundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/metrics"
)

// settle is how long a burst of events in the directory (the kubelet's swap
// of a mounted Secret makes several) is left to end before the file is read.
const settle = 100 * time.Millisecond

// Bundle is the current CA bundle. A nil *Bundle holds none.
type Bundle struct {
	path string
	pem  atomic.Pointer[[]byte]
}

// Load reads and validates the bundle at path; an empty path means none (a
// nil Bundle).
func Load(path string) (*Bundle, error) {
	if path == "" {
		return nil, nil
	}
	data, err := read(path)
	if err != nil {
		return nil, err
	}
	b := &Bundle{path: path}
	b.pem.Store(&data)
	return b, nil
}

// PEM is the bundle to write; nil when there is none.
func (b *Bundle) PEM() []byte {
	if b == nil {
		return nil
	}
	if p := b.pem.Load(); p != nil {
		return *p
	}
	return nil
}

// Watch follows the file until ctx is done. It watches the file's directory,
// not the file: a mounted Secret or ConfigMap is updated by swapping a
// ..data link, which a watch on the file would not see. After each burst of
// events it reads the file again: a valid bundle that differs becomes the
// current one and onChange runs; anything else is rejected (logged once per
// distinct content, and counted), and the last good bundle stays. A nil
// Bundle only waits.
func (b *Bundle) Watch(ctx context.Context, m *metrics.Metrics, onChange func(context.Context)) error {
	if b == nil {
		<-ctx.Done()
		return nil
	}
	logger := klog.FromContext(ctx).WithValues("caBundle", b.path)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch CA bundle: %w", err)
	}
	defer func() { _ = w.Close() }()
	dir := filepath.Dir(b.path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch CA bundle directory %s: %w", dir, err)
	}
	logger.Info("Watching the CA bundle")
	var timer *time.Timer // settles a burst of events; nil before the first
	var settled <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var lastRejected [sha256.Size]byte
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			logger.Error(err, "Watching the CA bundle failed; changes may be missed until the next event")
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			if timer == nil {
				timer = time.NewTimer(settle)
				settled = timer.C
			} else {
				timer.Reset(settle)
			}
		case <-settled:
			data, err := read(b.path)
			if err != nil {
				sum := sha256.Sum256([]byte(err.Error()))
				if sum != lastRejected {
					lastRejected = sum
					m.CABundleReloaded(false)
					logger.Error(err, "Rejected the changed CA bundle; every volume keeps the last good one")
				}
				continue
			}
			lastRejected = [sha256.Size]byte{}
			if bytes.Equal(data, b.PEM()) {
				continue
			}
			b.pem.Store(&data)
			m.CABundleReloaded(true)
			logger.Info("CA bundle changed; rewriting it in every volume", "certificates", count(data))
			onChange(ctx)
		}
	}
}

// read reads and validates the bundle file.
func read(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	if err := validate(data); err != nil {
		return nil, fmt.Errorf("CA bundle %s: %w", path, err)
	}
	return data, nil
}

// validate accepts one or more PEM CERTIFICATE blocks, each a parsable
// certificate without PEM headers, and nothing else but whitespace.
func validate(data []byte) error {
	n := 0
	rest := data
	for {
		rest = bytes.TrimLeft(rest, " \t\r\n")
		if len(rest) == 0 {
			break
		}
		if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
			return fmt.Errorf("text outside a PEM block at byte %d", len(data)-len(rest))
		}
		var block *pem.Block
		block, rest = pem.Decode(rest)
		n++
		switch {
		case block == nil:
			return fmt.Errorf("block %d: not a complete PEM block", n)
		case block.Type != "CERTIFICATE":
			return fmt.Errorf("block %d: unexpected PEM block %q", n, block.Type)
		case len(block.Headers) > 0:
			return fmt.Errorf("block %d: PEM headers are not allowed", n)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("block %d: %w", n, err)
		}
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

func count(data []byte) int {
	return bytes.Count(data, []byte("-----BEGIN CERTIFICATE-----"))
}
