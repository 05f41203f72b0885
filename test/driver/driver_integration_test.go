//go:build integration

package driver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// TestPodLifecycle: a pod gets its SVID through the real kubelet protocol;
// the request was made as the pod's ServiceAccount and is gone once the
// files are written; republish is free; unpublish leaves nothing behind.
func TestPodLifecycle(t *testing.T) {
	for _, inSecrets := range []bool{true, false} {
		name := "life-ctx"
		if inSecrets {
			name = "life-sec"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			n := startNode(t, name, nodeOpts{tokenInSecrets: inSecrets})
			ns := newTenant(t, name)
			w, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Watch(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()

			gid := int64(4321)
			v := n.pod(t, ns, "web", map[string]string{"spiffe.csi.cert-manager.io/fs-group": "4321"}, nil)
			if err := n.kubelet.Publish(ctx, v); err != nil {
				t.Fatalf("NodePublishVolume: %v\n%s", err, n.driver.Tail(4096))
			}
			cert := svid(t, v, id(ns))
			if !isMountPoint(t, v.TargetPath) {
				t.Fatalf("%s is not a mount point", v.TargetPath)
			}
			for _, f := range []string{"tls.crt", "tls.key"} {
				st, err := os.Stat(filepath.Join(v.TargetPath, f))
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode().Perm() != 0o440 {
					t.Errorf("%s mode %v, want 0440", f, st.Mode().Perm())
				}
				if got := st.Sys().(*syscall.Stat_t).Gid; int64(got) != gid {
					t.Errorf("%s group %d, want %d", f, got, gid)
				}
			}

			// The one request was created by the pod's ServiceAccount and deleted after.
			var created []*cmapi.CertificateRequest
			deleted := false
			for !deleted {
				select {
				case ev := <-w.ResultChan():
					cr, _ := ev.Object.(*cmapi.CertificateRequest)
					switch ev.Type {
					case watch.Added:
						created = append(created, cr)
					case watch.Deleted:
						deleted = true
					}
				case <-ctx.Done():
					t.Fatalf("the request was never deleted (%d created)", len(created))
				}
			}
			if len(created) != 1 {
				t.Fatalf("%d requests created, want 1", len(created))
			}
			if want := "system:serviceaccount:" + ns + ":app"; created[0].Spec.Username != want {
				t.Fatalf("request made as %q, want the pod's ServiceAccount %q", created[0].Spec.Username, want)
			}

			// Republish of a healthy volume: no request, same files.
			time.Sleep(time.Second) // let the audit log catch up with the delete
			before := auditCount(t, ns)
			for range 3 {
				if err := n.kubelet.Publish(ctx, v); err != nil {
					t.Fatalf("republish: %v", err)
				}
			}
			if again := svid(t, v, id(ns)); !bytes.Equal(again.Raw, cert.Raw) {
				t.Fatal("republish of a healthy volume rewrote the certificate")
			}
			time.Sleep(time.Second)
			if after := auditCount(t, ns); after != before {
				t.Fatalf("republish made %d API requests on CertificateRequests, want 0", after-before)
			}

			if err := n.kubelet.DeletePod(ctx, v); err != nil {
				t.Fatal(err)
			}
			if isMountPoint(t, v.TargetPath) {
				t.Fatal("still mounted after unpublish")
			}
			if _, err := os.Stat(v.TargetPath); !os.IsNotExist(err) {
				t.Fatalf("target still there: %v", err)
			}
			assertNoState(t, n, v.VolumeID)
			waitNoRequests(t, ns)
			// Unpublish is idempotent, also for ids it never knew.
			if err := n.kubelet.Unpublish(ctx, v); err != nil {
				t.Fatalf("second unpublish: %v", err)
			}
		})
	}
}

