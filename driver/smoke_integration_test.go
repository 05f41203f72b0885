//go:build integration

package main_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svid-csi/svid-csi/internal/spiffe"
	"github.com/svid-csi/svid-csi/internal/testbed"
)

// TestSmoke runs the real driver binary against the test bed: publish (the
// request created as the pod, approved here in place of the approver, issued
// by cert-manager), republish, kill -9 and restart, republish, unpublish.
func TestSmoke(t *testing.T) { smoke(t, "1h", false) }

// TestSmokeRenewal: 30 s certificates, republished every second, are renewed
// with the pod's fresh token and a new key.
func TestSmokeRenewal(t *testing.T) { smoke(t, "30s", true) }

func smoke(t *testing.T, duration string, renewal bool) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for tmpfs mounts")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bed, err := testbed.Start(ctx, testbed.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bed.Stop()
	defer func() {
		if t.Failed() {
			bed.DumpLogs(os.Stderr)
		}
	}()
	tr, yes := true, true
	_, err = bed.Kube.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: spiffe.DefaultDriverName},
		Spec: storagev1.CSIDriverSpec{
			AttachRequired: new(bool), PodInfoOnMount: &tr, RequiresRepublish: &yes,
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral},
			TokenRequests:        []storagev1.TokenRequest{{Audience: ""}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bed.CreateNamespace(ctx, "smoke")
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.CreateServiceAccount(ctx, ns, "app"); err != nil {
		t.Fatal(err)
	}
	if err := bed.Grant(ctx, ns, "svid-create", ns, "app", []rbacv1.PolicyRule{{
		APIGroups: []string{"cert-manager.io"}, Resources: []string{"certificaterequests"}, Verbs: []string{"create"},
	}}); err != nil {
		t.Fatal(err)
	}

	// Stand-in approver: approve every request of the driver.
	usernames := make(chan string, 100)
	go func() {
		for ctx.Err() == nil {
			list, err := bed.CertManager.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{})
			if err == nil {
				for _, cr := range list.Items {
					if len(cr.Status.Conditions) > 0 {
						continue
					}
					usernames <- cr.Spec.Username
					cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionApproved,
						Status: cmmeta.ConditionTrue, Reason: "smoke", Message: "ok"}}
					_, _ = bed.CertManager.CertmanagerV1().CertificateRequests(ns).UpdateStatus(ctx, &cr, metav1.UpdateOptions{})
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	dir := t.TempDir()
	root, data := filepath.Join(dir, "kubelet"), filepath.Join(dir, "data")
	socket := filepath.Join(root, "plugins", spiffe.DefaultDriverName, "csi.sock")
	start := func() *testbed.Process {
		p, err := bed.StartProcess("driver", bed.Binary("svid-csi-driver"), "--node-id=node-1", "--kubeconfig="+bed.AdminKubeconfig,
			"--kubelet-root-dir="+root, "--data-root="+data, "--issuer-name="+bed.Issuer,
			"--metrics-address=", "--health-address=", "-v=4", "--certificate-request-duration="+duration)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	drv := start()
	for i := 0; ; i++ {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if i > 100 {
			t.Fatalf("no socket; driver log:\n%s", drv.Tail(8000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	k, err := bed.NewKubelet(ctx, "node-1", root, spiffe.DefaultDriverName, socket)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	gid := int64(2000)
	v, err := k.CreatePod(ctx, testbed.PodSpec{Namespace: ns, Name: "app-0", ServiceAccount: "app", ReadOnly: true, FSGroup: &gid})
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := publishRetry(ctx, k, v); err != nil {
		t.Fatalf("publish: %v\n%s", err, drv.Tail(8000))
	}
	t.Logf("first publish took %v", time.Since(begin))
	certPEM, err := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/app", ns)
	if len(cert.URIs) != 1 || cert.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want %s", cert.URIs, want)
	}
	fi, _ := os.Stat(filepath.Join(v.TargetPath, "tls.key"))
	if st := fi.Sys().(*syscall.Stat_t); st.Gid != 2000 || fi.Mode().Perm() != 0o440 {
		t.Errorf("key gid %d mode %v", st.Gid, fi.Mode().Perm())
	}
	// Created as the pod, although the driver's kubeconfig holds a client certificate.
	if u := <-usernames; u != spiffe.ServiceAccountUsername(ns, "app") {
		t.Errorf("request created by %q, want the pod's ServiceAccount", u)
	}
	list, _ := bed.CertManager.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{})
	if len(list.Items) != 0 {
		t.Errorf("%d CertificateRequests left after issuance", len(list.Items))
	}
	if err := k.Publish(ctx, v); err != nil {
		t.Fatalf("republish: %v", err)
	}
	if renewal {
		rctx, rcancel := context.WithCancel(ctx)
		wait := k.Republish(rctx, v, time.Second, nil)
		deadline := time.Now().Add(40 * time.Second)
		for {
			data, _ := os.ReadFile(filepath.Join(v.TargetPath, "tls.crt"))
			if b, _ := pem.Decode(data); b != nil {
				if c, err := x509.ParseCertificate(b.Bytes); err == nil && c.SerialNumber.Cmp(cert.SerialNumber) != 0 {
					t.Logf("renewed %v after issuance: NotAfter %v -> %v", time.Since(cert.NotBefore).Round(time.Second), cert.NotAfter, c.NotAfter)
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("not renewed; log:\n%s", drv.Tail(8000))
			}
			time.Sleep(200 * time.Millisecond)
		}
		rcancel()
		wait()
		if u := <-usernames; u != spiffe.ServiceAccountUsername(ns, "app") {
			t.Errorf("renewal request created by %q", u)
		}
	}

	// kill -9, restart: the volume is found again.
	drv.Stop(syscall.SIGKILL, time.Second)
	drv = start()
	for i := 0; !strings.Contains(drv.Tail(1<<20), "Recovered volume"); i++ {
		if i > 100 {
			t.Fatalf("volume not recovered; log:\n%s", drv.Tail(8000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := publishRetry(ctx, k, v); err != nil {
		t.Fatalf("republish after restart: %v", err)
	}
	list, _ = bed.CertManager.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{})
	if len(list.Items) != 0 {
		t.Errorf("republish after restart created %d requests", len(list.Items))
	}
	if err := k.Unpublish(ctx, v); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.TargetPath); !os.IsNotExist(err) {
		t.Errorf("target left: %v", err)
	}
	t.Logf("driver log tail:\n%s", drv.Tail(3000))
}

// publishRetry retries while the driver's socket comes up.
func publishRetry(ctx context.Context, k *testbed.Kubelet, v *testbed.PodVolume) error {
	var err error
	for range 50 {
		if err = k.Publish(ctx, v); err == nil || !strings.Contains(err.Error(), "Unavailable") {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}
