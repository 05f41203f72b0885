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
	"github.com/svid-csi/svid-csi/internal/settings"
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
	cr, seen, ok := c.cache.get(key)
	if !ok {
		return nil // decided or gone
	}

	// No issuer yet is most likely configuration that is late (the runtime
	// ConfigMap not created yet): a denial would be final, so retry instead.
	active := c.settings.Current()
	if !active.HasIssuer() {
		return fmt.Errorf("cannot check spec.issuerRef: %w", settings.ErrNoIssuer)
	}
	denial, err := c.evaluate(ctx, cr, active, c.now())
	if err != nil {
		return err
	}
	if denial == nil {
		if denial, err = c.evaluatePod(ctx, cr, active); err != nil {
			return err
		}
	}

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
		c.cache.forget(cr)
		return nil
	case apierrors.IsForbidden(err):
		// cert-manager's webhook (no approve permission on this issuer's
		// signer, a signer that does not exist) or RBAC said no: retrying
		// cannot change that, and each try costs a SubjectAccessReview and a
		// discovery call. Final for this request until it changes or the
		// approver restarts.
		c.refused(ctx, cr, string(condType), result, err)
		c.cache.forget(cr)
		return nil
	case err != nil:
		return fmt.Errorf("set %s condition on CertificateRequest %s: %w", condType, key, err)
	}

	// From when this replica first saw the request, not creationTimestamp
	// (whole seconds).
	latency := now.Sub(seen)
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

// freshTimeout bounds the read of the ConfigMaps that confirms a mismatch.
const freshTimeout = 5 * time.Second

// live are the checks whose expected values change with the settings.
var live = map[string]bool{checks.CheckIssuer: true, checks.CheckDuration: true, checks.CheckTrustDomain: true}

// evaluate checks the request against the active settings. A request that
// fails only because its duration, trust domain or issuer differs is also
// checked against the settings active just before recent changes (a driver
// made it before it saw them), then against the settings the API
// server holds now (the driver saw the change before this approver's watch
// did), and approved if it passes all checks against either: a change
// mid-traffic denies nothing. Anything else is denied against the active
// settings, and so is at once, without those further checks, a request that
// would fail another check even with its own issuer and duration. An error
// means the settings could not be confirmed: retry. seen is a time at which
// the request is known to exist (it was in the cache).
func (c *Controller) evaluate(ctx context.Context, cr *cmapi.CertificateRequest, active settings.Settings, seen time.Time) (*checks.Denial, error) {
	denial := checks.Evaluate(cr, c.policy(active))
	if denial == nil || !live[denial.Check] {
		return denial, nil
	}
	// The trust domain is checked last, once the rest of the identity is
	// right: under its own issuer and duration, a request that fails
	// anything but the trust domain fails under any settings.
	own := c.policy(active)
	own.Issuer = checks.Defaulted(cr.Spec.IssuerRef)
	if cr.Spec.Duration != nil {
		own.Duration = cr.Spec.Duration.Duration
	}
	if d := checks.Evaluate(cr, own); d != nil && d.Check != checks.CheckTrustDomain {
		return denial, nil
	}
	logger := klog.FromContext(ctx)
	for _, prev := range c.settings.Previous(cr.CreationTimestamp.Time) {
		if prev.HasIssuer() && checks.Evaluate(cr, c.policy(prev)) == nil {
			logger.V(2).Info("Request carries settings active before a recent change; approved against those",
				"certificaterequest", klog.KObj(cr), "check", denial.Check, "previous", prev.String())
			return nil, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, freshTimeout)
	defer cancel()
	fresh, err := c.settings.Fresh(ctx, seen)
	if err != nil {
		return nil, fmt.Errorf("confirm the active settings before denying on %s: %w", denial.Check, err)
	}
	if fresh != active && fresh.HasIssuer() && checks.Evaluate(cr, c.policy(fresh)) == nil {
		logger.V(2).Info("Request carries the settings the API server holds; the watch has not caught up",
			"certificaterequest", klog.KObj(cr), "check", denial.Check, "fresh", fresh.String())
		return nil, nil
	}
	return denial, nil
}

func (c *Controller) policy(s settings.Settings) checks.Policy {
	return checks.Policy{TrustDomain: s.TrustDomain, Duration: s.Duration, Issuer: s.Issuer, Modes: c.modes, DriverUsername: c.driverUser}
}

// podTimeout bounds the reads of a node-bound request's pod.
const podTimeout = 5 * time.Second

// evaluatePod checks the pod of a node-bound request, which passed every
// other check. It reads the pod by name, not from a cache of every pod in
// the cluster (that would grow with the cluster, in every replica, for one
// read per issuance): first from the API server's watch cache
// (resourceVersion 0: no etcd read), and again from etcd before any denial,
// so that a cache a few milliseconds behind never denies a pod that exists.
// An approval from the watch cache can miss only what changed in those
// milliseconds on a pod whose UID and node never change: that it started
// terminating. A pod that is gone is a denial; an error is retried.
func (c *Controller) evaluatePod(ctx context.Context, cr *cmapi.CertificateRequest, active settings.Settings) (*checks.Denial, error) {
	b, ok := checks.NodeBinding(cr, c.policy(active))
	if !ok {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, podTimeout)
	defer cancel()
	var denial *checks.Denial
	for _, rv := range []string{"0", ""} {
		pod, err := c.pods.Pods(b.Namespace).Get(ctx, b.PodName, metav1.GetOptions{ResourceVersion: rv})
		switch {
		case apierrors.IsNotFound(err):
			denial = checks.PodNotFound(b)
		case err != nil:
			return nil, fmt.Errorf("get pod %s of a node-bound request: %w", b, err)
		default:
			denial = checks.EvaluatePod(b, pod, c.driverName)
		}
		if denial == nil {
			return nil, nil
		}
	}
	return denial, nil
}

// refused records a decision cert-manager would not let be written: an Event
// on the request, a metric and a log line, once.
func (c *Controller) refused(ctx context.Context, cr *cmapi.CertificateRequest, condType, result string, err error) {
	reason := printable(err)
	msg := fmt.Sprintf("cert-manager refused the %s condition, so the request stays undecided: \"%s\". Give the approver "+
		"the approve verb on this issuer's signer: add %s to the resourceNames of ClusterRole svid-csi-approver:signers "+
		"(config.env's ISSUER_RESOURCE and ISSUER_NAME), or name an issuer that exists; the request is decided again "+
		"when it changes or the approver restarts", condType, reason, signer.Guess(cr.Namespace, cr.Spec.IssuerRef))
	c.metrics.Refused(result)
	c.recorder.Event(cr, corev1.EventTypeWarning, EventRefused, msg)
	// The API's words may quote the request (its issuer name): escaped.
	klog.FromContext(ctx).Error(nil, "cert-manager refused the decision; not retrying", "certificaterequest", klog.KObj(cr),
		"condition", condType, "reason", reason)
}

// printable is an error's text escaped and cut (checks.Printable): API
// errors may quote what a request's author wrote (an issuer name with
// control characters in it), and logs and Events get it only so.
func printable(err error) string { return checks.Printable(err.Error(), maxRefusal) }

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
