package csi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/svid-csi/svid-csi/driver/issuance"
	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/spiffe"
)

func testLogger(t *testing.T) klog.Logger {
	logger, _ := ktesting.NewTestContext(t)
	return logger
}

func TestNodePublishVolumeValidation(t *testing.T) {
	td := startDriver(t, testLogger(t))
	vc := func(k string) string { return "volume_context[\"" + k + "\"]" }
	tests := []struct {
		name       string
		mutate     func(*csi.NodePublishVolumeRequest)
		wantCode   codes.Code
		wantPrefix string
	}{
		{"no volume id", func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }, codes.InvalidArgument, "volume_id is missing"},
		{"no target path", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }, codes.InvalidArgument, "target_path is missing"},
		{"no capability", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, codes.InvalidArgument, "volume_capability is missing"},
		{"block", func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}, codes.InvalidArgument, "volume_capability: block access is not supported"},
		{"no access type", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessType = nil }, codes.InvalidArgument, "volume_capability.mount is missing"},
		{"read-write", func(r *csi.NodePublishVolumeRequest) { r.Readonly = false }, codes.InvalidArgument, "readonly must be true"},
		{"not ephemeral", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[KeyEphemeral] = "false" }, codes.InvalidArgument, vc(KeyEphemeral) + ` must be "true"`},
		{"no ephemeral key", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, KeyEphemeral) }, codes.InvalidArgument, vc(KeyEphemeral) + " is missing"},
		{"no pod name", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, KeyPodName) }, codes.InvalidArgument, vc(KeyPodName) + " is missing"},
		{"no pod namespace", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, KeyPodNamespace) }, codes.InvalidArgument, vc(KeyPodNamespace) + " is missing"},
		{"no pod uid", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, KeyPodUID) }, codes.InvalidArgument, vc(KeyPodUID) + " is missing"},
		{"no service account", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, KeyServiceAccount) }, codes.InvalidArgument, vc(KeyServiceAccount) + " is missing"},
		{"no token", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, KeyTokens) }, codes.InvalidArgument, vc(KeyTokens) + " is missing"},
		{"token not JSON", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[KeyTokens] = "{not json" }, codes.InvalidArgument, vc(KeyTokens) + " is not a JSON object"},
		{"token for another audience", func(r *csi.NodePublishVolumeRequest) {
			r.VolumeContext[KeyTokens] = `{"vault":{"token":"x","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
		}, codes.InvalidArgument, vc(KeyTokens) + ` has no token for the audience ""`},
		{"empty token", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[KeyTokens] = `{"":{"token":""}}` }, codes.InvalidArgument, vc(KeyTokens) + ` has no token`},
		{"secrets win over volume_context", func(r *csi.NodePublishVolumeRequest) { r.Secrets = map[string]string{KeyTokens: "[]"} }, codes.InvalidArgument, `secrets["` + KeyTokens + `"] is not a JSON object`},
		{"fs-group not a number", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "wheel" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + ` must be a number in 1..4294967295, got "wheel"`},
		{"fs-group zero", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "0" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + " must be a number"},
		{"fs-group too large", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "4294967296" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + " must be a number"},
		{"fs-group negative", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "-1" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + " must be a number"},
		{"volume_mount_group bad", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "x" }, codes.InvalidArgument, "volume_capability.mount.volume_mount_group must be a number"},
		{"unknown attribute", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["spiffe.csi.cert-manager.io/dns-names"] = "a" }, codes.InvalidArgument, vc("spiffe.csi.cert-manager.io/dns-names") + " is not a known attribute"},
		{"denied", func(r *csi.NodePublishVolumeRequest) {
			td.issuer.set(func(f *fakeIssuer) {
				f.err = &issuance.Error{Code: codes.FailedPrecondition, Reason: "denied", Message: `request denied: spec.duration: exp="1h0m0s" got="2h0m0s"`}
			})
		}, codes.FailedPrecondition, `request denied: spec.duration: exp="1h0m0s" got="2h0m0s"`},
		{"no issuer", func(r *csi.NodePublishVolumeRequest) {
			td.issuer.set(func(f *fakeIssuer) {
				f.err = &issuance.Error{Code: codes.FailedPrecondition, Reason: "no_issuer", Message: issuance.NoIssuerMessage}
			})
		}, codes.FailedPrecondition, "no issuer is configured: set --issuer-name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			td.issuer.set(func(f *fakeIssuer) { f.err = nil; f.calls = nil })
			req := td.publishRequest("vol-bad", "tok")
			tc.mutate(req)
			_, err := td.node.NodePublishVolume(context.Background(), req)
			st := status.Convert(err)
			if st.Code() != tc.wantCode || !strings.HasPrefix(st.Message(), tc.wantPrefix) {
				t.Fatalf("got %s %q, want %s %q...", st.Code(), st.Message(), tc.wantCode, tc.wantPrefix)
			}
			if tc.wantCode == codes.InvalidArgument && len(td.issuer.Calls()) != 0 {
				t.Errorf("an invalid request reached the issuer")
			}
			if td.d.lookup("vol-bad") != nil {
				t.Errorf("a failed publish left the volume managed")
			}
			if _, err := os.Stat(req.GetTargetPath()); err == nil && req.GetTargetPath() != "" {
				if mounted, _ := td.mounter.IsMounted(req.GetTargetPath()); mounted {
					t.Errorf("a failed publish left %s mounted", req.GetTargetPath())
				}
			}
		})
	}
}

// readPair reads the certificate and key through ..data, as one generation.
func readPair(t *testing.T, target string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	files, err := volume.ReadFiles(target, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	return parsePair(t, files["tls.crt"], files["tls.key"])
}

func parsePair(t *testing.T, certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("bad PEM in volume")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key.(crypto.Signer)
}

func TestPublishWritesFilesAndUnpublishRemovesEverything(t *testing.T) {
	td := startDriver(t, testLogger(t))
	ctx := context.Background()
	req := td.publishRequest("vol-1", "tok-1")
	req.VolumeContext[spiffe.FSGroupAttribute] = "1234"
	req.VolumeCapability.GetMount().VolumeMountGroup = "999" // the attribute wins
	if _, err := td.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	calls := td.issuer.Calls()
	if len(calls) != 1 || calls[0].Token != "tok-1" || calls[0].Namespace != "team-a" || calls[0].ServiceAccount != "app" || calls[0].PodUID != "uid-vol-1" {
		t.Fatalf("issuer calls = %+v", calls)
	}
	cert, key := readPair(t, req.TargetPath)
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		t.Fatal("key does not match certificate")
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		p := filepath.Join(req.TargetPath, name)
		if l, err := os.Readlink(p); err != nil || l != filepath.Join("..data", name) {
			t.Errorf("%s is not a link through ..data: %q %v", name, l, err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o440 {
			t.Errorf("%s mode = %v, want 0440", name, fi.Mode().Perm())
		}
		if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 1234 {
			t.Errorf("%s group = %d, want 1234", name, gid)
		}
	}
	if _, err := os.Lstat(filepath.Join(req.TargetPath, "ca.crt")); err == nil {
		t.Error("ca.crt written without a CA bundle")
	}
	if mounted, _ := td.mounter.IsMounted(req.TargetPath); !mounted {
		t.Error("target not mounted")
	}
	metas, _ := td.d.opts.Store.List()
	if len(metas) != 1 || metas[0].VolumeID != "vol-1" || metas[0].FSGroup != 1234 || !metas[0].NotAfter.Equal(cert.NotAfter) {
		t.Fatalf("state = %+v", metas)
	}
	if due, ok := td.d.sched.Due("vol-1"); !ok || due.After(cert.NotBefore.Add(40*time.Minute)) || due.Before(cert.NotBefore.Add(34*time.Minute)) {
		t.Errorf("renewal due %v (ok=%v), want within [34m, 40m] of %v", due, ok, cert.NotBefore)
	}
	if got := td.issuer.released; len(got) != 1 || got[0] != "vol-1" {
		t.Errorf("released = %v, want the request deleted once written", got)
	}

	for range 2 { // idempotent
		if _, err := td.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: req.TargetPath}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(req.TargetPath); !os.IsNotExist(err) {
		t.Errorf("target still exists: %v", err)
	}
	if metas, _ := td.d.opts.Store.List(); len(metas) != 0 {
		t.Errorf("state left: %+v", metas)
	}
	if td.d.lookup("vol-1") != nil || td.d.sched.Len() != 0 {
		t.Error("volume still managed or scheduled")
	}
}

func TestUnpublishUnknownVolumeSucceeds(t *testing.T) {
	td := startDriver(t, testLogger(t))
	_, err := td.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "nope", TargetPath: filepath.Join(td.dir, "nope")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = td.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "nope"})
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "target_path is missing" {
		t.Fatalf("got %v", err)
	}
}

func TestPublishTwiceIssuesAndMountsOnce(t *testing.T) {
	td := startDriver(t, testLogger(t))
	req := td.publishRequest("vol-1", "tok-1")
	for range 2 {
		if _, err := td.node.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(td.issuer.Calls()); n != 1 {
		t.Errorf("issuances = %d, want 1", n)
	}
	if n := td.mounter.Mounts(); n != 1 {
		t.Errorf("mounts = %d, want 1", n)
	}
}

func TestRepublishOfHealthyVolumeOnlyKeepsToken(t *testing.T) {
	td := startDriver(t, testLogger(t))
	req := td.publishRequest("vol-1", "tok-1")
	if _, err := td.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	link, _ := os.Readlink(filepath.Join(req.TargetPath, "..data"))
	before, _ := os.ReadFile(filepath.Join(req.TargetPath, "tls.key"))
	td.issuer.set(func(f *fakeIssuer) { f.err = &issuance.Error{Code: codes.Unavailable, Message: "API down"} })
	for i := range 5 {
		req := td.publishRequest("vol-1", "tok-"+string(rune('2'+i)))
		if _, err := td.node.NodePublishVolume(context.Background(), req); err != nil {
			t.Fatalf("republish %d: %v", i, err)
		}
	}
	if n := len(td.issuer.Calls()); n != 1 {
		t.Errorf("issuances = %d, want 1", n)
	}
	if l, _ := os.Readlink(filepath.Join(req.TargetPath, "..data")); l != link {
		t.Errorf("..data changed from %s to %s: republish wrote files", link, l)
	}
	if after, _ := os.ReadFile(filepath.Join(req.TargetPath, "tls.key")); !bytes.Equal(before, after) {
		t.Error("key changed on republish")
	}
	if tok, _ := td.d.lookup("vol-1").freshToken(time.Now()); tok != "tok-6" {
		t.Errorf("token kept = %q, want the latest", tok)
	}
}

func TestConcurrentPublishes(t *testing.T) {
	td := startDriver(t, testLogger(t))
	block := make(chan struct{})
	entered := make(chan string, 4)
	td.issuer.set(func(f *fakeIssuer) { f.block, f.entered = block, entered })
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, id := range []string{"vol-a", "vol-b"} {
		wg.Go(func() {
			_, err := td.node.NodePublishVolume(ctx, td.publishRequest(id, "tok"))
			errs <- err
		})
	}
	// Both volumes reach the issuer at once: different volumes run in parallel.
	got := map[string]bool{}
	for range 2 {
		select {
		case id := <-entered:
			got[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("different volumes did not run in parallel; entered %v", got)
		}
	}
	// The same volume, while its publish is in flight, is answered Aborted.
	_, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-a", "tok"))
	if status.Code(err) != codes.Aborted {
		t.Fatalf("concurrent publish of the same volume: got %v, want Aborted", err)
	}
	close(block)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(td.issuer.Calls()); n != 2 {
		t.Errorf("issuances = %d, want 2", n)
	}
}

func TestPublishDeadlineKeepsNothingMounted(t *testing.T) {
	td := startDriver(t, testLogger(t))
	td.issuer.set(func(f *fakeIssuer) { f.block = make(chan struct{}) })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req := td.publishRequest("vol-1", "tok")
	_, err := td.node.NodePublishVolume(ctx, req)
	if c := status.Code(err); c != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	// The server side undoes the mount when its own context ends.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mounted, _ := td.mounter.IsMounted(req.TargetPath)
		if !mounted || time.Now().After(deadline) {
			if mounted {
				t.Fatal("target still mounted after a failed first publish")
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if td.d.lookup("vol-1") != nil {
		t.Error("volume managed after a failed publish")
	}
}

func TestIdentityAndCapabilities(t *testing.T) {
	td := startDriver(t, testLogger(t))
	ctx := context.Background()
	info, err := td.ident.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != spiffe.DefaultDriverName {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	pc, err := td.ident.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil || len(pc.GetCapabilities()) != 0 {
		t.Fatalf("plugin capabilities = %v, %v; want none (node only)", pc, err)
	}
	probe, err := td.ident.Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v", probe, err)
	}
	ni, err := td.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-1" {
		t.Fatalf("NodeGetInfo = %v, %v", ni, err)
	}
	nc, err := td.node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range nc.GetCapabilities() {
		got = append(got, c.GetRpc().GetType().String())
	}
	if strings.Join(got, ",") != "VOLUME_MOUNT_GROUP,GET_VOLUME_STATS,GET_VOLUME_HEALTH" {
		t.Errorf("node capabilities = %v", got)
	}
	for name, call := range map[string]func() error{
		"NodeStageVolume": func() error {
			_, err := td.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "v"})
			return err
		},
		"NodeExpandVolume": func() error {
			_, err := td.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "v"})
			return err
		},
	} {
		if status.Code(call()) != codes.Unimplemented {
			t.Errorf("%s: want Unimplemented", name)
		}
	}
}

func TestVolumeStatsAndHealth(t *testing.T) {
	td := startDriver(t, testLogger(t))
	ctx := context.Background()
	req := td.publishRequest("vol-1", "tok")
	if _, err := td.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	st, err := td.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol-1", VolumePath: req.TargetPath})
	if err != nil || len(st.GetUsage()) != 2 {
		t.Fatalf("stats = %v, %v", st, err)
	}
	if _, err := td.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol-1", VolumePath: "/elsewhere"}); status.Code(err) != codes.NotFound {
		t.Errorf("stats at the wrong path: %v", err)
	}
	h, err := td.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "vol-1"})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health = %v, %v; want healthy", h, err)
	}
	v := td.d.lookup("vol-1")
	v.mu.Lock()
	v.notAfter = time.Now().Add(-time.Minute)
	v.failures, v.lastErr = 3, "request denied: nope"
	v.mu.Unlock()
	h, err = td.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "vol-1"})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range h.GetVolumeHealth().GetHealthStatuses() {
		reasons = append(reasons, e.GetReason()+": "+e.GetMessage())
	}
	if len(reasons) != 2 || !strings.HasPrefix(reasons[0], "CertificateExpired: certificate expired at") ||
		!strings.HasSuffix(reasons[1], "request denied: nope") {
		t.Errorf("health = %q", reasons)
	}
}

func TestCABundleWrittenWithTheSet(t *testing.T) {
	ca := []byte("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n")
	td := startDriver(t, testLogger(t), func(o *Options) { o.CABundle = func() []byte { return ca } })
	req := td.publishRequest("vol-1", "tok")
	if _, err := td.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	files, err := volume.ReadFiles(req.TargetPath, "tls.crt", "tls.key", "ca.crt")
	if err != nil || !bytes.Equal(files["ca.crt"], ca) {
		t.Fatalf("ca.crt = %q, %v", files["ca.crt"], err)
	}
}
