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
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/metrics"
)

const (
	// settle is how long a burst of events in the directory (the kubelet's
	// swap of a mounted Secret makes several) is left to end before the file
	// is read; maxSettle bounds the wait for a directory that keeps changing.
	settle    = 100 * time.Millisecond
	maxSettle = time.Second
)

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
	if strings.HasPrefix(filepath.Base(filepath.Dir(path)), "..") {
		// ..data or a timestamped generation: the kubelet replaces it.
		return nil, fmt.Errorf("CA bundle %s: name the file the kubelet mounts, not one inside its ..data generations", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	if err := validate(data); err != nil {
		return nil, fmt.Errorf("CA bundle %s: %w", path, err)
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

// Watcher follows a Bundle's file. A nil *Watcher follows nothing.
type Watcher struct {
	b   *Bundle
	dir string
	w   *fsnotify.Watcher
}

// Watch sets up the watch of the bundle's file now, so that a failure stops
// the start; Run follows it. It watches the file's directory, not the file: a
// mounted Secret or ConfigMap is updated by swapping a ..data link, which a
// watch on the file would not see. A nil Bundle gives a nil Watcher.
func (b *Bundle) Watch() (*Watcher, error) {
	if b == nil {
		return nil, nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch CA bundle: %w", err)
	}
	dir := filepath.Dir(b.path)
	if err := w.Add(dir); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("watch CA bundle directory %s: %w", dir, err)
	}
	return &Watcher{b: b, dir: dir, w: w}, nil
}

// Run follows the file until ctx is done. It reads the file once at once (a
// change between Load and Watch made no event), then after each burst of
// events: a valid bundle that differs becomes the current one and onChange
// runs; anything else is rejected (logged and counted once per distinct
// content), and the last good bundle stays. It fails only when the
// directory itself goes away and cannot be watched again.
func (w *Watcher) Run(ctx context.Context, m *metrics.Metrics, onChange func(context.Context)) error {
	if w == nil {
		<-ctx.Done()
		return nil
	}
	defer func() { _ = w.w.Close() }()
	logger := klog.FromContext(ctx).WithValues("caBundle", w.b.path)
	logger.Info("Watching the CA bundle")
	var lastRejected [sha256.Size]byte
	reload := func() {
		data, err := os.ReadFile(w.b.path)
		if err == nil {
			err = validate(data)
		}
		if err != nil {
			key := sha256.Sum256(append([]byte(err.Error()+"\x00"), data...))
			if key != lastRejected {
				lastRejected = key
				m.CABundleReloaded(false)
				logger.Error(err, "Rejected the changed CA bundle; every volume keeps the last good one")
			}
			return
		}
		lastRejected = [sha256.Size]byte{}
		if bytes.Equal(data, w.b.PEM()) {
			return
		}
		w.b.pem.Store(&data)
		m.CABundleReloaded(true)
		logger.Info("CA bundle changed; rewriting it in every volume", "certificates", bytes.Count(data, []byte("-----BEGIN ")))
		onChange(ctx)
	}
	reload()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var burst time.Time // when the pending burst began; zero: none
	pending := func() {
		now := time.Now()
		if burst.IsZero() {
			burst = now
		}
		if now.Sub(burst) < maxSettle {
			timer.Reset(settle)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.w.Errors:
			if !ok {
				return nil
			}
			// An overflow may have dropped the very change: read again.
			logger.Error(err, "Watching the CA bundle lost events; reading it again")
			pending()
		case ev, ok := <-w.w.Events:
			if !ok {
				return nil
			}
			if ev.Name == w.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				// The watch went with the directory: take the new one.
				if err := w.rewatch(ctx); err != nil {
					return err
				}
				logger.Info("The CA bundle's directory was replaced; watching the new one")
			}
			pending()
		case <-timer.C:
			burst = time.Time{}
			reload()
		}
	}
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
		block, next := pem.Decode(rest)
		n++
		consumed := rest[:len(rest)-len(next)]
		rest = next
		switch {
		case block == nil || bytes.Count(consumed, []byte("-----BEGIN ")) != 1:
			// pem.Decode skips a malformed block to the next good one.
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

// rewatch watches the directory again once it is back, waiting for it up to
// maxSettle: a directory replaced by a rename is back at once.
func (w *Watcher) rewatch(ctx context.Context) error {
	deadline := time.Now().Add(maxSettle)
	for {
		err := w.w.Add(w.dir)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the CA bundle's directory %s went away: %w", w.dir, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(settle):
		}
	}
}
