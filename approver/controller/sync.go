package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/approver/metrics"
	"github.com/svid-csi/svid-csi/approver/signer"
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
	if ref, err = c.issuerFor(ctx, cr, ref); err != nil {
		return err
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
	case apierrors.IsForbidden(err) && denial != nil && denial.Check == checks.CheckIssuer && byWebhook(err):
		// A request for an issuer this approver may not decide for (its
		// signer is not in the approver's RBAC) is left to whoever approves
		// for that issuer: an Event and a metric say so, and the log only at
		// -v=2 (anyone who may create requests can make such a request).
		c.foreign(ctx, cr, result)
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

// freshTimeout bounds the read of the runtime issuance ConfigMap that
// confirms an issuer mismatch.
const freshTimeout = 5 * time.Second

// issuerFor returns the issuer the request is checked against: the active
// one, unless the request names the issuer that was active just before a
// switch (a driver made it before it saw the switch), or the API server
// already says the request's issuer is active (the driver saw the switch
// before this approver's watch did). A switch mid-traffic then denies
// nothing. A request naming anything else is checked against the active
// issuer, and denied.
func (c *Controller) issuerFor(ctx context.Context, cr *cmapi.CertificateRequest, active cmmeta.IssuerReference) (cmmeta.IssuerReference, error) {
	got := cr.Spec.IssuerRef
	if checks.SameIssuer(got, active) {
		return active, nil
	}
	logger := klog.FromContext(ctx)
	if prev, ok := c.issuer.Previous(cr.CreationTimestamp.Time); ok && checks.SameIssuer(got, prev) {
		logger.V(2).Info("Request names the issuer active before the switch; checking it against that one", "certificaterequest", klog.KObj(cr))
		return prev, nil
	}
	ctx, cancel := context.WithTimeout(ctx, freshTimeout)
	defer cancel()
	fresh, ok, err := c.issuer.Fresh(ctx)
	if err != nil {
		return active, fmt.Errorf("confirm the active issuer before checking spec.issuerRef: %w", err)
	}
	if ok && checks.SameIssuer(got, fresh) {
		logger.V(2).Info("Request names the issuer the API server says is active; the watch has not caught up", "certificaterequest", klog.KObj(cr))
		return fresh, nil
	}
	return active, nil
}

// refused records a decision cert-manager would not let be written: an Event
// on the request, a metric and a log line, once.
func (c *Controller) refused(ctx context.Context, cr *cmapi.CertificateRequest, condType, result string, err error) {
	reason := err.Error()
	if len(reason) > maxRefusal {
		reason = reason[:maxRefusal] + "..."
	}
	msg := fmt.Sprintf("cert-manager refused the %s condition, so the request stays undecided: %q. Give the approver "+
		"the approve verb on this issuer's signer: add %s to the resourceNames of ClusterRole svid-csi-approver:signers "+
		"(config.env's ISSUER_RESOURCE and ISSUER_NAME), or name an issuer that exists; the request is decided again "+
		"when it changes or the approver restarts", condType, reason, signer.Guess(cr.Namespace, cr.Spec.IssuerRef))
	c.metrics.Refused(result)
	c.recorder.Event(cr, corev1.EventTypeWarning, EventRefused, msg)
	klog.FromContext(ctx).Error(err, "cert-manager refused the decision; not retrying", "certificaterequest", klog.KObj(cr), "condition", condType)
}

// byWebhook reports whether cert-manager's admission webhook, not RBAC on
// the status subresource, refused the write.
func byWebhook(err error) bool { return strings.Contains(err.Error(), "admission webhook") }

// foreign records a denial cert-manager would not let be written because the
// request names an issuer that is not this approver's to decide.
func (c *Controller) foreign(ctx context.Context, cr *cmapi.CertificateRequest, result string) {
	signer := signer.Guess(cr.Namespace, cr.Spec.IssuerRef)
	c.metrics.Refused(result)
	c.recorder.Event(cr, corev1.EventTypeWarning, EventRefused, fmt.Sprintf("Not decided by svid-csi: the request names "+
		"the issuer %s, which is not the active SPIFFE issuer, and cert-manager lets this approver decide only for the "+
		"signers it is given; the request stays undecided for that issuer's approver", signer))
	klog.FromContext(ctx).V(2).Info("Request names an issuer this approver may not decide for; left undecided",
		"certificaterequest", klog.KObj(cr), "signer", signer)
}
