package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The volume_context keys the kubelet adds (pkg/volume/csi in Kubernetes).
const (
	KeyPodName        = "csi.storage.k8s.io/pod.name"
	KeyPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	KeyPodUID         = "csi.storage.k8s.io/pod.uid"
	KeyServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	KeyEphemeral      = "csi.storage.k8s.io/ephemeral"
	KeyTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
)

// Kubelet plays the kubelet's part towards one CSI driver on one node, the way
// pkg/volume/csi does it: real Pod objects, tokens from the TokenRequest API
// bound to the pod, as the CSIDriver object asks, and NodePublishVolume /
// NodeUnpublishVolume over the driver's unix socket.
type Kubelet struct {
	bed      *Bed
	NodeName string
	RootDir  string
	Driver   string
	Node     csi.NodeClient
	conn     *grpc.ClientConn
}

// NewKubelet registers a Node object and connects to the driver's socket.
func (b *Bed) NewKubelet(ctx context.Context, nodeName, rootDir, driverName, endpoint string) (*Kubelet, error) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	if _, err := b.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create Node %s: %w", nodeName, err)
	}
	conn, err := grpc.NewClient("unix://"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to CSI socket %s: %w", endpoint, err)
	}
	return &Kubelet{bed: b, NodeName: nodeName, RootDir: rootDir, Driver: driverName, Node: csi.NewNodeClient(conn), conn: conn}, nil
}

// Conn is the connection to the driver's socket, for Identity calls.
func (k *Kubelet) Conn() *grpc.ClientConn { return k.conn }

// Close drops the connection to the driver.
func (k *Kubelet) Close() error { return k.conn.Close() }

// PodVolume is one inline CSI volume of a pod on this node.
type PodVolume struct {
	Pod        *corev1.Pod
	VolumeName string
	VolumeID   string
	TargetPath string
	Attributes map[string]string
	ReadOnly   bool
	// FSGroup is the pod's fsGroup, passed as volume_mount_group when the
	// driver advertises VOLUME_MOUNT_GROUP.
	FSGroup *int64
}

// PodSpec describes a pod to create on the node.
type PodSpec struct {
	Namespace, Name, ServiceAccount string
	Attributes                      map[string]string
	// ReadOnly is the volume's readOnly; pods for this driver set true.
	ReadOnly bool
	FSGroup  *int64
}

// CreatePod creates the Pod object, bound to this node, with one inline CSI
// volume of the kubelet's driver. It does not publish it.
func (k *Kubelet) CreatePod(ctx context.Context, spec PodSpec) (*PodVolume, error) {
	const volName = "spiffe"
	readOnly := spec.ReadOnly
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace},
		Spec: corev1.PodSpec{
			NodeName:           k.NodeName,
			ServiceAccountName: spec.ServiceAccount,
			SecurityContext:    &corev1.PodSecurityContext{FSGroup: spec.FSGroup},
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.k8s.io/pause:3.10",
				VolumeMounts: []corev1.VolumeMount{{Name: volName, MountPath: "/var/run/secrets/spiffe.io", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: volName, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver: k.Driver, ReadOnly: &readOnly, VolumeAttributes: spec.Attributes,
			}}}},
		},
	}
	pod, err := k.bed.Kube.CoreV1().Pods(spec.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create Pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	sum := sha256.Sum256([]byte(string(pod.UID) + volName))
	target := filepath.Join(k.RootDir, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", volName, "mount")
	return &PodVolume{
		Pod: pod, VolumeName: volName, VolumeID: fmt.Sprintf("csi-%x", sum), TargetPath: target,
		Attributes: spec.Attributes, ReadOnly: readOnly, FSGroup: spec.FSGroup,
	}, nil
}

// PublishRequest builds the NodePublishVolumeRequest the kubelet would send
// now, with fresh tokens, following the CSIDriver object as the kubelet does.
func (k *Kubelet) PublishRequest(ctx context.Context, v *PodVolume) (*csi.NodePublishVolumeRequest, error) {
	driver, err := k.bed.Kube.StorageV1().CSIDrivers().Get(ctx, k.Driver, getOpts)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get CSIDriver %s: %w", k.Driver, err)
	}
	volCtx := map[string]string{}
	for key, val := range v.Attributes {
		volCtx[key] = val
	}
	secrets := map[string]string{}
	if driver != nil {
		if driver.Spec.PodInfoOnMount != nil && *driver.Spec.PodInfoOnMount {
			volCtx[KeyPodName] = v.Pod.Name
			volCtx[KeyPodNamespace] = v.Pod.Namespace
			volCtx[KeyPodUID] = string(v.Pod.UID)
			volCtx[KeyServiceAccount] = v.Pod.Spec.ServiceAccountName
			volCtx[KeyEphemeral] = "true"
		}
		tokens, err := k.tokens(ctx, driver, v.Pod)
		if err != nil {
			return nil, err
		}
		if tokens != "" {
			if driver.Spec.ServiceAccountTokenInSecrets != nil && *driver.Spec.ServiceAccountTokenInSecrets {
				secrets[KeyTokens] = tokens
			} else {
				volCtx[KeyTokens] = tokens
			}
		}
	}
	mount := &csi.VolumeCapability_MountVolume{}
	if v.FSGroup != nil && k.supportsMountGroup(ctx) {
		mount.VolumeMountGroup = strconv.FormatInt(*v.FSGroup, 10)
	}
	if err := os.MkdirAll(filepath.Dir(v.TargetPath), 0o750); err != nil {
		return nil, fmt.Errorf("create the target's parent: %w", err)
	}
	return &csi.NodePublishVolumeRequest{
		VolumeId:   v.VolumeID,
		TargetPath: v.TargetPath,
		Readonly:   v.ReadOnly,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: mount},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: volCtx,
		Secrets:       secrets,
	}, nil
}

