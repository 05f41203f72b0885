package csi

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/driver/mount"
)

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

// NodePublishVolume implements csi.NodeServer: a new volume is mounted,
// issued and written; a published one (the kubelet republishes about every
// 10 s) only has its token refreshed.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	p, err := validatePublish(req, d.opts.PodsDir, !d.opts.NodeBound)
	if err != nil {
		return nil, err
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), logkey.Volume, p.meta.VolumeID, logkey.Pod, klog.KRef(p.meta.PodNamespace, p.meta.PodName))
	if err := d.opts.Volumes.Publish(klog.NewContext(ctx, logger), p.meta, p.token); err != nil {
		return nil, statusOf(err)
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
	if err := mount.CheckTarget(d.opts.PodsDir, target); err != nil {
		return nil, invalid("target_path: %v", err)
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), logkey.Volume, id, logkey.Target, target)
	if err := d.opts.Volumes.Unpublish(klog.NewContext(ctx, logger), id, target); err != nil {
		return nil, statusOf(err)
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
	if err := d.opts.Volumes.Published(id, path); err != nil {
		return nil, statusOf(err)
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
	conds, err := d.opts.Volumes.Health(id, req.GetVolumePublishPath())
	if err != nil {
		return nil, statusOf(err)
	}
	entries := make([]*csi.VolumeHealth_VolumeHealthEntry, 0, len(conds))
	for _, c := range conds {
		entries = append(entries, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_DEGRADED, Reason: c.Reason, Message: c.Message})
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: id, HealthStatuses: entries}}, nil
}
