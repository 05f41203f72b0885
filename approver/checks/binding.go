package checks

import (
	"fmt"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// The keys the API server puts into the user info of a pod-bound
// ServiceAccount token (k8s.io/apiserver's serviceaccount package), which
// cert-manager's webhook copies into spec.extra: nobody who creates a request
// can choose them.
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
)

// Modes are the ways of creating a request the approver accepts (DESIGN 4b).
type Modes struct {
	// NodeBound: the driver creates the request with its own pod-bound
	// token, naming the pod; the approver checks the pod runs on the
	// driver's node.
	NodeBound bool
	// PodToken: the driver creates the request with the pod's own token.
	PodToken bool
}

// String is the accepted modes, comma-separated.
func (m Modes) String() string {
	var s []string
	if m.NodeBound {
		s = append(s, spiffe.ModeNodeBound)
	}
	if m.PodToken {
		s = append(s, spiffe.ModePodToken)
	}
	return strings.Join(s, ",")
}

// Binding is the pod a node-bound request is for, and the node the driver
// that made it runs on: what the approver checks against the Pod object.
type Binding struct {
	Namespace, PodName string
	PodUID             types.UID
	// ServiceAccount is the one of the SPIFFE ID.
	ServiceAccount string
	// Node is the driver's node, from spec.extra.
	Node string
}

// String names the pod, for messages.
func (b Binding) String() string { return b.Namespace + "/" + b.PodName }

// NodeBinding returns the binding of a node-bound request (one whose
// requester is the driver), and false for any other. Call it on a request
// Evaluate approved: its fields are then known to be well formed.
func NodeBinding(cr *cmapi.CertificateRequest, p Policy) (Binding, bool) {
	if !p.Modes.NodeBound || p.DriverUsername == "" || cr.Spec.Username != p.DriverUsername {
		return Binding{}, false
	}
	id := cr.Annotations[spiffe.IdentityAnnotation]
	return Binding{
		Namespace:      cr.Namespace,
		PodName:        cr.Annotations[spiffe.PodNameAnnotation],
		PodUID:         types.UID(cr.Annotations[spiffe.PodUIDAnnotation]),
		ServiceAccount: id[strings.LastIndex(id, "/")+1:],
		Node:           one(cr.Spec.Extra[ExtraNodeName]),
	}, true
}

// checkRequester decides the request's mode from its requester and checks
// that the request is bound to its pod the way that mode requires. It
// returns the namespace and ServiceAccount the SPIFFE ID must name; in
// node-bound mode the ServiceAccount is the one the URI names (uri), which
// CheckPod later compares with the pod's.
func checkRequester(cr *cmapi.CertificateRequest, p Policy, uri string) (ns, sa string, d *Denial) {
	if p.DriverUsername != "" && cr.Spec.Username == p.DriverUsername {
		if !p.Modes.NodeBound {
			return "", "", deny(CheckRequester, "request mode", p.Modes.String(), spiffe.ModeNodeBound)
		}
		if d := checkNodeBound(cr); d != nil {
			return "", "", d
		}
		sa, d := uriServiceAccount(cr.Namespace, uri)
		return cr.Namespace, sa, d
	}
	if !p.Modes.PodToken {
		return "", "", deny(CheckRequester, "spec.username", p.DriverUsername, cr.Spec.Username)
	}
	const saPrefix = "system:serviceaccount:"
	rest, isSA := strings.CutPrefix(cr.Spec.Username, saPrefix)
	ns, sa, _ = strings.Cut(rest, ":")
	if !isSA || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", deny(CheckIdentity, "spec.username", saPrefix+"<namespace>:<name>", cr.Spec.Username)
	}
	if ns != cr.Namespace {
		return "", "", deny(CheckIdentity, "spec.username namespace", cr.Namespace, ns)
	}
	return ns, sa, checkPodToken(cr)
}

// checkPodToken: the requester's token was bound to the very pod that owns
// the request. A token of another pod (or not bound to a pod at all: a
// controller that copies the label and annotation into the requests it
// makes) gets nothing.
func checkPodToken(cr *cmapi.CertificateRequest) *Denial {
	owner, d := ownerPod(cr)
	if d != nil {
		return d
	}
	if got := cr.Spec.Extra[ExtraPodUID]; len(got) != 1 || got[0] != string(owner.UID) {
		return deny(CheckBinding, extraField(ExtraPodUID), string(owner.UID), strings.Join(got, ","))
	}
	if got := cr.Spec.Extra[ExtraPodName]; len(got) != 1 || got[0] != owner.Name {
		return deny(CheckBinding, extraField(ExtraPodName), owner.Name, strings.Join(got, ","))
	}
	return nil
}

