package csi

import (
	"context"
	"errors"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// unpublishLockWait bounds how long an unpublish waits for a renewal it has
// cancelled to let go of the volume.
const unpublishLockWait = 10 * time.Second

// NodeGetInfo implements csi.NodeServer.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.opts.NodeID}, nil
}

// NodeGetCapabilities implements csi.NodeServer: exactly what is implemented.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	rpc := func(t csi.NodeServiceCapability_RPC_Type) *csi.NodeServiceCapability {
		return &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{
		rpc(csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP),
		rpc(csi.NodeServiceCapability_RPC_GET_VOLUME_STATS),
		rpc(csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH),
	}}, nil
}

// NodePublishVolume implements csi.NodeServer. A volume already published
// (the kubelet republishes about every 10 s) only has its token refreshed:
// no API call, no write, never an unmount.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	p, err := validatePublish(req)
	if err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), keyVolumeID, p.volumeID, keyPod, klog.KRef(p.podNamespace, p.podName))
	ctx = klog.NewContext(ctx, logger)
	if v := d.lookup(p.volumeID); v != nil {
		return d.republish(ctx, v, p)
	}
	if !d.Ready() {
		// Before the request cache and the runtime issuer are read, a request
		// could go to the wrong issuer or never be seen: the kubelet retries.
		return nil, status.Error(codes.Unavailable, "the driver is starting: its caches are not synced yet")
	}
	unlock, ok := d.locks.TryLock(p.volumeID)
	if !ok {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", p.volumeID)
	}
	defer unlock()
	if v := d.lookup(p.volumeID); v != nil {
		return d.republish(ctx, v, p)
	}
	if err := d.publish(ctx, p); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *Driver) republish(ctx context.Context, v *vol, p *publishParams) (*csi.NodePublishVolumeResponse, error) {
	if v.meta.TargetPath != p.targetPath {
		return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published at %s", p.volumeID, v.meta.TargetPath)
	}
	if v.meta.PodUID != p.podUID {
		return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published for pod UID %s", p.volumeID, v.meta.PodUID)
	}
	if v.setToken(p.token, p.tokenExpiry) {
		// A renewal fell due without a usable token: this one unblocks it.
		klog.FromContext(ctx).V(2).Info("Fresh token for a renewal that was waiting for one")
		d.sched.Schedule(p.volumeID, d.opts.Clock.Now())
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume implements csi.NodeServer: unmount, remove state and
// keys, delete a pending request. Unknown volumes succeed.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, invalid("volume_id is missing")
	case target == "":
		return nil, invalid("target_path is missing")
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), keyVolumeID, id, keyTarget, target)
	ctx = klog.NewContext(ctx, logger)
	v := d.lookup(id)
	if v != nil {
		v.close()
	}
	lctx, cancel := context.WithTimeout(ctx, unpublishLockWait)
	defer cancel()
	unlock, err := d.locks.Lock(lctx, id)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", id)
	}
	defer unlock()
	if v != nil && v.meta.TargetPath != target {
		logger.Info("Unpublishing at a target path other than the published one", "publishedAt", v.meta.TargetPath)
	}
	d.sched.Cancel(id)
	d.remove(id)
	if err := d.opts.Mounter.Cleanup(target); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount volume %s: %v", id, err)
	}
	if err := d.opts.Store.Delete(id); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	d.opts.Issuer.Release(ctx, id)
	if v != nil {
		logger.Info("Unpublished volume")
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats implements csi.NodeServer: the tmpfs usage.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, invalid("volume_id is missing")
	case path == "":
		return nil, invalid("volume_path is missing")
	}
	v := d.lookup(id)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published on this node", id)
	}
	if v.meta.TargetPath != path {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", id, path)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, status.Errorf(codes.NotFound, "volume %s: %s does not exist", id, path)
		}
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bsize := int64(st.Bsize)
	return &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bsize, Available: int64(st.Bavail) * bsize, Used: int64(st.Blocks-st.Bfree) * bsize},
			{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
		},
	}, nil
}

// NodeGetVolumeHealth implements csi.NodeServer (GET_VOLUME_HEALTH, which
// replaced VOLUME_CONDITION in CSI 1.13): degraded when the certificate has
// expired or renewal keeps failing, with the reason.
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume_id is missing")
	}
	v := d.lookup(id)
	if v == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published on this node", id)
	}
	if p := req.GetVolumePublishPath(); p != "" && p != v.meta.TargetPath {
		return nil, status.Errorf(codes.NotFound, "volume %s is not published at %s", id, p)
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{
		VolumeId:       id,
		HealthStatuses: v.health(d.opts.Clock.Now(), d.opts.FailuresAbnormal),
	}}, nil
}
