package csi

import (
	"context"
	"errors"
	"fmt"
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
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svid-csi/svid-csi/driver/failure"
	"github.com/svid-csi/svid-csi/driver/manager"
	"github.com/svid-csi/svid-csi/driver/manager/managertest"
	"github.com/svid-csi/svid-csi/internal/settings"
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
		{"target outside the pods dir", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = filepath.Join(td.dir, "etc", "mount") }, codes.InvalidArgument,
			`target_path: "` + filepath.Join(td.dir, "etc", "mount") + `" is not under the kubelet's pods directory`},
		{"target with dot-dot", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = filepath.Join(td.dir, "pods") + "/x/../../etc" }, codes.InvalidArgument,
			`target_path: "` + filepath.Join(td.dir, "pods") + `/x/../../etc" is not a clean absolute path`},
		{"target of another pod", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyPodUID] = "uid-other" }, codes.InvalidArgument,
			`target_path "` + managertest.Target(td.dir, "vol-bad") + `" is not under the directory of pod UID "uid-other"`},
		{"a name longer than NAME_MAX", func(r *csi.NodePublishVolumeRequest) {
			r.TargetPath = managertest.Target(td.dir, strings.Repeat("v", 300))
		}, codes.InvalidArgument, `target_path: "`},
		{"relative target", func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "pods/vol-bad/mount" }, codes.InvalidArgument,
			`target_path: "pods/vol-bad/mount" is not a clean absolute path`},
		{"no capability", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, codes.InvalidArgument, "volume_capability is missing"},
		{"block", func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}, codes.InvalidArgument, "volume_capability: block access is not supported"},
		{"no access type", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessType = nil }, codes.InvalidArgument, "volume_capability.mount is missing"},
		{"read-write", func(r *csi.NodePublishVolumeRequest) { r.Readonly = false }, codes.InvalidArgument, "readonly must be true"},
		{"not ephemeral", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyEphemeral] = "false" }, codes.InvalidArgument, vc(keyEphemeral) + ` must be "true"`},
		{"no ephemeral key", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, keyEphemeral) }, codes.InvalidArgument, vc(keyEphemeral) + " is missing"},
		{"no pod name", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, keyPodName) }, codes.InvalidArgument, vc(keyPodName) + " is missing"},
		{"no pod namespace", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, keyPodNamespace) }, codes.InvalidArgument, vc(keyPodNamespace) + " is missing"},
		{"no pod uid", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, keyPodUID) }, codes.InvalidArgument, vc(keyPodUID) + " is missing"},
		{"no service account", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, keyServiceAccount) }, codes.InvalidArgument, vc(keyServiceAccount) + " is missing"},
		{"namespace not a name", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyPodNamespace] = "Team_A" }, codes.InvalidArgument, vc(keyPodNamespace) + ` must be a namespace name (a DNS-1123 label), got "Team_A"`},
		{"pod name not a name", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyPodName] = "a/b" }, codes.InvalidArgument, vc(keyPodName) + ` must be a pod name`},
		{"service account not a name", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyServiceAccount] = "a\x00b" }, codes.InvalidArgument, vc(keyServiceAccount) + ` must be a ServiceAccount name (a DNS-1123 subdomain), got "a\x00b"`},
		{"pod uid not a uid", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyPodUID] = "../x" }, codes.InvalidArgument, vc(keyPodUID) + ` must be a pod UID`},
		{"no token", func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, keyTokens) }, codes.InvalidArgument, vc(keyTokens) + " is missing"},
		{"token not JSON", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyTokens] = "{not json" }, codes.InvalidArgument, vc(keyTokens) + " is not a JSON object"},
		{"token for another audience", func(r *csi.NodePublishVolumeRequest) {
			r.VolumeContext[keyTokens] = `{"vault":{"token":"x","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
		}, codes.InvalidArgument, vc(keyTokens) + ` has no token for the audience ""`},
		{"empty token", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[keyTokens] = `{"":{"token":""}}` }, codes.InvalidArgument, vc(keyTokens) + ` has no token`},
		{"secrets win over volume_context", func(r *csi.NodePublishVolumeRequest) { r.Secrets = map[string]string{keyTokens: "[]"} }, codes.InvalidArgument, `secrets["` + keyTokens + `"] is not a JSON object`},
		{"fs-group not a number", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "wheel" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + ` must be a number in 1..4294967295, got "wheel"`},
		{"fs-group zero", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "0" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + " must be a number"},
		{"fs-group too large", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "4294967296" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + " must be a number"},
		{"fs-group negative", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[spiffe.FSGroupAttribute] = "-1" }, codes.InvalidArgument, vc(spiffe.FSGroupAttribute) + " must be a number"},
		{"volume_mount_group bad", func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "x" }, codes.InvalidArgument, "volume_capability.mount.volume_mount_group must be a number"},
		{"unknown attribute", func(r *csi.NodePublishVolumeRequest) { r.VolumeContext["spiffe.csi.cert-manager.io/dns-names"] = "a" }, codes.InvalidArgument, vc("spiffe.csi.cert-manager.io/dns-names") + " is not a known attribute"},
		{"denied", func(r *csi.NodePublishVolumeRequest) {
			td.issuer.Fail(failure.New(failure.Denied, `request denied: spec.duration: exp="1h0m0s" got="2h0m0s"`))
		}, codes.FailedPrecondition, `request denied: spec.duration: exp="1h0m0s" got="2h0m0s"`},
		{"no issuer", func(r *csi.NodePublishVolumeRequest) {
			td.issuer.Fail(failure.New(failure.NoIssuer, "%w", settings.ErrNoIssuer))
		}, codes.FailedPrecondition, "no issuer is configured: set --issuer-name"},
		{"forbidden", func(r *csi.NodePublishVolumeRequest) {
			td.issuer.Fail(failure.New(failure.Forbidden, "create CertificateRequest as ServiceAccount team-a/app: forbidden"))
		}, codes.PermissionDenied, "create CertificateRequest as ServiceAccount team-a/app: forbidden"},
		{"unclassified", func(r *csi.NodePublishVolumeRequest) {
			td.issuer.Fail(errors.New("something nobody classified"))
		}, codes.Internal, "something nobody classified"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			td.issuer.Reset()
			req := td.publishRequest("vol-bad", "tok")
			tc.mutate(req)
			_, err := td.node.NodePublishVolume(context.Background(), req)
			st := status.Convert(err)
			if st.Code() != tc.wantCode || !strings.HasPrefix(st.Message(), tc.wantPrefix) {
				t.Fatalf("got %s %q, want %s %q...", st.Code(), st.Message(), tc.wantCode, tc.wantPrefix)
			}
			if tc.wantCode == codes.InvalidArgument {
				if len(td.issuer.Calls()) != 0 {
					t.Errorf("an invalid request reached the issuer")
				}
				assertNothingWritten(t, td, req.GetTargetPath())
			}
			if td.volumes.Published("vol-bad", "") == nil {
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
	cert, key := managertest.ReadPair(t, req.TargetPath)
	if !managertest.Matches(key, cert) {
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
	metas, _ := td.store.List()
	if len(metas) != 1 || metas[0].VolumeID != "vol-1" || metas[0].FSGroup != 1234 || metas[0].TargetPath != req.TargetPath ||
		metas[0].PodUID != "uid-vol-1" || metas[0].ServiceAccount != "app" {
		t.Fatalf("state = %+v", metas)
	}
	if !td.volumes.EarliestExpiry().Equal(cert.NotAfter) {
		t.Errorf("managed expiry %v, want the certificate's %v", td.volumes.EarliestExpiry(), cert.NotAfter)
	}
	if got := td.issuer.Released(); len(got) != 1 || got[0] != "vol-1" {
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
	if metas, _ := td.store.List(); len(metas) != 0 {
		t.Errorf("state left: %+v", metas)
	}
	if td.volumes.Len() != 0 {
		t.Error("volume still managed")
	}
}

func TestUnpublishUnknownVolumeSucceeds(t *testing.T) {
	td := startDriver(t, testLogger(t))
	_, err := td.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "nope", TargetPath: managertest.Target(td.dir, "nope")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = td.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "nope"})
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "target_path is missing" {
		t.Fatalf("got %v", err)
	}
	// Nothing outside the kubelet's pods directory is ever removed.
	outside := filepath.Join(td.dir, "precious")
	if err := os.MkdirAll(outside, 0o750); err != nil {
		t.Fatal(err)
	}
	_, err = td.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "nope", TargetPath: outside})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "target_path: ") {
		t.Fatalf("unpublish outside the pods dir = %v, want InvalidArgument naming target_path", err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("unpublish removed a directory outside the pods dir: %v", err)
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

func TestConcurrentPublishes(t *testing.T) {
	td := startDriver(t, testLogger(t))
	block := make(chan struct{})
	entered := make(chan string, 4)
	td.issuer.Block(block, entered)
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
	td.issuer.Block(make(chan struct{}), nil)
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
	if td.volumes.Published("vol-1", "") == nil {
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
	t0 := time.Now().Truncate(time.Second)
	fc := clocktesting.NewFakeClock(t0)
	td := startDriver(t, testLogger(t), func(o *manager.Options) { o.Clock = fc })
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
	if _, err := td.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "nope", VolumePath: req.TargetPath}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of an unknown volume: %v", err)
	}
	h, err := td.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "vol-1"})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 || h.GetVolumeHealth().GetVolumeId() != "vol-1" {
		t.Fatalf("health = %v, %v; want healthy", h, err)
	}
	if _, err := td.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "vol-1", VolumePublishPath: "/elsewhere"}); status.Code(err) != codes.NotFound {
		t.Errorf("health at the wrong path: %v", err)
	}
	// The certificate expires while its renewal hangs: degraded, with why.
	td.issuer.Block(make(chan struct{}), nil)
	fc.SetTime(t0.Add(2 * time.Hour))
	h, err = td.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "vol-1", VolumePublishPath: req.TargetPath})
	if err != nil {
		t.Fatal(err)
	}
	entries := h.GetVolumeHealth().GetHealthStatuses()
	if len(entries) != 1 || entries[0].GetStatus() != csi.VolumeHealthErrorType_DEGRADED || entries[0].GetReason() != "CertificateExpired" ||
		!strings.HasPrefix(entries[0].GetMessage(), "certificate expired at ") {
		t.Errorf("health = %v", entries)
	}
}

// Until the manager is ready the driver answers a first publish Unavailable
// (the kubelet retries), says so in Probe, and issues nothing.
func TestPublishBeforeSyncIsUnavailable(t *testing.T) {
	td := startDriver(t, testLogger(t), func(o *manager.Options) {
		o.Checks = []manager.Check{{Name: "the CertificateRequest cache", Ready: func() bool { return false }}}
	})
	_, err := td.node.NodePublishVolume(context.Background(), td.publishRequest("vol-1", "tok-1"))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("publish before sync: %v, want Unavailable", err)
	}
	if n := len(td.issuer.Calls()); n != 0 {
		t.Fatalf("%d issuances before sync, want 0", n)
	}
	if p, err := td.ident.Probe(context.Background(), &csi.ProbeRequest{}); err != nil || p.GetReady().GetValue() {
		t.Fatalf("Probe before sync = %v, %v; want not ready", p, err)
	}
}

// Every failure reason has its gRPC code, decided here and nowhere else;
// the kubelet acts on these, so each one is pinned.
func TestEveryReasonHasACode(t *testing.T) {
	want := map[failure.Reason]codes.Code{
		failure.NoIssuer: codes.FailedPrecondition, failure.Invalid: codes.InvalidArgument,
		failure.Forbidden: codes.PermissionDenied, failure.Rejected: codes.FailedPrecondition,
		failure.API: codes.Unavailable, failure.Timeout: codes.DeadlineExceeded,
		failure.Denied: codes.FailedPrecondition, failure.Failed: codes.FailedPrecondition,
		failure.Token: codes.Unavailable, failure.Local: codes.Internal,
		failure.Starting: codes.Unavailable, failure.Busy: codes.Aborted,
		failure.Conflict: codes.AlreadyExists, failure.NotFound: codes.NotFound,
	}
	for _, r := range failure.All {
		c, ok := want[r]
		if !ok {
			t.Errorf("reason %q: no code pinned in this test", r)
			continue
		}
		err := statusOf(fmt.Errorf("context: %w", failure.New(r, "why")))
		if st := status.Convert(err); st.Code() != c || st.Message() != "context: why" {
			t.Errorf("reason %q: %v, want %v with the whole message", r, err, c)
		}
	}
	if len(codeOf) != len(failure.All) {
		t.Errorf("%d codes for %d reasons", len(codeOf), len(failure.All))
	}
}

// Node-bound: the request is made with the driver's credentials, so a
// publish needs no token and a token sent anyway is neither read nor passed on.
func TestNodeBoundPublishNeedsNoToken(t *testing.T) {
	td := startDriver(t, testLogger(t), func(o *manager.Options) { o.NodeBound = true })
	req := td.publishRequest("vol-nb", "tok")
	delete(req.VolumeContext, keyTokens)
	if _, err := td.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatalf("node-bound publish without a token: %v", err)
	}
	req = td.publishRequest("vol-nb2", "tok")
	req.VolumeContext[keyTokens] = "{not json" // not read at all
	if _, err := td.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatalf("node-bound publish with a token it does not read: %v", err)
	}
	calls := td.issuer.Calls()
	if len(calls) != 2 || calls[0].Token != "" || calls[1].Token != "" {
		t.Errorf("issuer calls %+v, want two without a token", calls)
	}
}
