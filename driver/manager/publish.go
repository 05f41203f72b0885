package manager

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// unpublishLockWait bounds how long an unpublish waits for a renewal it has
// cancelled to let go of the volume.
const unpublishLockWait = 10 * time.Second

// Publish makes the volume described by meta hold a certificate for its pod.
// A volume already published (the kubelet republishes about every 10 s) only
// has its token refreshed: no API call, no write, never an unmount. A failed
// first publish undoes its mount and state; a request still pending stays
// remembered by the issuer for the next call.
func (m *Manager) Publish(ctx context.Context, meta volume.Meta, tok Token) error {
	if v := m.lookup(meta.VolumeID); v != nil {
		return m.republish(ctx, v, meta, tok)
	}
	// Before the request cache and the runtime issuer are read, a request
	// could go to the wrong issuer or never be seen: the kubelet retries.
	if err := m.Ready(); err != nil {
		return err
	}
	unlock, ok := m.locks.TryLock(meta.VolumeID)
	if !ok {
		return failure.New(failure.Busy, "an operation on volume %s is already in progress", meta.VolumeID)
	}
	defer unlock()
	if v := m.lookup(meta.VolumeID); v != nil {
		return m.republish(ctx, v, meta, tok)
	}
	return m.publish(ctx, meta, tok)
}

func (m *Manager) republish(ctx context.Context, v *vol, meta volume.Meta, tok Token) error {
	if v.meta.TargetPath != meta.TargetPath {
		return failure.New(failure.Conflict, "volume %s is already published at %s", meta.VolumeID, v.meta.TargetPath)
	}
	if v.meta.PodUID != meta.PodUID {
		return failure.New(failure.Conflict, "volume %s is already published for pod UID %s", meta.VolumeID, v.meta.PodUID)
	}
	if v.setToken(tok) {
		// A renewal fell due without a usable token: this one unblocks it.
		klog.FromContext(ctx).V(2).Info("Fresh token for a renewal that was waiting for one")
		m.sched.Schedule(meta.VolumeID, m.opts.Clock.Now())
	}
	return nil
}

// publish mounts, issues and writes a new volume. Called with its lock held.
func (m *Manager) publish(ctx context.Context, meta volume.Meta, tok Token) (err error) {
	logger := klog.FromContext(ctx)
	created, err := m.opts.Mounter.MountTmpfs(meta.TargetPath)
	if err != nil {
		return failure.New(failure.Local, "%w", err)
	}
	if !created && !volume.Written(meta.TargetPath) {
		// A tmpfs with no state and no files is what a publish killed
		// before it wrote left behind: this one owns it, and undoes it if it
		// fails, or it would stay mounted until the node reboots.
		logger.Info("Taking over the empty tmpfs a failed publish left at the target")
		created = true
	}
	success := false
	defer func() {
		// A mount with files that this call did not make (a live volume
		// whose state was lost) is never undone: a pod may be reading them.
		if success || !created {
			return
		}
		if cerr := m.opts.Mounter.Cleanup(meta.TargetPath); cerr != nil {
			logger.Error(cerr, "Could not undo the mount of a failed publish")
		}
	}()

	v := &vol{meta: meta, token: tok}
	res, err := m.issueAndWrite(ctx, "publish", v)
	if err != nil {
		return err
	}
	if err := m.opts.Store.Save(meta); err != nil {
		return failure.New(failure.Local, "%w", err)
	}
	success = true
	m.add(v)
	// The bundle may have changed since it was written, before a refresh
	// could see this volume.
	if _, err := m.refreshCA(ctx, v); err != nil {
		logger.Error(err, "Could not rewrite the CA bundle that changed during the publish; the next change or restart retries")
	}
	at := m.scheduleRenewal(v)
	m.opts.Issuer.Release(ctx, meta.VolumeID) // in the background: the pod does not wait for it
	logger.Info("Published volume", logkey.CertificateRequest, res.Request, logkey.NotAfter, res.NotAfter, logkey.RenewAt, at)
	return nil
}

// issueAndWrite has a certificate issued for v's pod and writes it into the
// volume. It records exactly one outcome in the metrics.
func (m *Manager) issueAndWrite(ctx context.Context, trigger string, v *vol) (*issuance.Result, error) {
	start := m.opts.Clock.Now()
	// Checked before an issuance is spent on a target that is gone, and
	// again just before the write.
	err := m.onTmpfs(v)
	var res *issuance.Result
	if err == nil {
		res, err = m.issue(ctx, v, trigger == "renew")
	}
	if err == nil {
		if werr := m.write(v, res); werr != nil {
			err = failure.New(failure.Local, "write certificate into volume %s: %w", v.meta.VolumeID, werr)
		}
	}
	if err != nil {
		m.opts.Metrics.Failed(trigger, failure.ReasonOf(err), m.opts.Clock.Since(start))
		return nil, err
	}
	v.issued(res.NotBefore, res.NotAfter)
	m.opts.Metrics.Issued(trigger, m.opts.Clock.Since(start))
	return res, nil
}

