//go:build integration

package driver

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svid-csi/svid-csi/internal/testbed"
)

// TestDriverKilledWith100ShortVolumes: 100 volumes with 1-minute
// certificates (node-bound, as the base ships it: renewals need no pod
// token); the driver is killed (-9) and started again well before their
// renewals fall due. Every volume is recovered and renewed (new serial, new
// key) before its certificate expires, with exactly one request per publish
// and per renewal; once the pods go, no mount, no state and no request is
// left. It reports the time to recover and the renewals' margin.
func TestDriverKilledWith100ShortVolumes(t *testing.T) {
	const pods = 100
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := startNode(t, "kill100", nodeOpts{nodeBound: true, duration: time.Minute})
	ns := newTenant(t, "kill100")
	vols := make([]*testbed.PodVolume, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i := range vols {
		vols[i] = n.pod(t, ns, "p"+strconv.Itoa(i), nil, nil)
		wg.Go(func() { errs[i] = n.kubelet.Publish(ctx, vols[i]) })
	}
	wg.Wait()
	firsts := make([]*x509.Certificate, pods)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pod %d: %v\n%s", i, err, n.driver.Tail(4096))
		}
		firsts[i] = svid(t, vols[i], id(ns))
	}
	earliestExpiry := slices.MinFunc(firsts, func(a, b *x509.Certificate) int { return a.NotAfter.Compare(b.NotAfter) }).NotAfter

	// Before any renewal falls due (at 2/3 of the lifetime, jittered by at
	// most a tenth of it), or the restart would not be what they go through.
	earliestRenewal := slices.MinFunc(firsts, func(a, b *x509.Certificate) int { return a.NotBefore.Compare(b.NotBefore) }).NotBefore.Add(time.Minute / 2)
	if time.Now().After(earliestRenewal) {
		t.Fatalf("the publishes took until %s, past the earliest renewal (%s)", time.Now().Format(time.TimeOnly), earliestRenewal.Format(time.TimeOnly))
	}
	logFrom := n.logSize()
	n.driver.Stop(syscall.SIGKILL, 5*time.Second)
	killed := time.Now()
	n.startDriver()
	n.waitReady()
	recovered := time.Since(killed)
	for _, v := range vols {
		if !isMountPoint(t, v.TargetPath) {
			t.Fatalf("%s unmounted by the kill", v.TargetPath)
		}
	}
	if got := strings.Count(n.logSince(logFrom), `"Recovered volume"`); got != pods {
		t.Fatalf("%d volumes recovered, want %d", got, pods)
	}

	// Every renewal before its certificate expires: the margin is how long
	// before expiry the last one landed.
	for i, v := range vols {
		waitRenewed(t, n, v, firsts[i], firsts[i].NotAfter)
	}
	margin := time.Until(earliestExpiry)
	waitNoRequests(t, ns)
	if got := len(creators(t, ns)); got != 2*pods {
		t.Errorf("%d requests created, want exactly %d (one per publish, one per renewal)", got, 2*pods)
	}
	t.Logf("kill -9 with %d volumes: ready again %s after the kill, all %d recovered; all renewed with at least %s to spare before the earliest expiry",
		pods, recovered.Round(time.Millisecond), pods, margin.Round(time.Second))

	for _, v := range vols {
		if err := n.kubelet.DeletePod(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if m := mountsUnder(t, n.kubeletDir); len(m) != 0 {
		t.Errorf("%d mounts left under the kubelet's directory: %v", len(m), m)
	}
	if left, _ := filepath.Glob(filepath.Join(n.dataRoot, "volumes", "*")); len(left) != 0 {
		t.Errorf("%d state files left: %v", len(left), left)
	}
}

// logSince is the driver's log after offset.
func (n *node) logSince(offset int64) string {
	n.t.Helper()
	data, err := os.ReadFile(n.driver.LogFile)
	if err != nil {
		n.t.Fatal(err)
	}
	return string(data[min(offset, int64(len(data))):])
}

// mountsUnder lists the mount points under dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	for _, mp := range mountPoints(t) {
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}
