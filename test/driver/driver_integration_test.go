//go:build integration

package driver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
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
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/svid-csi/svid-csi/driver/volume"
	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// TestPodLifecycle: a pod gets its SVID through the real kubelet protocol;
// the request was made as the pod's ServiceAccount and is gone once the
// files are written; republish is free; unpublish leaves nothing behind.
func TestPodLifecycle(t *testing.T) {
	for _, c := range []struct {
		name string
		opts nodeOpts
	}{
		{"life-sec", nodeOpts{tokenInSecrets: true}},
		{"life-ctx", nodeOpts{}},
		// The driver's kubeconfig holds a client certificate (the bed's admin,
		// so the audit count below does not see the driver's own calls): the
		// API server authenticates a client certificate before any bearer
		// token, so the request is made as the pod only if the driver sends
		// none of its own credentials with the pod's token.
		{"life-cert", nodeOpts{kubeconfig: bed.AdminKubeconfig}},
	} {
		name := c.name
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			n := startNode(t, name, c.opts)
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
			// Deleted in the background once the publish answered.
			waitNoRequests(t, ns)
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
			republishIsFree(t, ctx, n, v, ns, cert, 3, "republish of a healthy volume")

			assertState(t, n, v.VolumeID)
			unpublishAndCheck(t, ctx, n, v)
			waitNoRequests(t, ns)
			// Unpublish is idempotent, also for ids it never knew.
			if err := n.kubelet.Unpublish(ctx, v); err != nil {
				t.Fatalf("second unpublish: %v", err)
			}
		})
	}
}

// unpublishAndCheck unpublishes v as the kubelet does and checks, before the
// kubelet removes the volume's directory, that the driver left no mount, no
// target and no state of it; then the pod goes.
func unpublishAndCheck(t *testing.T, ctx context.Context, n *node, v *testbed.PodVolume) {
	t.Helper()
	if _, err := n.kubelet.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeID, TargetPath: v.TargetPath}); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(v.TargetPath)); err != nil {
		t.Fatalf("the volume's directory, the kubelet's to remove, is gone: %v", err)
	}
	if isMountPoint(t, v.TargetPath) {
		t.Fatal("still mounted after unpublish")
	}
	if _, err := os.Lstat(v.TargetPath); !os.IsNotExist(err) {
		t.Fatalf("target still there after unpublish: %v", err)
	}
	assertNoState(t, n, v.VolumeID)
	if err := n.kubelet.DeletePod(ctx, v); err != nil { // its unpublish is idempotent
		t.Fatal(err)
	}
}

// stateFile is where the driver keeps the volume's state.
func (n *node) stateFile(t *testing.T, volumeID string) string {
	t.Helper()
	store, err := volume.NewStore(n.dataRoot)
	if err != nil {
		t.Fatal(err)
	}
	return store.StateFile(volumeID)
}

// assertNoState checks that the volume's state file is gone.
func assertNoState(t *testing.T, n *node, volumeID string) {
	t.Helper()
	if _, err := os.Lstat(n.stateFile(t, volumeID)); !os.IsNotExist(err) {
		t.Errorf("state left behind for volume %s: %v", volumeID, err)
	}
}

