package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.ObserveQueue(func() int { return 3 })
	m.Decision(ResultDenied, "duration", 2*time.Second)
	m.Decision(ResultApproved, "", 100*time.Millisecond)
	m.SetLeader(true)

	want := `
# HELP svid_csi_approver_decisions_total Decisions written on CertificateRequests, by result and by the check that denied (none for an approval).
# TYPE svid_csi_approver_decisions_total counter
svid_csi_approver_decisions_total{check="duration",result="denied"} 1
svid_csi_approver_decisions_total{check="none",result="approved"} 1
# HELP svid_csi_approver_queue_depth CertificateRequests waiting in the work queue.
# TYPE svid_csi_approver_queue_depth gauge
svid_csi_approver_queue_depth 3
# HELP svid_csi_approver_leader 1 while this replica holds the leader lease and runs workers, else 0.
# TYPE svid_csi_approver_leader gauge
svid_csi_approver_leader 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"svid_csi_approver_decisions_total", "svid_csi_approver_queue_depth", "svid_csi_approver_leader"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "svid_csi_approver_decision_latency_seconds"); err != nil || n != 1 {
		t.Fatalf("latency histogram series = %d, %v; want 1", n, err)
	}
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.ObserveQueue(func() int { return 3 })
	m.Decision(ResultApproved, "", time.Second)
	m.SetLeader(true)
}

// One series for the active issuer's signer: a new signer replaces the old,
// no answer removes it.
func TestSignerApprovable(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.SignerApprovable("clusterissuers.cert-manager.io/a", true, true)
	m.SignerApprovable("clusterissuers.cert-manager.io/b", false, true)
	if n := testutil.CollectAndCount(m.signer); n != 1 {
		t.Fatalf("%d series, want 1 (the active signer's)", n)
	}
	if v := testutil.ToFloat64(m.signer.WithLabelValues("clusterissuers.cert-manager.io/b")); v != 0 {
		t.Fatalf("b = %v, want 0", v)
	}
	m.SignerApprovable("", false, false)
	if n := testutil.CollectAndCount(m.signer); n != 0 {
		t.Fatalf("%d series after no answer, want 0", n)
	}
}
