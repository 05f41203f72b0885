package issuance

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/logkey"
	"github.com/svid-csi/svid-csi/internal/settings"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// Request asks for a certificate for one volume of one pod.
type Request struct {
	VolumeID       string
	Namespace      string
	PodName        string
	PodUID         string
	ServiceAccount string
	// Token is the pod's ServiceAccount token: the request is created as
	// the pod. Unused in node-bound mode.
	Token string
	// TokenExpiry is when Token expires (zero: unknown); an expired token
	// is never sent.
	TokenExpiry time.Time
	// Renewal: the volume holds a certificate already; a first publish
	// goes first for a create slot.
	Renewal bool
}

// Result is an issued certificate and its key.
type Result struct {
	KeyPEM    []byte // PKCS#8
	ChainPEM  []byte // leaf first
	NotBefore time.Time
	NotAfter  time.Time
	// Request is the CertificateRequest that was issued.
	Request klog.ObjectRef
}

// Options configure a Client.
type Options struct {
	DriverName string
	NodeName   string
	// Settings give the trust domain, duration and issuer of each new
	// request (a *settings.Tracker).
	Settings SettingsSource
	// NodeBound: requests are created with the driver's own credentials
	// (DriverClient), naming the pod, and the approver checks that the pod
	// runs on this node; otherwise with each pod's token (PodClient).
	NodeBound bool
	// PodClient creates requests in pod-token mode; it must be built from
	// PodConfig, so each call carries the token set by withToken.
	PodClient cmclient.Interface
	// DriverClient reads requests, and creates them in node-bound mode,
	// with the driver's own credentials.
	DriverClient cmclient.Interface
	Waiter       *Waiter
	// Deleter deletes requests once they are of no more use.
	Deleter *Deleter
	// MaxCreates bounds the creates in flight on the node (default 10).
	MaxCreates int
}

// SettingsSource tells the active settings and when they change.
type SettingsSource interface {
	Current() settings.Settings
	Changed() <-chan struct{}
}

// Client issues certificates. It names each request itself and remembers
// it, with its key, before sending it: a call that gives up, or a create
// whose answer was lost, leaves it for the next call of the same volume to
// resume or send again under the same name, never to create another. At most
// one request per volume, as long as the calls for one volume (Issue,
// Release) are serialised by the caller, as the volume manager's per-volume
// lock does.
type Client struct {
	opts  Options
	slots *slots

	mu      sync.Mutex
	pending map[string]*pendingRequest // by volume ID
	swept   atomic.Bool
}

type pendingRequest struct {
	namespace, name string
	podUID          string
	made            settings.Settings // what the request was made with
	key             crypto.Signer
	object          *cmapi.CertificateRequest // what is sent, again after a lost answer
	sent            bool                      // a create was tried: it may be stored; under Client.mu
	created         bool                      // the API server confirmed it; under Client.mu
}

// New returns a Client.
func New(opts Options) (*Client, error) {
	switch {
	case opts.DriverClient == nil:
		return nil, errors.New("issuance: a driver client is required")
	case opts.PodClient == nil && !opts.NodeBound:
		return nil, errors.New("issuance: a pod client is required in pod-token mode")
	case opts.Waiter == nil:
		return nil, errors.New("issuance: a waiter is required")
	case opts.Settings == nil:
		return nil, errors.New("issuance: a settings tracker is required")
	case opts.Deleter == nil:
		return nil, errors.New("issuance: a deleter is required")
	}
	if opts.MaxCreates <= 0 {
		opts.MaxCreates = 10
	}
	return &Client{opts: opts, slots: newSlots(opts.MaxCreates), pending: map[string]*pendingRequest{}}, nil
}

// HasSynced reports whether the request informer has synced and the
// requests a previous run left behind are swept.
func (c *Client) HasSynced() bool {
	return c.swept.Load() && c.opts.Waiter.HasSynced()
}