// assertState checks that the volume's state file is there: the positive
// control of assertNoState.
func assertState(t *testing.T, n *node, volumeID string) {
	t.Helper()
	if _, err := os.Stat(n.stateFile(t, volumeID)); err != nil {
		t.Errorf("no state for the published volume %s: %v", volumeID, err)
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
// killed (-9) mid-life and started again; it finds the volume again in its
// state and republishes make no request; the kubelet keeps republishing; the
// certificate is renewed (new serial, new key) before it expires, as the pod,
// and old requests are deleted; unpublish of the recovered volume leaves
// nothing behind.
func TestRenewalSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n := startNode(t, "renew", nodeOpts{duration: 2 * time.Minute})
	ns := newTenant(t, "renew")
	v, first, stopRepublish := n.republishedPod(t, ctx, ns, 2*time.Second)

	// A request the killed run leaves pending (its key dies with the process):
	// the restarted driver must delete it rather than let it wait for its pod.
	orphan := leftoverRequest(t, ctx, n, ns)
	time.Sleep(5 * time.Second)
	logFrom := n.logSize()
	n.driver.Stop(syscall.SIGKILL, 5*time.Second)
	n.startDriver()
	n.waitReady()
	if !isMountPoint(t, v.TargetPath) {
		t.Fatal("volume unmounted by the restart")
	}
	if _, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).Get(ctx, orphan, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the previous run's pending request %s is still there once the driver is ready: %v", orphan, err)
	}

	// The new run found the volume again in its state: republishes of it,
	// long before its renewal is due, make no API call.
	n.waitLogLine(logFrom, "Recovered volume", v.VolumeID)
	republishIsFree(t, ctx, n, v, ns, first, 1, "republish after the restart")

	waitRenewed(t, n, v, first, first.NotAfter.Add(-10*time.Second))
	waitNoRequests(t, ns)
	waitCreatedAsPod(t, ns, 2) // the publish's and the renewal's
	stopRepublish()
	unpublishAndCheck(t, ctx, n, v)
}

// TestShortCertificatesRenew: 30 s certificates, republished every second,
// are renewed before they expire: a new serial and key, the request made
// as the pod with its fresh token, and deleted after.
func TestShortCertificatesRenew(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, "short", nodeOpts{duration: 30 * time.Second})
	ns := newTenant(t, "short")
	v, first, stopRepublish := n.republishedPod(t, ctx, ns, time.Second)
	if life := first.NotAfter.Sub(first.NotBefore); life > time.Minute {
		t.Fatalf("certificate valid for %s, want about 30 s", life)
	}
	renewed := waitRenewed(t, n, v, first, first.NotAfter)
	t.Logf("renewed %s after issuance: NotAfter %s -> %s", renewed.NotBefore.Sub(first.NotBefore).Round(time.Second), first.NotAfter, renewed.NotAfter)
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate expires %s, not after the old one (%s)", renewed.NotAfter, first.NotAfter)
	}
	waitNoRequests(t, ns)
	waitCreatedAsPod(t, ns, 2) // the publish's and the renewal's
	stopRepublish()
	if err := n.kubelet.DeletePod(ctx, v); err != nil {
		t.Fatal(err)
	}
}

// republishedPod publishes a pod "web" in ns, reads its SVID, and
// republishes it every interval as the kubelet does, until stop (called at
// the end of the test at the latest).
func (n *node) republishedPod(t *testing.T, ctx context.Context, ns string, every time.Duration) (*testbed.PodVolume, *x509.Certificate, func()) {
	t.Helper()
	v := n.pod(t, ns, "web", nil, nil)
	if err := n.kubelet.Publish(ctx, v); err != nil {
		t.Fatalf("publish: %v", err)
	}
	first := svid(t, v, id(ns))
	repCtx, cancel := context.WithCancel(ctx)
	wait := n.kubelet.Republish(repCtx, v, every, nil)
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wait() }) }
	t.Cleanup(stop)
	return v, first, stop
}

