package spiffe

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Names shared with cert-manager's csi-driver-spiffe, so that pods and
// policies written for it work unchanged.
const (
	// DefaultDriverName is the CSI driver name and the default of --driver-name.
	DefaultDriverName = "spiffe.csi.cert-manager.io"
	// IdentityAnnotation carries the SPIFFE ID on every request the driver creates.
	IdentityAnnotation = "spiffe.csi.cert-manager.io/identity"
	// DriverLabel carries the driver name; the approver selects on it.
	DriverLabel = "spiffe.csi.cert-manager.io/driver"
	// NodeLabel carries the node (see NodeLabelValue); each driver watches only its own.
	NodeLabel = "spiffe.csi.cert-manager.io/node"
	// FSGroupAttribute is the volume attribute naming the group that may read the files.
	FSGroupAttribute = "spiffe.csi.cert-manager.io/fs-group"
	// AttributePrefix is the prefix of every volume attribute the driver owns;
	// unknown attributes under it are rejected.
	AttributePrefix = "spiffe.csi.cert-manager.io/"
	// ConditionReason is the reason of the approver's Approved/Denied conditions.
	ConditionReason = "spiffe.csi.cert-manager.io"
)

// Request modes (DESIGN 4b), as the flags spell them: who creates a request.
const (
	// ModeNodeBound: the driver, with its own pod-bound token, naming the pod.
	ModeNodeBound = "node-bound"
	// ModePodToken: the driver, with the pod's own token.
	ModePodToken = "pod-token"
)

// The pod a request is for, in annotations next to the identity: in
// node-bound mode the approver checks that very pod runs on the driver's node.
const (
	PodNamespaceAnnotation = "spiffe.csi.cert-manager.io/pod-namespace"
	PodNameAnnotation      = "spiffe.csi.cert-manager.io/pod-name"
	PodUIDAnnotation       = "spiffe.csi.cert-manager.io/pod-uid"
)

// Usages are exactly the key usages of every request, in the order the driver sends them.
var Usages = []cmapi.KeyUsage{
	cmapi.UsageKeyEncipherment,
	cmapi.UsageDigitalSignature,
	cmapi.UsageClientAuth,
	cmapi.UsageServerAuth,
}

// MaxTrustDomainLength bounds a trust domain name (the SPIFFE spec's
// limit): with a namespace and a ServiceAccount name, a SPIFFE ID is then
// under 600 bytes, well within the 2048 the spec allows.
const MaxTrustDomainLength = 255

// ParseTrustDomain validates a trust domain name such as "cluster.local".
func ParseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if len(name) > MaxTrustDomainLength {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: longer than %d bytes", name, MaxTrustDomainLength)
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: %w", name, err)
	}
	if td.IDString() != "spiffe://"+name {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: must be a bare name like cluster.local", name)
	}
	return td, nil
}

// ID is the SPIFFE ID of a ServiceAccount:
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
func ID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID for ServiceAccount %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// ServiceAccountUsername is the username the API server gives a ServiceAccount's token.
func ServiceAccountUsername(namespace, serviceAccount string) string {
	return "system:serviceaccount:" + namespace + ":" + serviceAccount
}

// NodeLabelValue is the value of NodeLabel for a node: its name, or, when the
// name is longer than a label value may be, the first 63 hex digits of its SHA-256.
func NodeLabelValue(nodeName string) string {
	if len(nodeName) <= 63 {
		return nodeName
	}
	sum := sha256.Sum256([]byte(nodeName))
	return hex.EncodeToString(sum[:])[:63]
}
