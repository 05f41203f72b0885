// Package signer checks that the approver may approve the active issuer's
// signer, as cert-manager's webhook will ask: the approve verb on the
// cert-manager.io resource signers named <resource>.<group>/<name>. It asks
// the API server with a SelfSubjectAccessReview when the active issuer
// changes and every few minutes, so a missing RBAC rule (an issuer changed in
// config.env without overlays/components/config-rbac, a runtime switch to an
// issuer not listed in ClusterRole svid-csi-approver:signers) is reported
// before the first decision is refused.
package signer

import (
	"context"
	"fmt"
	"strings"
	"time"

	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/approver/checks"
	"github.com/svid-csi/svid-csi/internal/settings"
)

// Source tells the active settings and when they change (a settings.Tracker).
type Source interface {
	Current() settings.Settings
	Changed() <-chan struct{}
	HasSynced() bool
}

// Options configure Run.
type Options struct {
	// Client asks SelfSubjectAccessReviews.
	Client kubernetes.Interface
	// Mapper maps the issuer's kind to its resource and scope (discovery).
	Mapper meta.RESTMapper
	Issuer Source
	// Report is told the outcome of each check: the signer and whether it
	// may be approved; known is false when no answer could be had (a
	// namespaced kind, whose signer names a namespace per request).
	Report func(signer string, allowed, known bool)
	// Every is the time between checks of an unchanged issuer; default 5m.
	Every time.Duration
}

// checkTimeout bounds one check's access reviews; the discovery client's
// own timeout (see Options.Mapper) bounds discovery.
const checkTimeout = 10 * time.Second

// retryAfter is the wait after a check that got no answer.
const retryAfter = 30 * time.Second

// Outcome is what one check found.
type Outcome struct {
	Signer  string
	Allowed bool
	Known   bool   // false: no answer (see Options.Report)
	Why     string // for the log
	Fix     string // what the operator does about a refusal
}

// Run checks the active issuer's signer until ctx is done. Each outcome that
// differs from the last is logged: an error line when cert-manager would
// refuse every decision.
func Run(ctx context.Context, opts Options) error {
	if opts.Every <= 0 {
		opts.Every = 5 * time.Minute
	}
	logger := klog.FromContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), opts.Issuer.HasSynced) {
		return nil
	}
	var last Outcome
	failing := false
	for {
		changed := opts.Issuer.Changed()
		wait := opts.Every
		active := opts.Issuer.Current()
		ref, ok := active.Issuer, active.HasIssuer()
		var out Outcome
		var err error
		if ok {
			out, err = Check(ctx, opts.Client, opts.Mapper, ref)
		}
		switch {
		case err != nil:
			// No answer: no series says yes for an issuer not checked.
			if !failing {
				logger.Error(err, "Could not check the approver's permission on the active issuer's signer; trying again")
				failing, last = true, Outcome{}
				if opts.Report != nil {
					opts.Report("", false, false)
				}
			}
			wait = retryAfter
		case out != last:
			failing, last = false, out
			if opts.Report != nil {
				opts.Report(out.Signer, out.Allowed, out.Known)
			}
			switch {
			case !ok:
			case !out.Known:
				logger.Info("The approver's permission on the active issuer's signer is checked by cert-manager per request", "signer", out.Signer, "why", out.Why)
			case out.Allowed:
				logger.Info("The approver may approve for the active issuer", "signer", out.Signer)
			default:
				logger.Error(nil, "The approver may not approve for the active issuer: cert-manager will refuse every decision",
					"signer", out.Signer, "why", out.Why, "fix", out.Fix)
			}
		default:
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(wait):
		}
	}
}

// Check asks whether this client may approve ref's signer, in the two
// forms cert-manager accepts: <resource>.<group>/* and the exact name. An
// issuer kind the API server does not serve can never be approved
// (cert-manager: "signer resource does not exist"); discovery is asked
// again once before saying so, for a CRD installed since. An error means no
// answer (API unreachable).
func Check(ctx context.Context, client kubernetes.Interface, mapper meta.RESTMapper, ref cmmeta.IssuerReference) (Outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	gk := schema.GroupKind{Group: ref.Group, Kind: ref.Kind}
	mapping, err := mapper.RESTMapping(gk)
	if r, ok := mapper.(meta.ResettableRESTMapper); ok && meta.IsNoMatchError(err) {
		r.Reset()
		mapping, err = mapper.RESTMapping(gk)
	}
	switch {
	case meta.IsNoMatchError(err):
		return Outcome{Signer: Guess("<namespace>", ref), Known: true,
			Why: fmt.Sprintf("the API server serves no kind %s in group %s", ref.Kind, ref.Group),
			Fix: "install the issuer's CRD and controller, or correct the issuer's kind and group"}, nil
	case err != nil:
		return Outcome{}, fmt.Errorf("map kind %s: %w", gk, err)
	}
	resource := mapping.Resource.Resource + "." + ref.Group
	wildcard := resource + "/*"
	if ok, err := mayApprove(ctx, client, wildcard); err != nil || ok {
		signer := resource + "/" + ref.Name
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			signer = wildcard
		}
		return Outcome{Signer: signer, Allowed: ok, Known: ok}, err
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return Outcome{Signer: resource + "/<namespace>." + ref.Name,
			Why: "a namespaced issuer's signer names the namespace of each request"}, nil
	}
	signer := resource + "/" + ref.Name
	ok, err := mayApprove(ctx, client, signer)
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Signer: signer, Allowed: ok, Known: true}
	if !ok {
		out.Why = "RBAC does not grant approve on signers " + signer
		out.Fix = "add the signer to the resourceNames of ClusterRole svid-csi-approver:signers"
	}
	return out, nil
}

// mayApprove asks a SelfSubjectAccessReview for approve on one signers name.
func mayApprove(ctx context.Context, client kubernetes.Interface, name string) (bool, error) {
	review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Group: "cert-manager.io", Resource: "signers", Verb: "approve", Name: name,
		},
	}}
	got, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("ask whether the approver may approve signers %s: %w", name, err)
	}
	return got.Status.Allowed, nil
}

// Guess is the signer name of ref for a request in namespace when the API
// server is not asked, for messages: <plural>.<group>/<name> for a
// cluster-scoped issuer, <plural>.<group>/<namespace>.<name> for a
// namespaced one. The plural (lower-cased kind plus "s") and the scope (a
// kind containing "Cluster") are guesses; Check asks discovery. Values are
// escaped to printable ASCII and bounded.
func Guess(namespace string, ref cmmeta.IssuerReference) string {
	ref = checks.Defaulted(ref)
	name := quoteBounded(ref.Name)
	if !strings.Contains(ref.Kind, "Cluster") {
		name = quoteBounded(namespace) + "." + name
	}
	return quoteBounded(strings.ToLower(ref.Kind)) + "s." + quoteBounded(ref.Group) + "/" + name
}

// quoteBounded keeps a value from a request printable and bounded in a
// message (253 bytes, the longest object name).
func quoteBounded(s string) string { return checks.Printable(s, 253) }
