package controller

import (
	"context"
	"fmt"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/approver/metrics"
	"github.com/svid-csi/svid-csi/internal/issuer"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Event reasons recorded on decided requests.
const (
	EventApproved = "Approved"
	EventDenied   = "Denied"
	// EventRefused: cert-manager refused the decision's write; final for
	// the request (see sync).
	EventRefused = "DecisionRefused"
)

// maxRefusal bounds the API's words quoted in a refusal's Event and log.
const maxRefusal = 512

// ApprovedMessage is the message of the Approved condition.
const ApprovedMessage = "approved by svid-csi: every SPIFFE check passed"

// sync decides one request. It returns nil when there is nothing (more) to
// do, and an error to retry with backoff.
func (c *Controller) sync(ctx context.Context, key cache.ObjectName) error {
	cr, err := c.lister.CertificateRequests(key.Namespace).Get(key.Name)
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("get CertificateRequest %s from cache: %w", key, err)
	case !pending(cr):
		return nil
	}

	// No issuer yet is most likely configuration that is late (the runtime
	// ConfigMap not created yet): a denial would be final, so retry instead.
	ref, ok := c.issuer.Current()
	if !ok {
		return fmt.Errorf("cannot check spec.issuerRef: %w", issuer.ErrNoIssuer)
	}

	denial := checks.Evaluate(cr, checks.Policy{TrustDomain: c.td, Duration: c.duration, Issuer: ref})
	condType, message, result, check := cmapi.CertificateRequestConditionApproved, ApprovedMessage, metrics.ResultApproved, ""
	if denial != nil {
		condType, message, result, check = cmapi.CertificateRequestConditionDenied, denial.Message, metrics.ResultDenied, denial.Check
	}

	// Never modify objects from the store.
	cr = cr.DeepCopy()
	now := metav1.NewTime(c.now())
	cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
		Type:               condType,
		Status:             cmmeta.ConditionTrue,
		Reason:             spiffe.ConditionReason,
		Message:            message,
		LastTransitionTime: &now,
	})
	// The update carries the cached resourceVersion: if another writer
	// decided first, this is a Conflict and the next sync sees its decision.
	updated, err := c.client.CertmanagerV1().CertificateRequests(cr.Namespace).UpdateStatus(ctx, cr, metav1.UpdateOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case apierrors.IsForbidden(err):
		// cert-manager's webhook (no approve permission on this issuer's
		// signer, a signer that does not exist) or RBAC said no: retrying
		// cannot change that, and each try costs a SubjectAccessReview and a
		// discovery call. Final for this request until it changes or the
		// approver restarts.
		c.refused(ctx, cr, string(condType), result, err)
		return nil
	case err != nil:
		return fmt.Errorf("set %s condition on CertificateRequest %s: %w", condType, key, err)
	}

	latency := now.Sub(cr.CreationTimestamp.Time)
	if cr.CreationTimestamp.IsZero() {
		latency = -1
	}
	c.metrics.Decision(result, check, latency)
	logger := klog.FromContext(ctx)
	if denial == nil {
		c.recorder.Event(updated, corev1.EventTypeNormal, EventApproved, message)
		logger.Info("Approved CertificateRequest", "certificaterequest", klog.KObj(cr), "latency", latency)
	} else {
		c.recorder.Event(updated, corev1.EventTypeWarning, EventDenied, message)
		logger.Info("Denied CertificateRequest", "certificaterequest", klog.KObj(cr), "check", check, "message", message, "latency", latency)
	}
	return nil
}

// refused records a decision cert-manager would not let be written: an Event
// on the request, a metric and a log line, once.
func (c *Controller) refused(ctx context.Context, cr *cmapi.CertificateRequest, condType, result string, err error) {
	reason := err.Error()
	if len(reason) > maxRefusal {
		reason = reason[:maxRefusal] + "..."
	}
	msg := fmt.Sprintf("cert-manager refused the %s condition, so the request stays undecided: %q. Give the approver "+
		"the approve verb on this issuer's signer (signers, %s), or name an issuer that exists; the request is decided again "+
		"when it changes or the approver restarts", condType, reason, signerName(cr.Spec.IssuerRef))
	c.metrics.Refused(result)
	c.recorder.Event(cr, corev1.EventTypeWarning, EventRefused, msg)
	klog.FromContext(ctx).Error(err, "cert-manager refused the decision; not retrying", "certificaterequest", klog.KObj(cr), "condition", condType)
}

// signerName is the signers resource name to grant the approve verb on, as
// the shipped RBAC does: <plural>.<group>/* (the plural a best guess for
// other groups: the lower-cased kind plus "s").
func signerName(ref cmmeta.IssuerReference) string {
	kind, group := ref.Kind, ref.Group
	if kind == "" {
		kind = cmapi.IssuerKind
	}
	if group == "" {
		group = "cert-manager.io"
	}
	return strings.ToLower(kind) + "s." + group + "/*"
}
