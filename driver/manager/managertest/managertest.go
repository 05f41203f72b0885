// Package managertest gives the tests of the volume manager, and of the CSI
// layer above it, a fake issuer and a mount counter: unit tests only, never
// the proof that a feature works.
package managertest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// Fakes are what a Manager runs on in a unit test: a state store in a
// temporary directory, the fake issuer and a counting fake mounter.
type Fakes struct {
	Dir     string // the store is under Dir/data, targets under Dir/pods; sockets may go here too
	Store   *volume.Store
	Issuer  *Issuer
	Mounter *CountingMounter
}

// NewFakes returns Fakes in a fresh temporary directory.
func NewFakes(t testing.TB) *Fakes {
	t.Helper()
	dir := t.TempDir()
	store, err := volume.NewStore(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	return &Fakes{Dir: dir, Store: store, Issuer: NewIssuer(), Mounter: &CountingMounter{Interface: mount.NewFake(filepath.Join(dir, "pods"))}}
}

// Target is the kubelet's target path for volume volID of a pod under dir:
// <dir>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount.
func Target(dir, volID string) string {
	return filepath.Join(dir, "pods", "uid-"+volID, "volumes", "kubernetes.io~csi", volID, "mount")
}

// Issuer signs a self-signed certificate for a fresh key; it can block and
// fail on demand, and records calls.
type Issuer struct {
	Clock    clock.PassiveClock
	Lifetime time.Duration

	mu       sync.Mutex
	calls    []issuance.Request
	released []string
	err      error
	block    chan struct{} // when set, Issue waits on it (or ctx)
	entered  chan string   // when set, receives the volume ID on entry
}

// NewIssuer returns an Issuer of one-hour certificates on the real clock.
func NewIssuer() *Issuer {
	return &Issuer{Clock: clock.RealClock{}, Lifetime: time.Hour}
}

// Issue implements manager.Issuer.
func (f *Issuer) Issue(ctx context.Context, req issuance.Request) (*issuance.Result, error) {
	f.mu.Lock()
	f.calls = append(f.calls, req)
	err, block, entered := f.err, f.block, f.entered
	f.mu.Unlock()
	if entered != nil {
		entered <- req.VolumeID
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, failure.New(failure.Timeout, "still pending")
		}
	}
	if err != nil {
		return nil, err
	}
	return SelfSigned(f.Clock.Now(), f.Lifetime, "spiffe://cluster.local/ns/"+req.Namespace+"/sa/"+req.ServiceAccount)
}

// Release implements manager.Issuer.
func (f *Issuer) Release(_ context.Context, volumeID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, volumeID)
}

// Calls are the requests Issue was called with.
func (f *Issuer) Calls() []issuance.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]issuance.Request(nil), f.calls...)
}

// Released are the volumes Release was called for.
func (f *Issuer) Released() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.released...)
}

// Reset forgets the calls and clears the failure.
func (f *Issuer) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls, f.err = nil, nil
}

// Fail makes every later Issue fail with err (nil: succeed).
func (f *Issuer) Fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Block makes every later Issue wait until block is closed or its context
// ends, sending the volume ID to entered (if not nil) on entry.
func (f *Issuer) Block(block chan struct{}, entered chan string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.block, f.entered = block, entered
}

// SelfSigned is a self-signed certificate for id, valid from now (to the
// second) for lifetime, with its key.
func SelfSigned(now time.Time, lifetime time.Duration, id string) (*issuance.Result, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	nb := now.Truncate(time.Second)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), NotBefore: nb, NotAfter: nb.Add(lifetime), URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyPEM, err := issuance.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return &issuance.Result{
		KeyPEM: keyPEM, ChainPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, Request: klog.KRef("ns", "req"),
	}, nil
}

// CountingMounter counts tmpfs mounts over another mounter.
type CountingMounter struct {
	mount.Interface

	mu     sync.Mutex
	mounts int
}

// MountTmpfs implements mount.Interface.
func (c *CountingMounter) MountTmpfs(target string) (bool, error) {
	c.mu.Lock()
	c.mounts++
	c.mu.Unlock()
	return c.Interface.MountTmpfs(target)
}

// Mounts is how many times MountTmpfs was called.
func (c *CountingMounter) Mounts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mounts
}

// ReadPair reads the certificate and key of the volume at target through
// ..data, as one generation.
func ReadPair(t testing.TB, target string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	files, err := volume.ReadFiles(target, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(files["tls.crt"])
	kb, _ := pem.Decode(files["tls.key"])
	if cb == nil || kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("bad PEM in volume %s", target)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("key in volume %s cannot sign", target)
	}
	return cert, signer
}

// Matches reports whether key is the key of cert.
func Matches(key crypto.Signer, cert *x509.Certificate) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}
