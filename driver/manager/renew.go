package manager

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/driver/renew"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// scheduleRenewal schedules v at 2/3 of its certificate's lifetime, jittered.
func (m *Manager) scheduleRenewal(v *vol) time.Time {
	nb, na := v.validity()
	at := renew.RenewAt(nb, na, m.opts.Jitter())
	m.sched.Schedule(v.meta.VolumeID, at)
	return at
}

// notReadyRetry is how soon a renewal that fell due before the driver was
// ready is tried again.
const notReadyRetry = time.Second

// renew is the scheduler's work for one volume: a new key and certificate
// with the freshest token, or a jittered, growing backoff.
func (m *Manager) renew(ctx context.Context, id string) {
	v := m.lookup(id)
	if v == nil {
		return
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), logkey.Volume, id, logkey.Pod, klog.KRef(v.meta.PodNamespace, v.meta.PodName))
	ctx = klog.NewContext(ctx, logger)
	if err := m.Ready(); err != nil {
		// Volumes recovered at start fall due before the request cache and
		// the live settings are read: a renewal then could go to an issuer
		// that is no longer active.
		logger.V(2).Info("Renewal due; waiting for the driver to be ready", "err", err)
		m.sched.Schedule(id, m.opts.Clock.Now().Add(notReadyRetry))
		return
	}
	if !m.opts.NodeBound { // node-bound: the driver's own credentials, no pod token to wait for
		if _, ok := v.freshToken(m.opts.Clock.Now()); !ok {
			// Nothing to send yet: the next republish (about every 10 s) reschedules.
			logger.V(2).Info("Renewal due; waiting for a fresh token from the next republish")
			return
		}
	}
	unlock, err := m.locks.Lock(ctx, id)
	if err != nil {
		return // shutting down
	}
	defer unlock()
	if m.lookup(id) != v {
		return
	}
	defer func() {
		// A CA bundle change that found the volume busy is written now,
		// before the lock goes (RefreshCA does not wait for a renewal).
		if _, err := m.refreshCA(ctx, v); err != nil {
			logger.Error(err, "Could not rewrite the CA bundle after the renewal; the next change or restart retries")
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, m.opts.RenewTimeout)
	defer cancel()
	if !v.startRenewal(cancel) {
		return
	}
	defer v.endRenewal()

	_, err = m.issueAndWrite(rctx, "renew", v)
	if err == nil {
		m.opts.Issuer.Release(ctx, id)
	}
	if ctx.Err() != nil || errors.Is(rctx.Err(), context.Canceled) {
		return // shutting down, or unpublished (v.close cancels rctx): not a failure
	}
	if err != nil {
		n := v.failed(err)
		delay := m.opts.Backoff.Delay(n, m.opts.Jitter())
		m.sched.Schedule(id, m.opts.Clock.Now().Add(delay))
		m.opts.Metrics.Renewed(false)
		logger.Error(err, "Renewal failed; retrying after a backoff", logkey.Failures, n, "retryIn", delay)
		return
	}
	m.opts.Metrics.Renewed(true)
	at := m.scheduleRenewal(v)
	_, na := v.validity()
	logger.Info("Renewed certificate", logkey.NotAfter, na, logkey.RenewAt, at)
}

// Recover finds the volumes of a previous run again from the data root: a
// volume whose target is still mounted is managed again (renewed when its next
// republish brings a token); one whose target vanished is forgotten. Call it
// once, before serving.
func (m *Manager) Recover(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	defer m.recovered.Store(true)
	metas, err := m.opts.Store.List()
	if err != nil {
		logger.Error(err, "Some volume state could not be read and was dropped")
	}
	for _, meta := range metas {
		l := klog.LoggerWithValues(logger, logkey.Volume, meta.VolumeID, logkey.Target, meta.TargetPath)
		mounted, err := m.opts.Mounter.IsMounted(meta.TargetPath)
		if err != nil {
			l.Error(err, "Cannot tell whether a recovered volume is still mounted; keeping it")
			mounted = true
		}
		if !mounted {
			if err := m.opts.Store.Delete(meta.VolumeID); err != nil {
				l.Error(err, "Could not drop the state of a vanished volume")
			}
			l.Info("Dropped a volume whose target vanished while the driver was down")
			continue
		}
		v := &vol{meta: meta}
		if files, err := volume.ReadFiles(meta.TargetPath, m.opts.Files.CA); err == nil {
			v.ca = files[m.opts.Files.CA] // refreshed at start if the bundle changed meanwhile
		}
		if nb, na, err := m.readValidity(meta.TargetPath); err == nil {
			v.notBefore, v.notAfter = nb, na
		} else {
			// Zero validity: renewed as soon as a token comes.
			l.Error(err, "Cannot read the certificate of a recovered volume; renewing it as soon as a token comes")
		}
		m.add(v)
		at := m.scheduleRenewal(v)
		l.Info("Recovered volume", logkey.Pod, klog.KRef(meta.PodNamespace, meta.PodName), logkey.NotAfter, v.notAfter, logkey.RenewAt, at)
	}
	return nil
}

func (m *Manager) readValidity(target string) (time.Time, time.Time, error) {
	files, err := volume.ReadFiles(target, m.opts.Files.Certificate)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	block, _ := pem.Decode(files[m.opts.Files.Certificate])
	if block == nil {
		return time.Time{}, time.Time{}, errors.New("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("parse certificate: %w", err)
	}
	return cert.NotBefore, cert.NotAfter, nil
}