// Publish calls NodePublishVolume as the kubelet would now (also for a
// republish), with the kubelet's 2-minute deadline unless ctx has a shorter one.
func (k *Kubelet) Publish(ctx context.Context, v *PodVolume) error {
	req, err := k.PublishRequest(ctx, v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	_, err = k.Node.NodePublishVolume(ctx, req)
	return err
}

// Unpublish calls NodeUnpublishVolume, then removes the target as the kubelet does.
func (k *Kubelet) Unpublish(ctx context.Context, v *PodVolume) error {
	if _, err := k.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeID, TargetPath: v.TargetPath}); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Dir(v.TargetPath)); err != nil {
		return fmt.Errorf("remove volume dir: %w", err)
	}
	return nil
}

// DeletePod unpublishes the volume and deletes the Pod object.
func (k *Kubelet) DeletePod(ctx context.Context, v *PodVolume) error {
	if err := k.Unpublish(ctx, v); err != nil {
		return fmt.Errorf("unpublish %s: %w", v.VolumeID, err)
	}
	zero := int64(0)
	err := k.bed.Kube.CoreV1().Pods(v.Pod.Namespace).Delete(ctx, v.Pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Pod %s/%s: %w", v.Pod.Namespace, v.Pod.Name, err)
	}
	return nil
}

// Republish calls Publish every interval (the kubelet's requiresRepublish
// loop) until ctx ends, sending every result to results if it is not nil.
// The caller owns the goroutine through ctx and the returned wait function.
func (k *Kubelet) Republish(ctx context.Context, v *PodVolume, interval time.Duration, results chan<- error) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			err := k.Publish(ctx, v)
			if results != nil && ctx.Err() == nil {
				select {
				case results <- err:
				case <-ctx.Done():
					return
				}
			}
		}
	})
	return wg.Wait
}

// tokens builds the serviceAccount.tokens JSON exactly as the kubelet does.
func (k *Kubelet) tokens(ctx context.Context, driver *storagev1.CSIDriver, pod *corev1.Pod) (string, error) {
	if len(driver.Spec.TokenRequests) == 0 {
		return "", nil
	}
	out := map[string]authenticationv1.TokenRequestStatus{}
	for _, tr := range driver.Spec.TokenRequests {
		audiences := []string{tr.Audience}
		if tr.Audience == "" {
			audiences = []string{}
		}
		opts := TokenOptions{Audiences: audiences, BoundPod: pod}
		if tr.ExpirationSeconds != nil {
			opts.Seconds = *tr.ExpirationSeconds
		}
		st, err := k.bed.Token(ctx, pod.Namespace, pod.Spec.ServiceAccountName, opts)
		if err != nil {
			return "", err
		}
		out[tr.Audience] = *st
	}
	data, err := json.Marshal(out)
	if err != nil {
		return "", fmt.Errorf("marshal tokens: %w", err)
	}
	return string(data), nil
}

func (k *Kubelet) supportsMountGroup(ctx context.Context) bool {
	caps, err := k.Node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		return false
	}
	for _, c := range caps.GetCapabilities() {
		if c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP {
			return true
		}
	}
	return false
}
