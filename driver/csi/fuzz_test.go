package csi

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/svid-csi/svid-csi/internal/spiffe"
)

// fieldPrefixes are how every InvalidArgument message of NodePublishVolume
// begins: with the field at fault.
var fieldPrefixes = []string{"volume_id", "target_path", "volume_capability", "readonly", "volume_context[", "secrets["}

// FuzzNodePublishVolume sends NodePublishVolume whatever the kubelet, or
// anything else that reaches the socket, might: every answer is a success or
// a gRPC status; an invalid request is InvalidArgument naming its field,
// never reaches the issuer and leaves nothing behind (no directory, no
// mount, no state); nothing is ever mounted outside the kubelet's pods
// directory. The fake issuer issues whatever it is asked, so any other code
// is a defect. The seeds run with the unit tests; `go test -fuzz
// FuzzNodePublishVolume ./driver/csi/` explores further.
func FuzzNodePublishVolume(f *testing.F) {
	valid := tokensJSON("tok")
	f.Add("vol-1", "pods/uid-vol-1/volumes/kubernetes.io~csi/vol-1/mount", "app", "team-a", "uid-vol-1", "app", "true", valid, "", "", true, false)
	f.Add("vol-2", "pods/uid-vol-2/volumes/kubernetes.io~csi/vol-2/mount", "app", "team-a", "uid-vol-2", "app", "true", valid, "1000", "", true, false)
	f.Add("vol-3", "pods/uid-vol-3/volumes/kubernetes.io~csi/vol-3/mount", "app", "team-a", "uid-vol-3", "app", "true", valid, "", "2000", true, true)
	f.Add("", "pods/uid/volumes/kubernetes.io~csi/x/mount", "app", "team-a", "uid", "app", "true", valid, "", "", true, false)
	f.Add("vol-4", "pods/../etc", "app", "team-a", "uid", "app", "true", valid, "", "", true, false)
	f.Add("vol-5", "/etc", "app", "team-a", "uid", "app", "true", valid, "", "", true, false)
	f.Add("vol-6", "pods/uid-vol-6/volumes/kubernetes.io~csi/vol-6/mount", "", "team-a", "uid", "app", "true", valid, "", "", true, false)
	f.Add("vol-7", "pods/uid-vol-7/volumes/kubernetes.io~csi/vol-7/mount", "app", "Team_A", "uid", "app", "true", valid, "", "", true, false)
	f.Add("vol-8", "pods/uid-vol-8/volumes/kubernetes.io~csi/vol-8/mount", "app", "team-a", "uid", "a\x00b", "true", valid, "", "", true, false)
	f.Add("vol-9", "pods/uid-vol-9/volumes/kubernetes.io~csi/vol-9/mount", "app", "team-a", "uid", "app", "false", valid, "", "", true, false)
	f.Add("vol-10", "pods/uid-vol-10/volumes/kubernetes.io~csi/vol-10/mount", "app", "team-a", "uid", "app", "true", `{"":{"token":1}}`, "", "", true, false)
	f.Add("vol-11", "pods/uid-vol-11/volumes/kubernetes.io~csi/vol-11/mount", "app", "team-a", "uid", "app", "true", valid, "-1", "x", false, false)
	f.Add("vol-12", "pods/uid-vol-12/volumes/kubernetes.io~csi/vol-12/mount/", "app", "team-a", "uid", "app", "true", valid, "4294967295", "", true, false)

	td := startDriver(f, klog.Logger{}) // the zero logger discards
	pods := filepath.Join(td.dir, "pods")
	published := 0 // the valid seeds reach the success path
	f.Cleanup(func() {
		fuzzing := flag.Lookup("test.fuzz") != nil && flag.Lookup("test.fuzz").Value.String() != ""
		if published == 0 && !f.Failed() && !fuzzing {
			f.Error("no input was published: the success path went untested")
		}
	})
	f.Fuzz(func(t *testing.T, volID, target, podName, ns, uid, sa, ephemeral, tokens, fsGroup, mountGroup string, readonly, block bool) {
		for _, s := range []string{volID, target, podName, ns, uid, sa, ephemeral, tokens, fsGroup, mountGroup} {
			if !utf8.ValidString(s) {
				return // a protobuf string is UTF-8: gRPC refuses to send anything else
			}
		}
		if !strings.HasPrefix(target, "/") {
			target = td.dir + "/" + target // unclean paths stay unclean
		}
		req := td.publishRequest("unused", "unused")
		req.VolumeId, req.TargetPath, req.Readonly = volID, target, readonly
		req.VolumeContext = map[string]string{
			keyPodName: podName, keyPodNamespace: ns, keyPodUID: uid, keyServiceAccount: sa,
			keyEphemeral: ephemeral, keyTokens: tokens,
		}
		if fsGroup != "" {
			req.VolumeContext[spiffe.FSGroupAttribute] = fsGroup
		}
		req.VolumeCapability.GetMount().VolumeMountGroup = mountGroup
		if block {
			req.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}
		_, existed := os.Lstat(target)
		td.issuer.Reset()

		_, err := td.node.NodePublishVolume(context.Background(), req)
		st, ok := status.FromError(err)
		if !ok {
			t.Fatalf("not a gRPC status: %v", err)
		}
		if !strings.HasPrefix(target, pods+"/") && st.Code() != codes.InvalidArgument {
			t.Fatalf("target %q outside the pods directory: %s %q, want InvalidArgument", target, st.Code(), st.Message())
		}
		if st.Code() == codes.OK {
			published++
		}
		switch st.Code() {
		case codes.OK:
			if _, err := td.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
				t.Fatalf("unpublish of a published volume: %v", err)
			}
		default:
			t.Fatalf("%s %q: the fake issuer issues anything, so a publish either succeeds or is invalid", st.Code(), st.Message())
		case codes.InvalidArgument:
			if !hasAnyPrefix(st.Message(), fieldPrefixes) {
				t.Errorf("InvalidArgument %q names no field", st.Message())
			}
			if len(td.issuer.Calls()) != 0 {
				t.Error("an invalid request reached the issuer")
			}
			if existed != nil {
				if _, err := os.Lstat(target); err == nil {
					t.Errorf("an invalid request left %q: %v", target, err)
				}
			}
		}
		if td.volumes.Len() != 0 {
			t.Errorf("%d volumes managed after the request (and its unpublish)", td.volumes.Len())
		}
		if metas, err := td.store.List(); err != nil || len(metas) != 0 {
			t.Errorf("state left: %v, %v", metas, err)
		}
		if mounted, _ := td.mounter.IsMounted(target); mounted {
			t.Errorf("%q left mounted", target)
		}
	})
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
