package csi

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2/textlogger"

	"github.com/svid-csi/svid-csi/driver/failure"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestTokensNeverLogged(t *testing.T) {
	const token = "eyJhbGciOiJSUzI1NiJ9.SECRET-POD-TOKEN.sig"
	var out syncBuffer
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(10), textlogger.Output(&out)))
	td := startDriver(t, logger)
	ctx := context.Background()

	// In volume_context (the default), then in secrets (serviceAccountTokenInSecrets).
	req := td.publishRequest("vol-1", token)
	if _, err := td.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	req2 := td.publishRequest("vol-2", "unused")
	req2.Secrets = map[string]string{keyTokens: tokensJSON(token)}
	delete(req2.VolumeContext, keyTokens)
	if _, err := td.node.NodePublishVolume(ctx, req2); err != nil {
		t.Fatal(err)
	}
	// A rejected request whose token JSON is malformed around the token.
	bad := td.publishRequest("vol-3", token)
	bad.VolumeContext[keyTokens] = `{"": {"token": "` + token + `"`
	if _, err := td.node.NodePublishVolume(ctx, bad); err == nil {
		t.Fatal("malformed tokens accepted")
	}
	// The renewal path logs too: republish and unpublish.
	if _, err := td.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := td.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-1", TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}

	logs := out.String()
	if !strings.Contains(logs, "CSI request") || !strings.Contains(logs, "NodePublishVolume") {
		t.Fatalf("the requests were not logged at V(5); logs:\n%s", logs)
	}
	if strings.Contains(logs, "SECRET-POD-TOKEN") {
		t.Fatalf("token found in logs:\n%s", logs)
	}
	for _, want := range []string{redacted, stripped} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestSanitizeWorksOnACopy(t *testing.T) {
	req := &csi.NodePublishVolumeRequest{
		VolumeId:      "v",
		Secrets:       map[string]string{"password": "hunter2"},
		VolumeContext: map[string]string{keyTokens: "tok", keyPodName: "p"},
	}
	got := sanitized(req)
	if strings.Contains(got, "hunter2") || strings.Contains(got, `"tok"`) || !strings.Contains(got, `"p"`) {
		t.Fatalf("sanitized = %s", got)
	}
	if req.Secrets["password"] != "hunter2" || req.VolumeContext[keyTokens] != "tok" {
		t.Fatal("sanitized modified the request")
	}
}

// A failed call leaves a line at the shipped verbosity (-v=1), naming the
// method, the volume, the code and the message; a successful one does not.
func TestFailedCallLoggedAtShippedVerbosity(t *testing.T) {
	var out syncBuffer
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(1), textlogger.Output(&out)))
	td := startDriver(t, logger)
	ctx := context.Background()
	if _, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-ok", "tok")); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "CSI call") {
		t.Fatalf("a successful call logged at -v=1:\n%s", out.String())
	}
	td.issuer.Fail(failure.New(failure.Denied, "request denied: spec.duration: exp=1h got=2h"))
	if _, err := td.node.NodePublishVolume(ctx, td.publishRequest("vol-denied", "tok")); err == nil {
		t.Fatal("denied publish succeeded")
	}
	logs := out.String()
	for _, want := range []string{`"CSI call failed"`, `err="request denied: spec.duration: exp=1h got=2h"`,
		`method="/csi.v1.Node/NodePublishVolume"`, `volumeID="vol-denied"`, `code="FailedPrecondition"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs at -v=1 lack %s:\n%s", want, logs)
		}
	}
}
