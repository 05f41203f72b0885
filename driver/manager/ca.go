package manager

import (
	"bytes"
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/driver/volume"
)

const (
	// caWorkers bounds the volumes whose CA bundle is rewritten at once.
	caWorkers = 8
	// caLockWait bounds the wait for a volume busy with a renewal: one that
	// takes longer writes the bundle itself before it lets go.
	caLockWait = time.Second
)

// RefreshCA writes the current CA bundle into every volume that holds
// another, replacing only that file (the certificate and key stay the very
// same files) in one atomic swap. A volume busy with a renewal for longer
// than caLockWait is left to it: the renewal writes the bundle before it lets
// go of the volume. Call it when the bundle changed, and once after Recover;
// concurrent calls are serialised.
func (m *Manager) RefreshCA(ctx context.Context) {
	if m.caBundle() == nil {
		return
	}
	m.caMu.Lock()
	defer m.caMu.Unlock()
	logger := klog.FromContext(ctx)
	m.mu.Lock()
	vols := make([]*vol, 0, len(m.vols))
	for _, v := range m.vols {
		vols = append(vols, v)
	}
	m.mu.Unlock()

	var mu sync.Mutex
	updated, failed := 0, 0
	work := make(chan *vol)
	var wg sync.WaitGroup
	for range min(caWorkers, len(vols)) {
		wg.Go(func() {
			for v := range work {
				ok, err := m.refreshLocked(ctx, v)
				mu.Lock()
				switch {
				case err != nil:
					failed++
					logger.Error(err, "Could not rewrite the CA bundle in a volume; the next change or restart retries",
						logkey.Volume, v.meta.VolumeID, logkey.Pod, klog.KRef(v.meta.PodNamespace, v.meta.PodName))
				case ok:
					updated++
				}
				mu.Unlock()
			}
		})
	}
	for _, v := range vols {
		select {
		case work <- v:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if updated > 0 || failed > 0 {
		logger.Info("Rewrote the CA bundle in the volumes", "updated", updated, "failed", failed, "volumes", len(vols))
	}
}

// refreshLocked is refreshCA under the volume's lock, waiting for it up to
// caLockWait.
func (m *Manager) refreshLocked(ctx context.Context, v *vol) (bool, error) {
	lctx, cancel := context.WithTimeout(ctx, caLockWait)
	defer cancel()
	unlock, err := m.locks.Lock(lctx, v.meta.VolumeID)
	if err != nil {
		return false, nil // busy renewing (it writes the bundle), or shutting down
	}
	defer unlock()
	if m.lookup(v.meta.VolumeID) != v {
		return false, nil // unpublished meanwhile
	}
	return m.refreshCA(ctx, v)
}

// refreshCA rewrites v's CA bundle if it is not the current one. Called with
// the volume's lock held.
func (m *Manager) refreshCA(ctx context.Context, v *vol) (bool, error) {
	ca := m.caBundle()
	if ca == nil || bytes.Equal(ca, v.caBundle()) {
		return false, nil
	}
	dir, done, err := m.opts.Mounter.OpenTmpfs(v.meta.TargetPath)
	if err != nil {
		return false, failure.New(failure.Local, "%w", err)
	}
	defer done()
	err = volume.UpdateFiles(dir, []string{m.opts.Files.Certificate, m.opts.Files.Key},
		map[string][]byte{m.opts.Files.CA: ca}, v.meta.FSGroup)
	m.opts.Metrics.CABundleWritten(err == nil)
	if err != nil {
		return false, err
	}
	v.setCABundle(ca)
	klog.FromContext(ctx).V(2).Info("Rewrote the CA bundle", logkey.Volume, v.meta.VolumeID)
	return true, nil
}