// assertNoState checks that nothing of the volume is left in the data root.
func assertNoState(t *testing.T, n *node, volumeID string) {
	t.Helper()
	err := filepath.Walk(n.dataRoot, func(path string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(path, volumeID) {
			t.Errorf("state left behind: %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeniedSurfacesMessage: a request the approver denies fails the publish
// with FailedPrecondition carrying the approver's message, and leaves nothing.
func TestDeniedSurfacesMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, "deny", nodeOpts{driverTD: "other.example"})
	ns := newTenant(t, "deny")
	v := n.pod(t, ns, "web", nil, nil)
	err := n.kubelet.Publish(ctx, v)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish: %v, want FailedPrecondition", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, `exp="cluster.local" got="other.example"`) {
		t.Fatalf("message %q does not carry the approver's denial", msg)
	}
	if isMountPoint(t, v.TargetPath) {
		t.Fatal("a failed first publish left a mount")
	}
	assertNoState(t, n, v.VolumeID)
}

// TestFiftyPods: 50 pods published at once all get their SVIDs.
func TestFiftyPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n := startNode(t, "fifty", nodeOpts{})
	ns := newTenant(t, "fifty")
	vols := make([]*podResult, 50)
	for i := range vols {
		vols[i] = &podResult{v: n.pod(t, ns, "pod-"+strconv.Itoa(i), nil, nil)}
	}
	var wg sync.WaitGroup
	for _, tv := range vols {
		wg.Go(func() { tv.err = n.kubelet.Publish(ctx, tv.v) })
	}
	wg.Wait()
	for _, tv := range vols {
		if tv.err != nil {
			t.Fatalf("%s: %v", tv.v.Pod.Name, tv.err)
		}
		svid(t, tv.v, id(ns))
	}
	for _, tv := range vols {
		if err := n.kubelet.DeletePod(ctx, tv.v); err != nil {
			t.Fatal(err)
		}
	}
	waitNoRequests(t, ns)
}

// TestRenewalSurvivesRestart: with 2-minute certificates, the driver is
// killed (-9) mid-life and started again; the kubelet keeps republishing;
// the certificate is renewed (new key) before it expires, and old requests
// are deleted.
func TestRenewalSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n := startNode(t, "renew", nodeOpts{duration: 2 * time.Minute})
	ns := newTenant(t, "renew")
	v := n.pod(t, ns, "web", nil, nil)
	if err := n.kubelet.Publish(ctx, v); err != nil {
		t.Fatalf("publish: %v", err)
	}
	first := svid(t, v, id(ns))

	repCtx, stopRepublish := context.WithCancel(ctx)
	waitRepublish := n.kubelet.Republish(repCtx, v, 2*time.Second, nil)
	defer func() { stopRepublish(); waitRepublish() }()

	// A request the killed run leaves pending (its key dies with the process):
	// the restarted driver must delete it rather than let it wait for its pod.
	orphan := leftoverRequest(t, ctx, n, ns)
	time.Sleep(5 * time.Second)
	n.driver.Stop(syscall.SIGKILL, 5*time.Second)
	n.startDriver()
	n.waitReady()
	if !isMountPoint(t, v.TargetPath) {
		t.Fatal("volume unmounted by the restart")
	}
	if _, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Get(ctx, orphan, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the previous run's pending request %s is still there once the driver is ready: %v", orphan, err)
	}

	deadline := first.NotAfter.Add(-10 * time.Second)
	for {
		cur := svid(t, v, id(ns))
		if !bytes.Equal(cur.Raw, first.Raw) {
			if cur.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
				t.Fatal("renewal reused the old key")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renewed before expiry (%s)\n%s", first.NotAfter, n.driver.Tail(8192))
		}
		time.Sleep(500 * time.Millisecond)
	}
	waitNoRequests(t, ns)
	stopRepublish()
	waitRepublish()
	if err := n.kubelet.DeletePod(ctx, v); err != nil {
		t.Fatal(err)
	}
}

type podResult struct {
	v   *testbed.PodVolume
	err error
}

// TestPodFSGroup: without the fs-group attribute, the pod's fsGroup reaches
// the driver as volume_mount_group (VOLUME_MOUNT_GROUP) and owns the files.
func TestPodFSGroup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, "fsgroup", nodeOpts{tokenInSecrets: true})
	ns := newTenant(t, "fsgroup")
	gid := int64(5555)
	v := n.pod(t, ns, "web", nil, &gid)
	req, err := n.kubelet.PublishRequest(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	if got := req.GetVolumeCapability().GetMount().GetVolumeMountGroup(); got != "5555" {
		t.Fatalf("kubelet sent volume_mount_group %q: the driver does not advertise VOLUME_MOUNT_GROUP", got)
	}
	if _, err := n.kubelet.Node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	svid(t, v, id(ns))
	for _, f := range []string{"tls.crt", "tls.key"} {
		st, err := os.Stat(filepath.Join(v.TargetPath, f))
		if err != nil {
			t.Fatal(err)
		}
		if g := st.Sys().(*syscall.Stat_t).Gid; int64(g) != gid || st.Mode().Perm() != 0o440 {
			t.Errorf("%s: group %d mode %v, want %d and 0440", f, g, st.Mode().Perm(), gid)
		}
	}
	if err := n.kubelet.DeletePod(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// leftoverRequest creates, as the driver would have, a request on n's node
// that nobody will resume, and returns its name.
func leftoverRequest(t *testing.T, ctx context.Context, n *node, ns string) string {
	t.Helper()
	_, csr, err := testbed.NewCSR([]string{id(ns)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cr, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Create(ctx, &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "leftover-", Namespace: ns, Labels: map[string]string{
			spiffe.DriverLabel: n.driverName, spiffe.NodeLabel: spiffe.NodeLabelValue(n.name),
		}},
		Spec: cmapi.CertificateRequestSpec{
			Request:   csr,
			Usages:    spiffe.Usages,
			IssuerRef: cmmeta.IssuerReference{Name: testbed.ClusterIssuerName, Kind: "ClusterIssuer", Group: "cert-manager.io"},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cr.Name
}
