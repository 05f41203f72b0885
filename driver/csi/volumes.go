package csi

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/renew"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// releaseTimeout bounds the deletion of a request once its certificate is
// written; it does not hold up the answer for long.
const releaseTimeout = 10 * time.Second

// publish mounts, issues and writes a new volume. Called with its lock held.
// A failure undoes the mount and the state; a request still pending stays
// remembered by the issuer for the next call.
func (d *Driver) publish(ctx context.Context, p *publishParams) (err error) {
	logger := klog.FromContext(ctx)
	created, err := d.opts.Mounter.MountTmpfs(p.targetPath)
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	success := false
	defer func() {
		// A mount this call did not make (a live volume whose state was lost)
		// is never undone: the pod may be reading its files.
		if success || !created {
			return
		}
		if cerr := d.opts.Mounter.Cleanup(p.targetPath); cerr != nil {
			logger.Error(cerr, "Could not undo the mount of a failed publish")
		}
	}()

	meta := volume.Meta{
		VolumeID: p.volumeID, TargetPath: p.targetPath,
		PodNamespace: p.podNamespace, PodName: p.podName, PodUID: p.podUID,
		ServiceAccount: p.serviceAccount, FSGroup: p.gid,
	}
	v := &vol{meta: meta, token: p.token, tokenExpiry: p.tokenExpiry}
	res, err := d.issue(ctx, "publish", v)
	if err != nil {
		return err
	}
	if err := d.write(v, res); err != nil {
		d.opts.Metrics.Failed("publish", "local", 0)
		return status.Errorf(codes.Internal, "write certificate into volume %s: %v", p.volumeID, err)
	}
	v.meta.NotBefore, v.meta.NotAfter = res.NotBefore, res.NotAfter
	v.notBefore, v.notAfter = res.NotBefore, res.NotAfter
	if err := d.opts.Store.Save(v.meta); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	success = true
	d.add(v)
	at := d.scheduleRenewal(v)
	d.release(ctx, p.volumeID)
	logger.Info("Published volume", keyRequestN, res.Request, keyNotAfter, res.NotAfter, keyRenewAt, at)
	return nil
}

// issue has a certificate issued for v's pod, within the global limit of
// issuances in flight. Errors are gRPC status errors.
func (d *Driver) issue(ctx context.Context, trigger string, v *vol) (*issuance.Result, error) {
	start := d.opts.Clock.Now()
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		d.opts.Metrics.Failed(trigger, "timeout", d.opts.Clock.Since(start))
		return nil, status.Errorf(codes.DeadlineExceeded, "waiting for one of %d issuance slots: %v", cap(d.sem), ctx.Err())
	}
	defer func() { <-d.sem }()
	// Read after the wait for a slot: a token that expired meanwhile is not sent.
	token, ok := v.freshToken(d.opts.Clock.Now())
	if !ok {
		d.opts.Metrics.Failed(trigger, "token", d.opts.Clock.Since(start))
		return nil, status.Errorf(codes.Unavailable, "the pod's token for volume %s has expired; the next republish brings a fresh one", v.meta.VolumeID)
	}
	res, err := d.opts.Issuer.Issue(ctx, issuance.Request{
		VolumeID: v.meta.VolumeID, Namespace: v.meta.PodNamespace, PodName: v.meta.PodName,
		PodUID: v.meta.PodUID, ServiceAccount: v.meta.ServiceAccount, Token: token,
	})
	if err != nil {
		var ie *issuance.Error
		if errors.As(err, &ie) {
			d.opts.Metrics.Failed(trigger, ie.Reason, d.opts.Clock.Since(start))
			return nil, status.Error(ie.Code, ie.Message)
		}
		d.opts.Metrics.Failed(trigger, "other", d.opts.Clock.Since(start))
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Unavailable, "issue certificate: %v", err)
	}
	d.opts.Metrics.Issued(trigger, d.opts.Clock.Since(start))
	return res, nil
}

// write replaces the volume's files as one set.
func (d *Driver) write(v *vol, res *issuance.Result) error {
	files := map[string][]byte{
		d.opts.Files.Certificate: res.ChainPEM,
		d.opts.Files.Key:         res.KeyPEM,
	}
	if d.opts.CABundle != nil && d.opts.Files.CA != "" {
		if ca := d.opts.CABundle(); len(ca) > 0 {
			files[d.opts.Files.CA] = ca
		}
	}
	return volume.WriteFiles(v.meta.TargetPath, files, v.meta.FSGroup)
}

// release deletes the volume's request once its certificate is written.
func (d *Driver) release(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	d.opts.Issuer.Release(rctx, id)
}

// scheduleRenewal schedules v at 2/3 of its certificate's lifetime, jittered.
func (d *Driver) scheduleRenewal(v *vol) time.Time {
	nb, na := v.validity()
	at := renew.RenewAt(nb, na, d.opts.Jitter())
	d.sched.Schedule(v.meta.VolumeID, at)
	return at
}

