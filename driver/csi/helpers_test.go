package csi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/mount"
	"github.com/svid-csi/svid-csi/driver/volume"
)

// fakeIssuer signs a self-signed certificate for a fresh key; it can block
// and fail on demand, and counts calls.
type fakeIssuer struct {
	clock    clock.PassiveClock
	lifetime time.Duration

	mu       sync.Mutex
	unsynced bool
	calls    []issuance.Request
	released []string
	err      error
	block    chan struct{} // when set, Issue waits on it (or ctx)
	entered  chan string   // when set, receives the volume ID on entry
}

func (f *fakeIssuer) Issue(ctx context.Context, req issuance.Request) (*issuance.Result, error) {
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
			return nil, &issuance.Error{Code: 4, Reason: "timeout", Message: "still pending"}
		}
	}
	if err != nil {
		return nil, err
	}
	return selfSigned(f.clock.Now(), f.lifetime, "spiffe://cluster.local/ns/"+req.Namespace+"/sa/"+req.ServiceAccount)
}

func (f *fakeIssuer) Release(_ context.Context, volumeID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, volumeID)
}

func (f *fakeIssuer) HasSynced() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.unsynced
}

func (f *fakeIssuer) Calls() []issuance.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]issuance.Request(nil), f.calls...)
}

func (f *fakeIssuer) set(fn func(*fakeIssuer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func selfSigned(now time.Time, lifetime time.Duration, id string) (*issuance.Result, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(id)
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
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, Request: "ns/req",
	}, nil
}

// countingMounter counts tmpfs mounts over another mounter.
type countingMounter struct {
	mount.Interface
	mu     sync.Mutex
	mounts int
}

func (c *countingMounter) MountTmpfs(target string) (bool, error) {
	c.mu.Lock()
	c.mounts++
	c.mu.Unlock()
	return c.Interface.MountTmpfs(target)
}

func (c *countingMounter) Mounts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mounts
}

type testDriver struct {
	d       *Driver
	node    csi.NodeClient
	ident   csi.IdentityClient
	conn    *grpc.ClientConn
	issuer  *fakeIssuer
	mounter *countingMounter
	root    string // data root
	dir     string // where targets go
}

type testOption func(*Options)

// startDriver serves a Driver with a fake issuer and mounter on a temporary
// unix socket and returns clients for it.
func startDriver(t *testing.T, logger klog.Logger, opts ...testOption) *testDriver {
	t.Helper()
	dir := t.TempDir()
	store, err := volume.NewStore(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	fi := &fakeIssuer{clock: clock.RealClock{}, lifetime: time.Hour}
	cm := &countingMounter{Interface: mount.NewFake()}
	o := Options{
		Name: "spiffe.csi.cert-manager.io", Version: "test", NodeID: "node-1",
		Issuer: fi, Mounter: cm, Store: store,
		Files: FileNames{Certificate: "tls.crt", Key: "tls.key", CA: "ca.crt"},
	}
	for _, fn := range opts {
		fn(&o)
	}
	if c, ok := o.Clock.(clock.PassiveClock); ok && c != nil {
		fi.clock = c
	}
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, logger, d, fi, cm, dir)
}

func serve(t *testing.T, logger klog.Logger, d *Driver, fi *fakeIssuer, cm *countingMounter, dir string) *testDriver {
	t.Helper()
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	if err := d.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	lis, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { d.Run(ctx) })
	wg.Go(func() {
		if err := d.Serve(ctx, lis); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		cancel()
		wg.Wait()
	})
	return &testDriver{d: d, node: csi.NewNodeClient(conn), ident: csi.NewIdentityClient(conn), conn: conn,
		issuer: fi, mounter: cm, root: filepath.Join(dir, "data"), dir: dir}
}

func tokensJSON(token string) string {
	b, _ := json.Marshal(map[string]tokenStatus{"": {Token: token, ExpirationTimestamp: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}})
	return string(b)
}

// publishRequest is what the kubelet sends for an inline volume of a pod.
func (td *testDriver) publishRequest(volID, token string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:   volID,
		TargetPath: filepath.Join(td.dir, "pods", volID, "mount"),
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly: true,
		VolumeContext: map[string]string{
			KeyPodName:        "app-" + volID,
			KeyPodNamespace:   "team-a",
			KeyPodUID:         "uid-" + volID,
			KeyServiceAccount: "app",
			KeyEphemeral:      "true",
			KeyTokens:         tokensJSON(token),
		},
	}
}
