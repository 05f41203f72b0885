// Package metrics holds the approver's Prometheus metrics, on a registry of
// their own.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Results of a decision, the values of the "result" label.
const (
	ResultApproved = "approved"
	ResultDenied   = "denied"
)

// CheckNone is the "check" label of an approval.
const CheckNone = "none"

// Metrics are the approver's metrics. A nil *Metrics records nothing.
type Metrics struct {
	reg       prometheus.Registerer
	decisions *prometheus.CounterVec
	refused   *prometheus.CounterVec
	latency   prometheus.Histogram
	leader    prometheus.Gauge
	signer    *prometheus.GaugeVec
}

// New registers the approver's decision and leader metrics, plus the Go and
// process collectors, on reg. The queue depth is registered by ObserveQueue
// once the controller exists.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "svid_csi_approver_decisions_refused_total",
			Help: "Decisions cert-manager refused to let the approver write (its webhook or RBAC: no approve permission on the issuer's signer, or an issuer that does not exist), by result; each is final for its request.",
		}, []string{"result"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "svid_csi_approver_decisions_total",
			Help: "Decisions written on CertificateRequests, by result and by the check that denied (none for an approval).",
		}, []string{"result", "check"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "svid_csi_approver_decision_latency_seconds",
			Help:    "Time from when this replica first saw a CertificateRequest (its watch event; its list, for one made before the replica started) to its decision being written.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14), // 5ms .. ~41s
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "svid_csi_approver_leader",
			Help: "1 while this replica holds the leader lease and runs workers, else 0.",
		}),
		signer: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "svid_csi_approver_signer_approvable",
			Help: "1 when RBAC lets the approver approve the active issuer's signer (as cert-manager's webhook asks), 0 when cert-manager would refuse every decision; absent until checked, and for a namespaced issuer kind.",
		}, []string{"signer"}),
	}
	reg.MustRegister(m.decisions, m.refused, m.latency, m.leader, m.signer,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.decisions.WithLabelValues(ResultApproved, CheckNone) // a zero to rate() against
	return m
}

// ObserveQueue registers the queue depth, read from depth at scrape time.
// Call it once.
func (m *Metrics) ObserveQueue(depth func() int) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "svid_csi_approver_queue_depth",
		Help: "CertificateRequests waiting in the work queue.",
	}, func() float64 { return float64(depth()) }))
}

// Refused records a decision that cert-manager refused to let be written.
func (m *Metrics) Refused(result string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(result).Inc()
}

// Decision records one decision and its latency since the request was
// first seen; a negative latency is not observed.
func (m *Metrics) Decision(result, check string, sinceSeen time.Duration) {
	if m == nil {
		return
	}
	if check == "" {
		check = CheckNone
	}
	m.decisions.WithLabelValues(result, check).Inc()
	if sinceSeen >= 0 {
		m.latency.Observe(sinceSeen.Seconds())
	}
}

// SetLeader records whether this replica is leading.
func (m *Metrics) SetLeader(leading bool) {
	if m == nil {
		return
	}
	v := 0.0
	if leading {
		v = 1
	}
	m.leader.Set(v)
}

// SignerApprovable records whether the active issuer's signer may be
// approved; with known false (no answer) the series is dropped.
func (m *Metrics) SignerApprovable(signer string, allowed, known bool) {
	if m == nil {
		return
	}
	m.signer.Reset() // one series: the active issuer's
	if !known {
		return
	}
	v := 0.0
	if allowed {
		v = 1
	}
	m.signer.WithLabelValues(signer).Set(v)
}

// DecisionsCounter returns the decisions counter for one result and check, for tests.
func (m *Metrics) DecisionsCounter(result, check string) prometheus.Counter {
	return m.decisions.WithLabelValues(result, check)
}

// RefusedCounter exposes one refused-decisions series, for tests.
func (m *Metrics) RefusedCounter(result string) prometheus.Counter {
	return m.refused.WithLabelValues(result)
}