// SweepOrphans waits for the request informer, then has the deleter delete
// this node's requests that a previous run created and can no longer use:
// their keys lived only in its memory. Without it they would stay, approved
// and issued, until their pods are deleted. Requests this run made are never
// touched.
func (c *Client) SweepOrphans(ctx context.Context, startedAt time.Time) error {
	if !cache.WaitForCacheSync(ctx.Done(), c.opts.Waiter.HasSynced) {
		return ctx.Err()
	}
	logger := klog.FromContext(ctx)
	for _, obj := range c.opts.Waiter.list() {
		cr, ok := obj.(*cmapi.CertificateRequest)
		if !ok || !cr.CreationTimestamp.Time.Before(startedAt) || c.isPending(cr.Namespace, cr.Name) {
			continue
		}
		logger.Info("Deleting a CertificateRequest left by a previous run", logkey.CertificateRequest, klog.KObj(cr))
		c.opts.Deleter.Delete(ctx, cr.Namespace, cr.Name)
	}
	c.swept.Store(true)
	return nil
}

func (c *Client) isPending(namespace, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.pending {
		if p.namespace == namespace && p.name == name {
			return true
		}
	}
	return false
}

// Issue returns a certificate for the request's pod, resuming the volume's
// pending request if there is one. When the active issuer changes while a
// request waits, that request is deleted and a new one made for the new
// issuer. Errors carry a failure.Reason. After the result is written, call
// Release to delete the request.
func (c *Client) Issue(ctx context.Context, req Request) (*Result, error) {
	logger := klog.FromContext(ctx)
	for {
		// Taken before the pending request is chosen: a switch after this
		// point ends the wait below.
		changed := c.opts.Settings.Changed()
		p, err := c.pendingFor(ctx, req)
		if err != nil {
			return nil, err
		}
		ref := klog.KRef(p.namespace, p.name)
		cr, err := c.opts.Waiter.wait(ctx, p.namespace, p.name, changed)
		switch {
		case errors.Is(err, errIssuerChanged):
			continue // pendingFor replaces the request if it names the old issuer
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			return nil, failure.New(failure.Timeout, "CertificateRequest %s is still pending (%s); the next call resumes it", ref, pendingState(cr))
		case errors.Is(err, errDeleted):
			c.forget(req.VolumeID)
			return nil, failure.New(failure.API, "CertificateRequest %s: %w", ref, err)
		case err != nil:
			return nil, failure.New(failure.Local, "wait for CertificateRequest %s: %w", ref, err)
		}
		o, msg := outcomeOf(cr)
		if o == denied || o == failed {
			c.Release(ctx, req.VolumeID)
			if c.outdated(p) {
				// Decided against the old settings after a change (the old
				// issuer, or an approver applying the new duration or trust
				// domain): ask again with the active ones.
				logger.Info("CertificateRequest made with the previous settings was not issued; asking again with the active ones",
					logkey.CertificateRequest, ref, "outcome", msg, "made", p.made.String())
				continue
			}
		}
		switch o {
		case denied:
			return nil, failure.New(failure.Denied, "request denied: %s", msg)
		case failed:
			return nil, failure.New(failure.Failed, "request failed: %s", msg)
		}
		res, err := result(cr, p.key)
		if err != nil {
			c.Release(ctx, req.VolumeID)
			return nil, failure.New(failure.Failed, "CertificateRequest %s: %w", ref, err)
		}
		res.Request = ref
		return res, nil
	}
}

// pendingFor returns the volume's pending request, sent and confirmed by
// the API server, or prepares and sends a new one. A pending request of
// another pod (the volume ID reused), one that is gone, or one for an issuer
// that is no longer active is replaced; one whose create got no answer is
// sent again under its name.
func (c *Client) pendingFor(ctx context.Context, req Request) (*pendingRequest, error) {
	logger := klog.FromContext(ctx)
	c.mu.Lock()
	p := c.pending[req.VolumeID]
	created := p != nil && p.created
	c.mu.Unlock()
	switch {
	case p == nil:
	case p.podUID != req.PodUID:
		c.Release(ctx, req.VolumeID)
		p = nil
	case c.stale(p):
		logger.Info("Active issuer changed; replacing the pending CertificateRequest",
			logkey.CertificateRequest, klog.KRef(p.namespace, p.name), "previous", settings.RefString(p.made.Issuer))
		c.Release(ctx, req.VolumeID)
		p = nil
	case created && c.gone(ctx, p):
		// Deleted while nobody waited on it (an admin, a cleanup job): resuming
		// it would wait for ever, so a new one is made.
		logger.Info("Pending CertificateRequest is gone; creating a new one", logkey.CertificateRequest, klog.KRef(p.namespace, p.name))
		c.forget(req.VolumeID)
		p = nil
	}
	if created && p != nil {
		logger.V(2).Info("Resuming pending CertificateRequest", logkey.CertificateRequest, klog.KRef(p.namespace, p.name))
		return p, nil
	}
	if p == nil {
		var err error
		if p, err = c.prepare(req); err != nil {
			return nil, err
		}
		// Remembered before it is sent: a create that commits but whose
		// answer is lost is sent again, or deleted, under this name.
		c.mu.Lock()
		c.pending[req.VolumeID] = p
		c.mu.Unlock()
	}
	if err := c.send(ctx, req, p); err != nil {
		return nil, err
	}
	return p, nil
}

