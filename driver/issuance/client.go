package issuance

import (
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
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// IssuerSource names the issuer to use; ok is false when none is configured.
// internal/issuer's Tracker is one; StaticIssuer (from flags) is another.
type IssuerSource interface {
	Current() (ref cmmeta.IssuerReference, ok bool)
}

// StaticIssuer is the issuer given by flags; an empty Name means none.
type StaticIssuer cmmeta.IssuerReference

// Current implements IssuerSource.
func (s StaticIssuer) Current() (cmmeta.IssuerReference, bool) {
	return cmmeta.IssuerReference(s), s.Name != ""
}

// NoIssuerMessage says how to configure an issuer.
const NoIssuerMessage = "no issuer is configured: set --issuer-name (with --issuer-kind and --issuer-group) on the driver, " +
	"or the keys issuer-name, issuer-kind and issuer-group of the ConfigMap named by --runtime-issuance-configmap"

// Request asks for a certificate for one volume of one pod.
type Request struct {
	VolumeID       string
	Namespace      string
	PodName        string
	PodUID         string
	ServiceAccount string
	// Token is the pod's ServiceAccount token: the request is created as the pod.
	Token string
}

// Result is an issued certificate and its key.
type Result struct {
	KeyPEM    []byte // PKCS#8
	ChainPEM  []byte // leaf first
	NotBefore time.Time
	NotAfter  time.Time
	// Request is the namespace/name of the CertificateRequest.
	Request string
}

// Error is an issuance failure with the gRPC code the CSI call should return
// and a short reason for metrics.
type Error struct {
	Code    codes.Code
	Reason  string
	Message string
}

func (e *Error) Error() string { return e.Message }

// GRPCStatus lets status.FromError see the code.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

func newError(code codes.Code, reason, format string, args ...any) *Error {
	return &Error{Code: code, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Options configure a Client.
type Options struct {
	DriverName  string
	NodeName    string
	TrustDomain spiffeid.TrustDomain
	Duration    time.Duration
	Issuers     IssuerSource
	// PodClient creates requests; it must be built from PodConfig, so each
	// call carries the token set by WithToken.
	PodClient cmclient.Interface
	// DriverClient deletes requests, with the driver's own credentials.
	DriverClient cmclient.Interface
	Waiter       *Waiter
}

// Client issues certificates. It remembers a request still pending when a
// call gives up, with its key, so that the next call for the same volume
// resumes it instead of creating another: at most one request per volume.
type Client struct {
	opts Options

	mu      sync.Mutex
	pending map[string]*pendingRequest // by volume ID
	swept   atomic.Bool
}

type pendingRequest struct {
	namespace, name string
	podUID          string
	key             crypto.Signer
}

// New returns a Client.
func New(opts Options) (*Client, error) {
	switch {
	case opts.PodClient == nil || opts.DriverClient == nil:
		return nil, errors.New("issuance: both a pod client and a driver client are required")
	case opts.Waiter == nil:
		return nil, errors.New("issuance: a waiter is required")
	case opts.Issuers == nil:
		return nil, errors.New("issuance: an issuer source is required")
	}
	return &Client{opts: opts, pending: map[string]*pendingRequest{}}, nil
}

// HasSynced reports whether the request informer has synced and the
// requests a previous run left behind are swept, and the issuer source too
// when it watches something (the runtime ConfigMap).
func (c *Client) HasSynced() bool {
	if s, ok := c.opts.Issuers.(interface{ HasSynced() bool }); ok && !s.HasSynced() {
		return false
	}
	return c.swept.Load() && c.opts.Waiter.HasSynced()
}

// SweepOrphans waits for the request informer, then deletes this node's
// requests that a previous run created and can no longer use: their keys
// lived only in its memory. Without it they would stay, approved and issued,
// until their pods are deleted. Requests this run made are never touched.
func (c *Client) SweepOrphans(ctx context.Context, startedAt time.Time) error {
	if !cache.WaitForCacheSync(ctx.Done(), c.opts.Waiter.HasSynced) {
		return ctx.Err()
	}
	logger := klog.FromContext(ctx)
	for _, obj := range c.opts.Waiter.List() {
		cr, ok := obj.(*cmapi.CertificateRequest)
		if !ok || !cr.CreationTimestamp.Time.Before(startedAt) || c.isPending(cr.Namespace, cr.Name) {
			continue
		}
		err := c.opts.DriverClient.CertmanagerV1().CertificateRequests(cr.Namespace).Delete(ctx, cr.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			logger.Error(err, "Could not delete a CertificateRequest left by a previous run; it goes with its pod", "request", klog.KObj(cr))
			continue
		}
		logger.Info("Deleted a CertificateRequest left by a previous run", "request", klog.KObj(cr))
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
// pending request if there is one. Errors are *Error. After the result is
// written, call Release to delete the request.
func (c *Client) Issue(ctx context.Context, req Request) (*Result, error) {
	logger := klog.FromContext(ctx)
	c.mu.Lock()
	p := c.pending[req.VolumeID]
	c.mu.Unlock()
	if p != nil && p.podUID != req.PodUID {
		c.Release(ctx, req.VolumeID)
		p = nil
	}
	if p != nil && c.gone(ctx, p) {
		// Deleted while nobody waited on it (an admin, a cleanup job): resuming
		// it would wait for ever, so a new one is made.
		logger.Info("Pending CertificateRequest is gone; creating a new one", "request", klog.KRef(p.namespace, p.name))
		c.forget(req.VolumeID)
		p = nil
	}
	if p == nil {
		var err error
		if p, err = c.create(ctx, req); err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.pending[req.VolumeID] = p
		c.mu.Unlock()
		logger.V(2).Info("Created CertificateRequest", "request", klog.KRef(p.namespace, p.name))
	} else {
		logger.V(2).Info("Resuming pending CertificateRequest", "request", klog.KRef(p.namespace, p.name))
	}

	cr, err := c.opts.Waiter.Wait(ctx, p.namespace, p.name)
	ref := p.namespace + "/" + p.name
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return nil, newError(codes.DeadlineExceeded, "timeout",
			"CertificateRequest %s is still pending; the next call resumes it", ref)
	case errors.Is(err, errDeleted):
		c.forget(req.VolumeID)
		return nil, newError(codes.Unavailable, "api", "CertificateRequest %s: %v", ref, err)
	case err != nil:
		return nil, newError(codes.Internal, "local", "wait for CertificateRequest %s: %v", ref, err)
	}
	switch o, msg := outcomeOf(cr); o {
	case denied:
		c.Release(ctx, req.VolumeID)
		return nil, newError(codes.FailedPrecondition, "denied", "request denied: %s", msg)
	case failed:
		c.Release(ctx, req.VolumeID)
		return nil, newError(codes.FailedPrecondition, "failed", "request failed: %s", msg)
	}
	res, err := result(cr, p.key)
	if err != nil {
		c.Release(ctx, req.VolumeID)
		return nil, newError(codes.FailedPrecondition, "failed", "CertificateRequest %s: %v", ref, err)
	}
	res.Request = ref
	return res, nil
}

func (c *Client) create(ctx context.Context, req Request) (*pendingRequest, error) {
	ref, ok := c.opts.Issuers.Current()
	if !ok {
		return nil, newError(codes.FailedPrecondition, "no_issuer", "%s", NoIssuerMessage)
	}
	id, err := spiffe.ID(c.opts.TrustDomain, req.Namespace, req.ServiceAccount)
	if err != nil {
		return nil, newError(codes.InvalidArgument, "invalid", "%v", err)
	}
	key, err := NewKey()
	if err != nil {
		return nil, newError(codes.Internal, "local", "%v", err)
	}
	csr, err := CreateCSR(key, id)
	if err != nil {
		return nil, newError(codes.Internal, "local", "%v", err)
	}
	cr := BuildRequest(RequestParams{
		DriverName: c.opts.DriverName, NodeName: c.opts.NodeName, ID: id.String(),
		Namespace: req.Namespace, PodName: req.PodName, PodUID: req.PodUID,
		CSR: csr, Duration: c.opts.Duration, Issuer: ref,
	})
	created, err := c.opts.PodClient.CertmanagerV1().CertificateRequests(req.Namespace).
		Create(WithToken(ctx, req.Token), cr, metav1.CreateOptions{})
	if err != nil {
		return nil, apiError(ctx, fmt.Sprintf("create CertificateRequest as ServiceAccount %s/%s", req.Namespace, req.ServiceAccount), err)
	}
	return &pendingRequest{namespace: created.Namespace, name: created.Name, podUID: req.PodUID, key: key}, nil
}

// Release deletes the volume's request, if any, with the driver's own
// credentials, and forgets it. Failures are logged: the request is owned by
// the pod and goes with it at the latest.
func (c *Client) Release(ctx context.Context, volumeID string) {
	p := c.forget(volumeID)
	if p == nil {
		return
	}
	err := c.opts.DriverClient.CertmanagerV1().CertificateRequests(p.namespace).Delete(ctx, p.name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		klog.FromContext(ctx).Error(err, "Could not delete CertificateRequest; it is deleted with its pod", "request", klog.KRef(p.namespace, p.name))
	}
}

// gone reports whether a pending request no longer exists: absent from the
// synced cache and confirmed NotFound by the API server. Any doubt (a read
// error) counts as not gone; the wait then decides.
func (c *Client) gone(ctx context.Context, p *pendingRequest) bool {
	if !c.opts.Waiter.HasSynced() || c.opts.Waiter.Cached(p.namespace, p.name) {
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

// apiError classifies an API failure into the code the kubelet acts on.
func apiError(ctx context.Context, op string, err error) *Error {
	switch {
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return newError(codes.DeadlineExceeded, "timeout", "%s: %v", op, err)
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return newError(codes.PermissionDenied, "forbidden", "%s: %v", op, err)
	case apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err):
		return newError(codes.FailedPrecondition, "rejected", "%s: %v", op, err)
	default:
		return newError(codes.Unavailable, "api", "%s: %v", op, err)
	}
}
