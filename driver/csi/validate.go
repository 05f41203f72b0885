package csi

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/driver/manager"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// The volume_context keys the kubelet sets (pkg/volume/csi: getPodInfoAttrs
// and podServiceAccountTokenAttrs); with serviceAccountTokenInSecrets the
// tokens key is in the request's secrets instead.
const (
	keyPodName        = "csi.storage.k8s.io/pod.name"
	keyPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	keyPodUID         = "csi.storage.k8s.io/pod.uid"
	keyServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	keyEphemeral      = "csi.storage.k8s.io/ephemeral"
	keyTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
)

// tokenAudience is the audience the CSIDriver's tokenRequests asks for: the
// API server's own.
const tokenAudience = ""

// publishParams is a validated NodePublishVolumeRequest.
type publishParams struct {
	meta  volume.Meta
	token manager.Token
}

// tokenStatus is one audience's entry in the tokens JSON (the kubelet
// marshals authenticationv1.TokenRequestStatus).
type tokenStatus struct {
	Token               string    `json:"token"`
	ExpirationTimestamp time.Time `json:"expirationTimestamp"`
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func missing(key string) error { return invalid("volume_context[%q] is missing", key) }

// validatePublish checks everything in a NodePublishVolumeRequest before
// anything is done, and names the first bad field. Without needToken (node-
// bound mode) a token the kubelet sends is not even read.
func validatePublish(req *csi.NodePublishVolumeRequest, podsDir string, needToken bool) (*publishParams, error) {
	vc := req.GetVolumeContext()
	vcap := req.GetVolumeCapability()
	p := &publishParams{meta: volume.Meta{
		VolumeID:       req.GetVolumeId(),
		TargetPath:     req.GetTargetPath(),
		PodNamespace:   vc[keyPodNamespace],
		PodName:        vc[keyPodName],
		PodUID:         vc[keyPodUID],
		ServiceAccount: vc[keyServiceAccount],
		FSGroup:        -1,
	}}
	m := &p.meta
	var err error
	switch {
	case m.VolumeID == "":
		return nil, invalid("volume_id is missing")
	case m.TargetPath == "":
		return nil, invalid("target_path is missing")
	}
	if err := mount.CheckTarget(podsDir, m.TargetPath); err != nil {
		return nil, invalid("target_path: %v", err)
	}
	switch {
	case vcap == nil:
		return nil, invalid("volume_capability is missing")
	case vcap.GetBlock() != nil:
		return nil, invalid("volume_capability: block access is not supported, only mount")
	case vcap.GetMount() == nil:
		return nil, invalid("volume_capability.mount is missing")
	case !req.GetReadonly():
		return nil, invalid("readonly must be true: set readOnly: true on the pod's csi volume")
	case vc[keyEphemeral] == "":
		return nil, missing(keyEphemeral)
	case vc[keyEphemeral] != "true":
		return nil, invalid("volume_context[%q] must be \"true\": only inline ephemeral volumes are supported, got %q", keyEphemeral, vc[keyEphemeral])
	case m.PodName == "":
		return nil, missing(keyPodName)
	case m.PodNamespace == "":
		return nil, missing(keyPodNamespace)
	case m.PodUID == "":
		return nil, missing(keyPodUID)
	case m.ServiceAccount == "":
		return nil, missing(keyServiceAccount)
	case len(validation.IsDNS1123Label(m.PodNamespace)) > 0:
		return nil, invalid("volume_context[%q] must be a namespace name (a DNS-1123 label), got %.253q", keyPodNamespace, m.PodNamespace)
	case len(validation.IsDNS1123Subdomain(m.PodName)) > 0:
		return nil, invalid("volume_context[%q] must be a pod name (a DNS-1123 subdomain), got %.253q", keyPodName, m.PodName)
	case len(validation.IsDNS1123Subdomain(m.ServiceAccount)) > 0:
		return nil, invalid("volume_context[%q] must be a ServiceAccount name (a DNS-1123 subdomain), got %.253q", keyServiceAccount, m.ServiceAccount)
	case !validUID(m.PodUID):
		return nil, invalid("volume_context[%q] must be a pod UID (up to %d letters, digits and dashes), got %.128q", keyPodUID, maxUIDLength, m.PodUID)
	case !strings.HasPrefix(m.TargetPath, filepath.Join(podsDir, m.PodUID)+string(filepath.Separator)):
		// The kubelet puts a pod's volumes under its own UID's directory.
		return nil, invalid("target_path %.512q is not under the directory of pod UID %q", m.TargetPath, m.PodUID)
	}
	switch {
	case unknownAttribute(vc) != "":
		return nil, invalid("volume_context[%q] is not a known attribute", unknownAttribute(vc))
	case vc[spiffe.FSGroupAttribute] != "":
		if m.FSGroup, err = parseGID(fmt.Sprintf("volume_context[%q]", spiffe.FSGroupAttribute), vc[spiffe.FSGroupAttribute]); err != nil {
			return nil, err
		}
	case vcap.GetMount().GetVolumeMountGroup() != "":
		if m.FSGroup, err = parseGID("volume_capability.mount.volume_mount_group", vcap.GetMount().GetVolumeMountGroup()); err != nil {
			return nil, err
		}
	}
	if !needToken {
		return p, nil
	}
	if p.token, err = podToken(req); err != nil {
		return nil, err
	}
	return p, nil
}

// maxUIDLength bounds a pod UID: the API server's are 36-character UUIDs,
// a static pod's a 32-character hash.
const maxUIDLength = 128

func validUID(uid string) bool {
	if len(uid) > maxUIDLength {
		return false
	}
	for _, r := range uid {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
			return false
		}
	}
	return uid != ""
}

// unknownAttribute returns the first attribute under the driver's prefix that
// it does not know.
func unknownAttribute(vc map[string]string) string {
	var unknown []string
	for k := range vc {
		if strings.HasPrefix(k, spiffe.AttributePrefix) && k != spiffe.FSGroupAttribute {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return ""
	}
	return slices.Min(unknown)
}

func parseGID(field, value string) (int64, error) {
	gid, err := strconv.ParseUint(value, 10, 32)
	if err != nil || gid == 0 {
		return 0, invalid("%s must be a number in 1..4294967295, got %q", field, value)
	}
	return int64(gid), nil
}

// podToken reads the pod's token for the API server's audience: from the
// secrets first (serviceAccountTokenInSecrets), else from volume_context.
// Error messages never quote the JSON.
func podToken(req *csi.NodePublishVolumeRequest) (manager.Token, error) {
	field := fmt.Sprintf("secrets[%q]", keyTokens)
	raw, ok := req.GetSecrets()[keyTokens]
	if !ok {
		field = fmt.Sprintf("volume_context[%q]", keyTokens)
		raw, ok = req.GetVolumeContext()[keyTokens]
	}
	if !ok || raw == "" {
		return manager.Token{}, invalid("%s is missing: the CSIDriver must request a token (tokenRequests: [{audience: \"\"}])", field)
	}
	var tokens map[string]tokenStatus
	if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
		return manager.Token{}, invalid("%s is not a JSON object of tokens by audience", field)
	}
	t, ok := tokens[tokenAudience]
	if !ok || t.Token == "" {
		return manager.Token{}, invalid("%s has no token for the audience \"\"", field)
	}
	return manager.Token{Value: t.Token, Expiry: t.ExpirationTimestamp}, nil
}