// stale reports whether the request names an issuer that is no longer the
// active one. With no issuer active at all it is kept: nothing could replace it.
func (c *Client) stale(p *pendingRequest) bool {
	cur := c.opts.Settings.Current()
	return cur.HasIssuer() && cur.Issuer != p.made.Issuer
}

// outdated reports whether the active settings differ from those the
// request was made with: a denial of it may be the approver's, applying the
// new ones, and a request made with them is worth one more try.
func (c *Client) outdated(p *pendingRequest) bool {
	cur := c.opts.Settings.Current()
	return cur.HasIssuer() && cur != p.made
}

// prepare makes the volume's next request: key, CSR and a name of its own.
func (c *Client) prepare(req Request) (*pendingRequest, error) {
	// One read: the ID, duration and issuer of a request are of one state.
	live := c.opts.Settings.Current()
	if !live.HasIssuer() {
		return nil, failure.New(failure.NoIssuer, "%w", settings.ErrNoIssuer)
	}
	id, err := spiffe.ID(live.TrustDomain, req.Namespace, req.ServiceAccount)
	if err != nil {
		return nil, failure.New(failure.Invalid, "%w", err)
	}
	key, err := newKey()
	if err != nil {
		return nil, failure.New(failure.Local, "%w", err)
	}
	csr, err := createCSR(key, id)
	if err != nil {
		return nil, failure.New(failure.Local, "%w", err)
	}
	cr := buildRequest(requestParams{
		Name:       requestName(req.PodName),
		DriverName: c.opts.DriverName, NodeName: c.opts.NodeName, ID: id.String(),
		Namespace: req.Namespace, PodName: req.PodName, PodUID: req.PodUID,
		CSR: csr, Duration: live.Duration, Issuer: live.Issuer,
	})
	return &pendingRequest{namespace: cr.Namespace, name: cr.Name, podUID: req.PodUID, made: live, key: key, object: cr}, nil
}