func (m *Manager) issue(ctx context.Context, v *vol, renewal bool) (*issuance.Result, error) {
	var token Token
	if !m.opts.NodeBound {
		var ok bool
		if token, ok = v.freshToken(m.opts.Clock.Now()); !ok {
			return nil, failure.New(failure.Token, "the pod's token for volume %s has expired; the next republish brings a fresh one", v.meta.VolumeID)
		}
	}
	// The issuer checks the expiry again once it has a create slot.
	return m.opts.Issuer.Issue(ctx, issuance.Request{
		VolumeID: v.meta.VolumeID, Namespace: v.meta.PodNamespace, PodName: v.meta.PodName,
		PodUID: v.meta.PodUID, ServiceAccount: v.meta.ServiceAccount, Token: token.Value, TokenExpiry: token.Expiry, Renewal: renewal,
	})
}

// write replaces the volume's files as one set, with the current CA bundle,
// only into the volume's tmpfs. Called with the volume's lock held.
func (m *Manager) write(v *vol, res *issuance.Result) error {
	dir, done, err := m.opts.Mounter.OpenTmpfs(v.meta.TargetPath)
	if err != nil {
		return failure.New(failure.Local, "%w", err)
	}
	defer done()
	files := map[string][]byte{
		m.opts.Files.Certificate: res.ChainPEM,
		m.opts.Files.Key:         res.KeyPEM,
	}
	ca := m.caBundle()
	if ca != nil {
		files[m.opts.Files.CA] = ca
	}
	if err := volume.WriteFiles(dir, files, v.meta.FSGroup); err != nil {
		return err
	}
	v.setCABundle(ca)
	return nil
}

// onTmpfs is nil when the volume's target is still its tmpfs. After a lazy
// unmount (umount -l) the target is a directory on the node's disk again: a
// key written there would stay on the disk.
func (m *Manager) onTmpfs(v *vol) error {
	ok, err := m.opts.Mounter.IsTmpfs(v.meta.TargetPath)
	if err != nil {
		return failure.New(failure.Local, "%w", err)
	}
	if !ok {
		return failure.New(failure.Local, "%w", mount.NotTmpfs(v.meta.TargetPath))
	}
	return nil
}

// caBundle is the CA bundle to write, nil when there is none.
func (m *Manager) caBundle() []byte {
	if m.opts.CABundle == nil || m.opts.Files.CA == "" {
		return nil
	}
	if ca := m.opts.CABundle(); len(ca) > 0 {
		return ca
	}
	return nil
}

// Unpublish unmounts the volume, removes its state and key, and has a
// pending request deleted in the background: it makes no API call. An
// unknown volume succeeds.
func (m *Manager) Unpublish(ctx context.Context, id, target string) error {
	logger := klog.FromContext(ctx)
	if v := m.lookup(id); v != nil && v.meta.TargetPath == target {
		v.close()
	}
	lctx, cancel := context.WithTimeout(ctx, unpublishLockWait)
	defer cancel()
	unlock, err := m.locks.Lock(lctx, id)
	if err != nil {
		return failure.New(failure.Busy, "an operation on volume %s is already in progress", id)
	}
	defer unlock()
	v := m.lookup(id)
	if v != nil && v.meta.TargetPath != target {
		// Only what is at target goes: the volume stays published, tracked
		// and renewed where it is, until the kubelet unpublishes it there.
		if err := m.opts.Mounter.Cleanup(target); err != nil {
			return failure.New(failure.Local, "clean up %s: %w", target, err)
		}
		logger.Info("Unpublished a target path the volume is not published at; it stays published at its own", "publishedAt", v.meta.TargetPath)
		return nil
	}
	m.sched.Cancel(id)
	m.remove(id)
	if err := m.opts.Mounter.Cleanup(target); err != nil {
		return failure.New(failure.Local, "unmount volume %s: %w", id, err)
	}
	if err := m.opts.Store.Delete(id); err != nil {
		return failure.New(failure.Local, "%w", err)
	}
	m.opts.Issuer.Release(ctx, id)
	if v != nil {
		logger.Info("Unpublished volume")
	}
	return nil
}

// Published is nil when the volume is published at path (any path when
// path is empty), else a NotFound failure.
func (m *Manager) Published(id, path string) error {
	_, err := m.published(id, path)
	return err
}

// Health is how the volume published at path (any path when empty) is
// unhealthy, if at all.
func (m *Manager) Health(id, path string) ([]Condition, error) {
	v, err := m.published(id, path)
	if err != nil {
		return nil, err
	}
	return v.health(m.opts.Clock.Now(), m.opts.FailuresAbnormal), nil
}

func (m *Manager) published(id, path string) (*vol, error) {
	v := m.lookup(id)
	if v == nil {
		return nil, failure.New(failure.NotFound, "volume %s is not published on this node", id)
	}
	if path != "" && path != v.meta.TargetPath {
		return nil, failure.New(failure.NotFound, "volume %s is not published at %s", id, path)
	}
	return v, nil
}
