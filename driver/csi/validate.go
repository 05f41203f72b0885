package csi

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// The volume_context keys the kubelet sets (pkg/volume/csi: getPodInfoAttrs
// and podServiceAccountTokenAttrs); with serviceAccountTokenInSecrets the
// tokens key is in the request's secrets instead.
const (
	KeyPodName        = "csi.storage.k8s.io/pod.name"
	KeyPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	KeyPodUID         = "csi.storage.k8s.io/pod.uid"
	KeyServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	KeyEphemeral      = "csi.storage.k8s.io/ephemeral"
	KeyTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
)

// tokenAudience is the audience the CSIDriver's tokenRequests asks for: the
// API server's own.
const tokenAudience = ""

// publishParams is a validated NodePublishVolumeRequest.
type publishParams struct {
	volumeID       string
	targetPath     string
	podNamespace   string
	podName        string
	podUID         string
	serviceAccount string
	token          string
	tokenExpiry    time.Time
	gid            int64 // -1: none
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
// anything is done, and names the first bad field.
func validatePublish(req *csi.NodePublishVolumeRequest) (*publishParams, error) {
	vc := req.GetVolumeContext()
	vcap := req.GetVolumeCapability()
	p := &publishParams{
		volumeID:       req.GetVolumeId(),
		targetPath:     req.GetTargetPath(),
		podNamespace:   vc[KeyPodNamespace],
		podName:        vc[KeyPodName],
		podUID:         vc[KeyPodUID],
		serviceAccount: vc[KeyServiceAccount],
		gid:            -1,
	}
	var err error
	switch {
	case p.volumeID == "":
		return nil, invalid("volume_id is missing")
	case p.targetPath == "":
		return nil, invalid("target_path is missing")
	case vcap == nil:
		return nil, invalid("volume_capability is missing")
	case vcap.GetBlock() != nil:
		return nil, invalid("volume_capability: block access is not supported, only mount")
	case vcap.GetMount() == nil:
		return nil, invalid("volume_capability.mount is missing")
	case !req.GetReadonly():
		return nil, invalid("readonly must be true: set readOnly: true on the pod's csi volume")
	case vc[KeyEphemeral] == "":
		return nil, missing(KeyEphemeral)
	case vc[KeyEphemeral] != "true":
		return nil, invalid("volume_context[%q] must be \"true\": only inline ephemeral volumes are supported, got %q", KeyEphemeral, vc[KeyEphemeral])
	case p.podName == "":
		return nil, missing(KeyPodName)
	case p.podNamespace == "":
		return nil, missing(KeyPodNamespace)
	case p.podUID == "":
		return nil, missing(KeyPodUID)
	case p.serviceAccount == "":
		return nil, missing(KeyServiceAccount)
	}
	switch {
	case unknownAttribute(vc) != "":
		return nil, invalid("volume_context[%q] is not a known attribute", unknownAttribute(vc))
	case vc[spiffe.FSGroupAttribute] != "":
		if p.gid, err = parseGID(fmt.Sprintf("volume_context[%q]", spiffe.FSGroupAttribute), vc[spiffe.FSGroupAttribute]); err != nil {
			return nil, err
		}
	case vcap.GetMount().GetVolumeMountGroup() != "":
		if p.gid, err = parseGID("volume_capability.mount.volume_mount_group", vcap.GetMount().GetVolumeMountGroup()); err != nil {
			return nil, err
		}
	}
	if p.token, p.tokenExpiry, err = podToken(req); err != nil {
		return nil, err
	}
	return p, nil
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
func podToken(req *csi.NodePublishVolumeRequest) (string, time.Time, error) {
	field := fmt.Sprintf("secrets[%q]", KeyTokens)
	raw, ok := req.GetSecrets()[KeyTokens]
	if !ok {
		field = fmt.Sprintf("volume_context[%q]", KeyTokens)
		raw, ok = req.GetVolumeContext()[KeyTokens]
	}
	if !ok || raw == "" {
		return "", time.Time{}, invalid("%s is missing: the CSIDriver must request a token (tokenRequests: [{audience: \"\"}])", field)
	}
	var tokens map[string]tokenStatus
	if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
		return "", time.Time{}, invalid("%s is not a JSON object of tokens by audience", field)
	}
	t, ok := tokens[tokenAudience]
	if !ok || t.Token == "" {
		return "", time.Time{}, invalid("%s has no token for the audience \"\"", field)
	}
	return t.Token, t.ExpirationTimestamp, nil
}