// send creates p's request within the node's create slots. An answer that
// says it exists already is checked to be p's own (an earlier send that
// committed): then p is confirmed. A refusal drops p, and has it deleted if
// an earlier send may have stored it; a name taken by another request drops
// p; any other failure keeps it, to be sent again under the same name.
func (c *Client) send(ctx context.Context, req Request, p *pendingRequest) error {
	if err := c.slots.acquire(ctx, req.Renewal); err != nil {
		return failure.New(failure.Timeout, "waiting for one of %d CertificateRequest create slots: %w", c.slots.size, err)
	}
	defer c.slots.release()
	// Checked after the wait for a slot: a token that expired meanwhile is not sent.
	if !c.opts.NodeBound && !req.TokenExpiry.IsZero() && !time.Now().Before(req.TokenExpiry) {
		return failure.New(failure.Token, "the pod's token for volume %s expired while waiting to create its CertificateRequest; the next republish brings a fresh one", req.VolumeID)
	}
	c.mu.Lock()
	sentBefore := p.sent
	p.sent = true
	c.mu.Unlock()
	client, cctx, as := c.opts.PodClient, withToken(ctx, req.Token), "as ServiceAccount "+req.Namespace+"/"+req.ServiceAccount
	if c.opts.NodeBound {
		client, cctx, as = c.opts.DriverClient, ctx, "with the driver's credentials (node-bound) for pod "+req.Namespace+"/"+req.PodName
	}
	ref := klog.KRef(p.namespace, p.name)
	_, err := client.CertmanagerV1().CertificateRequests(p.namespace).Create(cctx, p.object, metav1.CreateOptions{})
	switch {
	case err == nil:
	case apierrors.IsAlreadyExists(err):
		if collision, err := c.confirm(ctx, p); err != nil {
			if collision {
				c.forget(req.VolumeID)
			}
			return err // else: ours, probably; the next call sends and reads again
		}
		klog.FromContext(ctx).Info("CertificateRequest was created by an earlier attempt whose answer was lost; resuming it", logkey.CertificateRequest, ref)
	case refused(err):
		if sentBefore {
			c.Release(ctx, req.VolumeID) // an earlier send without an answer may have stored it
		} else {
			c.forget(req.VolumeID)
		}
		return apiError(ctx, "create CertificateRequest "+as, err)
	default:
		return apiError(ctx, "create CertificateRequest "+as, err)
	}
	c.mu.Lock()
	p.created = true
	c.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("Created CertificateRequest", logkey.CertificateRequest, ref, "issuer", settings.RefString(p.made.Issuer))
	return nil
}

// refused reports whether the API server answered a create with a refusal
// that means nothing was stored.
func refused(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsInvalid(err) ||
		apierrors.IsBadRequest(err) || apierrors.IsNotFound(err)
}

// confirm checks that the request under p's name is p's own: the same CSR.
// collision is true when it is another request's.
func (c *Client) confirm(ctx context.Context, p *pendingRequest) (collision bool, err error) {
	ref := klog.KRef(p.namespace, p.name)
	got, err := c.opts.DriverClient.CertmanagerV1().CertificateRequests(p.namespace).Get(ctx, p.name, metav1.GetOptions{})
	if err != nil {
		return false, apiError(ctx, fmt.Sprintf("read CertificateRequest %s, which a create said exists", ref), err)
	}
	if !bytes.Equal(got.Spec.Request, p.object.Spec.Request) {
		return true, failure.New(failure.API, "CertificateRequest %s exists and is not this volume's (a name collision); the next call makes another", ref)
	}
	return false, nil
}

// Release forgets the volume's request, if any, and has the deleter delete
// it with the driver's own credentials: it returns at once. The logger of
// ctx says whose request it is.
func (c *Client) Release(ctx context.Context, volumeID string) {
	if p := c.forget(volumeID); p != nil {
		c.opts.Deleter.Delete(ctx, p.namespace, p.name)
	}
}

// gone reports whether a pending request no longer exists: absent from the
// synced cache and confirmed NotFound by the API server. Any doubt (a read
// error) counts as not gone; the wait then decides.
func (c *Client) gone(ctx context.Context, p *pendingRequest) bool {
	if !c.opts.Waiter.HasSynced() || c.opts.Waiter.cached(p.namespace, p.name) {
		return false
	}
	_, err := c.opts.DriverClient.CertmanagerV1().CertificateRequests(p.namespace).Get(ctx, p.name, metav1.GetOptions{})
	return apierrors.IsNotFound(err)
}

func (c *Client) forget(volumeID string) *pendingRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[volumeID]
	delete(c.pending, volumeID)
	return p
}

// result checks the issued chain against the key and encodes both.
func result(cr *cmapi.CertificateRequest, key crypto.Signer) (*Result, error) {
	block, _ := pem.Decode(cr.Status.Certificate)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("status.certificate holds no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("the issued certificate does not match the request's key")
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return &Result{KeyPEM: keyPEM, ChainPEM: cr.Status.Certificate, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}, nil
}

// apiError classifies an API failure.
func apiError(ctx context.Context, op string, err error) error {
	switch {
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return failure.New(failure.Timeout, "%s: %w", op, err)
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return failure.New(failure.Forbidden, "%s: %w", op, err)
	case apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err):
		return failure.New(failure.Rejected, "%s: %w", op, err)
	default:
		return failure.New(failure.API, "%s: %w", op, err)
	}
}