// checkNodeBound: the driver's token was bound to a pod (its own) and named
// that pod's node, and the request names one pod, the same in its
// annotations and its owner. A token bound to a Node object, not a pod, also
// names a node: it is not the driver's and gets nothing.
func checkNodeBound(cr *cmapi.CertificateRequest) *Denial {
	for _, key := range []string{ExtraPodName, ExtraPodUID} {
		if got := cr.Spec.Extra[key]; len(got) != 1 || got[0] == "" {
			return deny(CheckRequester, extraField(key), "the driver's pod, from its pod-bound token", strings.Join(got, ","))
		}
	}
	if got := cr.Spec.Extra[ExtraNodeName]; len(got) != 1 || got[0] == "" {
		return deny(CheckRequester, extraField(ExtraNodeName), "the node of the driver's pod-bound token", strings.Join(got, ","))
	}
	owner, d := ownerPod(cr)
	if d != nil {
		return d
	}
	if len(validation.IsDNS1123Subdomain(owner.Name)) > 0 {
		return deny(CheckBinding, "metadata.ownerReferences[0].name", "a pod name", owner.Name)
	}
	for _, a := range []struct{ key, exp string }{
		{spiffe.PodNamespaceAnnotation, cr.Namespace},
		{spiffe.PodNameAnnotation, owner.Name},
		{spiffe.PodUIDAnnotation, string(owner.UID)},
	} {
		if got, ok := cr.Annotations[a.key]; !ok || got != a.exp {
			return deny(CheckBinding, fmt.Sprintf("metadata.annotations[%q]", a.key), a.exp, got)
		}
	}
	return nil
}

// ownerPod is the request's one owner reference, which must be a Pod with
// a name and UID: the request goes with it.
func ownerPod(cr *cmapi.CertificateRequest) (*podRef, *Denial) {
	refs := cr.OwnerReferences
	if len(refs) != 1 || refs[0].APIVersion != "v1" || refs[0].Kind != "Pod" || refs[0].Name == "" || refs[0].UID == "" {
		got := make([]string, len(refs))
		for i, r := range refs {
			got[i] = r.APIVersion + "/" + r.Kind + " " + r.Name
		}
		return nil, deny(CheckBinding, "metadata.ownerReferences", "one v1/Pod", strings.Join(got, ", "))
	}
	return &podRef{Name: refs[0].Name, UID: refs[0].UID}, nil
}

type podRef struct {
	Name string
	UID  types.UID
}

// uriServiceAccount reads the ServiceAccount out of a URI of the form
// spiffe://<trust domain>/ns/<namespace>/sa/<name>; checkIdentity then
// compares the whole URI, byte for byte, with the ID built from it.
func uriServiceAccount(ns, uri string) (string, *Denial) {
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	i := strings.IndexByte(rest, '/')
	if ok && i >= 0 {
		if sa, ok := strings.CutPrefix(rest[i:], "/ns/"+ns+"/sa/"); ok && sa != "" && !strings.Contains(sa, "/") {
			return sa, nil
		}
	}
	return "", deny(CheckIdentity, "URI SAN", "spiffe://<trust domain>/ns/"+ns+"/sa/<name>", uri)
}

func extraField(key string) string { return fmt.Sprintf("spec.extra[%q]", key) }

// one is the single value of an extra, or "".
func one(vs []string) string {
	if len(vs) != 1 {
		return ""
	}
	return vs[0]
}

// PodNotFound is the denial of a node-bound request whose pod is gone.
func PodNotFound(b Binding) *Denial {
	return deny(CheckPod, "pod "+b.String(), "exists", "not found")
}

// EvaluatePod checks the Pod object of a node-bound request: the very pod
// (UID), scheduled on the driver's node, not terminating or finished,
// running as the SPIFFE ID's ServiceAccount and mounting a volume of the
// driver. A driver can then obtain identities only for the pods of its own
// node, as the kubelet under NodeRestriction reads only their Secrets.
func EvaluatePod(b Binding, pod *corev1.Pod, driverName string) *Denial {
	switch {
	case pod.Namespace != b.Namespace || pod.Name != b.PodName:
		return deny(CheckPod, "pod", b.String(), pod.Namespace+"/"+pod.Name)
	case pod.UID != b.PodUID:
		return deny(CheckPod, "pod "+b.String()+" metadata.uid", string(b.PodUID), string(pod.UID))
	case pod.Spec.NodeName != b.Node:
		return deny(CheckPod, "pod "+b.String()+" spec.nodeName", b.Node, pod.Spec.NodeName)
	case pod.DeletionTimestamp != nil:
		return deny(CheckPod, "pod "+b.String()+" metadata.deletionTimestamp", "unset", pod.DeletionTimestamp.UTC().Format("2006-01-02T15:04:05Z"))
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return deny(CheckPod, "pod "+b.String()+" status.phase", "Pending or Running", string(pod.Status.Phase))
	case pod.Spec.ServiceAccountName != b.ServiceAccount:
		return deny(CheckPod, "pod "+b.String()+" spec.serviceAccountName", b.ServiceAccount, pod.Spec.ServiceAccountName)
	}
	for _, v := range pod.Spec.Volumes {
		if v.CSI != nil && v.CSI.Driver == driverName {
			return nil
		}
	}
	return deny(CheckPod, "pod "+b.String()+" spec.volumes", "a CSI volume of "+driverName, "none")
}