// renew is the scheduler's work for one volume: a new key and certificate
// with the freshest token, or a jittered, growing backoff.
func (d *Driver) renew(ctx context.Context, id string) {
	v := d.lookup(id)
	if v == nil {
		return
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), keyVolumeID, id, keyPod, klog.KRef(v.meta.PodNamespace, v.meta.PodName))
	ctx = klog.NewContext(ctx, logger)
	if _, ok := v.freshToken(d.opts.Clock.Now()); !ok {
		// Nothing to send yet: the next republish (about every 10 s) reschedules.
		logger.V(2).Info("Renewal due; waiting for a fresh token from the next republish")
		return
	}
	unlock, err := d.locks.Lock(ctx, id)
	if err != nil {
		return // shutting down
	}
	defer unlock()
	if d.lookup(id) != v {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, d.opts.RenewTimeout)
	defer cancel()
	if !v.startRenewal(cancel) {
		return
	}
	defer v.endRenewal()

	err = d.renewOnce(rctx, v)
	if ctx.Err() != nil || errors.Is(rctx.Err(), context.Canceled) {
		return // shutting down, or unpublished (v.close cancels rctx): not a failure
	}
	if err != nil {
		n := v.failed(err)
		delay := d.opts.Backoff.Delay(n, d.opts.Jitter())
		d.sched.Schedule(id, d.opts.Clock.Now().Add(delay))
		d.opts.Metrics.Renewed(false)
		logger.Error(err, "Renewal failed; retrying after a backoff", keyFailures, n, "retryIn", delay)
		return
	}
	d.opts.Metrics.Renewed(true)
	at := d.scheduleRenewal(v)
	_, na := v.validity()
	logger.Info("Renewed certificate", keyNotAfter, na, keyRenewAt, at)
}

func (d *Driver) renewOnce(ctx context.Context, v *vol) error {
	res, err := d.issue(ctx, "renew", v)
	if err != nil {
		return fmt.Errorf("%s", status.Convert(err).Message())
	}
	if err := d.write(v, res); err != nil {
		d.opts.Metrics.Failed("renew", "local", 0)
		return fmt.Errorf("write renewed certificate: %w", err)
	}
	// v.meta is never changed once the volume is added (lock-free readers use
	// it); the new expiry lives in the guarded validity and the saved copy.
	meta := v.meta
	meta.NotBefore, meta.NotAfter = res.NotBefore, res.NotAfter
	v.setValidity(res.NotBefore, res.NotAfter)
	d.release(ctx, meta.VolumeID)
	if err := d.opts.Store.Save(meta); err != nil {
		// The files are right; only a restart would see the old expiry and
		// renew early, which is harmless.
		klog.FromContext(ctx).Error(err, "Could not save the renewed expiry")
	}
	return nil
}

// Recover finds the volumes of a previous run again from the data root: a
// volume whose target is still mounted is managed again (renewed when its next
// republish brings a token); one whose target vanished is forgotten. Call it
// once, before serving.
func (d *Driver) Recover(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	defer d.recovered.Store(true)
	metas, err := d.opts.Store.List()
	if err != nil {
		logger.Error(err, "Some volume state could not be read and was dropped")
	}
	for _, m := range metas {
		l := klog.LoggerWithValues(logger, keyVolumeID, m.VolumeID, keyTarget, m.TargetPath)
		mounted, err := d.opts.Mounter.IsMounted(m.TargetPath)
		if err != nil {
			l.Error(err, "Cannot tell whether a recovered volume is still mounted; keeping it")
			mounted = true
		}
		if !mounted {
			if err := d.opts.Store.Delete(m.VolumeID); err != nil {
				l.Error(err, "Could not drop the state of a vanished volume")
			}
			l.Info("Dropped a volume whose target vanished while the driver was down")
			continue
		}
		v := &vol{meta: m, notBefore: m.NotBefore, notAfter: m.NotAfter}
		if nb, na, err := d.readValidity(m.TargetPath); err == nil {
			v.notBefore, v.notAfter = nb, na
		} else {
			l.Error(err, "Cannot read the certificate of a recovered volume; renewing it as soon as a token comes")
			v.notBefore, v.notAfter = time.Time{}, time.Time{}
		}
		d.add(v)
		at := d.scheduleRenewal(v)
		l.Info("Recovered volume", keyPod, klog.KRef(m.PodNamespace, m.PodName), keyNotAfter, v.notAfter, keyRenewAt, at)
	}
	return nil
}

func (d *Driver) readValidity(target string) (time.Time, time.Time, error) {
	files, err := volume.ReadFiles(target, d.opts.Files.Certificate)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	block, _ := pem.Decode(files[d.opts.Files.Certificate])
	if block == nil {
		return time.Time{}, time.Time{}, errors.New("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("parse certificate: %w", err)
	}
	return cert.NotBefore, cert.NotAfter, nil
}