// waitRenewed waits, until deadline, for v's certificate to be replaced by a
// renewal: a new serial and a new key. It returns the new certificate.
func waitRenewed(t *testing.T, n *node, v *testbed.PodVolume, first *x509.Certificate, deadline time.Time) *x509.Certificate {
	t.Helper()
	ns := v.Pod.Namespace
	for {
		cur := svid(t, v, id(ns))
		if !bytes.Equal(cur.Raw, first.Raw) {
			if cur.SerialNumber.Cmp(first.SerialNumber) == 0 {
				t.Fatalf("renewed certificate has the old serial %s", first.SerialNumber)
			}
			if cur.PublicKey.(*ecdsa.PublicKey).Equal(first.PublicKey) {
				t.Fatal("renewal reused the old key")
			}
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renewed before %s (certificate valid until %s)\n%s", deadline, first.NotAfter, n.driver.Tail(8192))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitCreatedAsPod waits until the API server has seen at least want
// requests created in ns, the test's own left out, and checks that each was
// made as the pod's ServiceAccount.
func waitCreatedAsPod(t *testing.T, ns string, want int) {
	t.Helper()
	var got []string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		got = creators(t, ns)
		return len(got) >= want, nil
	})
	if err != nil {
		t.Fatalf("%d CertificateRequests created in %s (by %q), want at least %d", len(got), ns, got, want)
	}
	for _, u := range got {
		if u != spiffe.ServiceAccountUsername(ns, "app") {
			t.Errorf("a CertificateRequest was created by %q, want the pod's ServiceAccount", u)
		}
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

// republishIsFree republishes v times times and checks that it keeps cert
// and makes no API request on CertificateRequests (the audit log is given a
// second before and after to catch up).
func republishIsFree(t *testing.T, ctx context.Context, n *node, v *testbed.PodVolume, ns string, cert *x509.Certificate, times int, what string) {
	t.Helper()
	time.Sleep(time.Second)
	before := auditCount(t, ns)
	for range times {
		if err := n.kubelet.Publish(ctx, v); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if cur := svid(t, v, id(ns)); !bytes.Equal(cur.Raw, cert.Raw) {
		t.Fatalf("%s rewrote the certificate", what)
	}
	time.Sleep(time.Second)
	if after := auditCount(t, ns); after != before {
		t.Fatalf("%s made %d API requests on CertificateRequests, want 0", what, after-before)
	}
}

// TestNodeBound: in node-bound mode the driver creates each request with its
// own pod-bound token, for a workload whose ServiceAccount has no RBAC at
// all; the request names the pod, and the approver, which accepts only
// node-bound requests, approves it because the pod runs on the driver's node.
// A pod scheduled to another node gets nothing from this node's driver.
func TestNodeBound(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := startNode(t, "nb", nodeOpts{nodeBound: true})
	ns, err := bed.CreateNamespace(ctx, "nb")
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.CreateServiceAccount(ctx, ns, "app"); err != nil { // no RBAC
		t.Fatal(err)
	}
	before := len(creators(t, ns))
	v := n.pod(t, ns, "web", nil, nil)
	if err := n.kubelet.Publish(ctx, v); err != nil {
		t.Fatalf("NodePublishVolume: %v\n%s", err, n.driver.Tail(4096))
	}
	svid(t, v, id(ns))
	if got := creators(t, ns)[before:]; len(got) != 1 || got[0] != "system:serviceaccount:"+testbed.CertManagerNamespace+":svid-csi-driver" {
		t.Errorf("requests created by %v, want one by the driver's ServiceAccount", got)
	}
	waitNoRequests(t, ns)

	// A pod of another node, published through this node's driver (as a
	// compromised kubelet or driver could ask for it): denied, nothing left.
	other, err := bed.NewKubelet(ctx, "nb-other", n.kubeletDir, n.driverName, n.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ov, err := other.CreatePod(ctx, testbed.PodSpec{Namespace: ns, Name: "elsewhere", ServiceAccount: "app", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	err = other.Publish(ctx, ov)
	if want := `pod ` + ns + `/elsewhere spec.nodeName: exp="nb" got="nb-other"`; status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), want) {
		t.Fatalf("publish of another node's pod = %v, want FailedPrecondition naming %s", err, want)
	}
	if isMountPoint(t, ov.TargetPath) {
		t.Error("a denied publish left a mount")
	}
	assertNoState(t, n, ov.VolumeID)
	waitNoRequests(t, ns)

	if err := n.kubelet.DeletePod(ctx, v); err != nil {
		t.Fatal(err)
	}
}
