// Package metrics defines the driver's Prometheus metrics on a registry of
// its own and serves them.
package metrics

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/svid-csi/svid-csi/driver/failure"
)

const namespace = "svid_csi_driver"

// Metrics are the driver's metrics. A nil *Metrics records nothing.
type Metrics struct {
	Registry *prometheus.Registry

	issuanceDuration *prometheus.HistogramVec
	issuances        *prometheus.CounterVec
	failures         *prometheus.CounterVec
	renewals         *prometheus.CounterVec
	caReloads        *prometheus.CounterVec
	caWrites         *prometheus.CounterVec
}

// New registers the metrics of issuance and renewal; ObserveVolumes adds
// those of the volumes once their owner exists.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		issuanceDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "issuance_duration_seconds",
			Help:    "Time from key generation to a signed certificate (or failure), by trigger (publish, renew).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120},
		}, []string{"trigger"}),
		issuances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "issuances_total",
			Help: "Certificates issued and written into volumes, by trigger (publish, renew).",
		}, []string{"trigger"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "issuance_failures_total",
			Help: "Failed issuances, by trigger and reason (" + strings.Join(reasons(), ", ") + ").",
		}, []string{"trigger", "reason"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "renewals_total",
			Help: "Renewal attempts, by result (success, failure).",
		}, []string{"result"}),
		caReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ca_bundle_reloads_total",
			Help: "Changes of the --source-ca-bundle file, by result (applied; rejected: invalid, the last good bundle stays).",
		}, []string{"result"}),
		caWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ca_bundle_volume_writes_total",
			Help: "Rewrites of the CA bundle file in a volume after the bundle changed, by result (success, failure).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.issuanceDuration, m.issuances, m.failures, m.renewals, m.caReloads, m.caWrites,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func reasons() []string {
	var s []string
	for _, r := range failure.Issuance {
		s = append(s, string(r))
	}
	return s
}

// Volumes is what the volume gauges read at scrape time.
type Volumes interface {
	// Len is the number of volumes managed.
	Len() int
	// EarliestExpiry is the earliest NotAfter of all volumes (zero with none).
	EarliestExpiry() time.Time
}

// ObserveVolumes registers the gauges read from the volumes' owner. Call it
// once.
func (m *Metrics) ObserveVolumes(v Volumes) {
	if m == nil {
		return
	}
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "managed_volumes",
			Help: "Volumes currently published and managed by this driver.",
		}, func() float64 { return float64(v.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "earliest_expiry_seconds",
			Help: "Seconds until the earliest certificate of any managed volume expires (0 with no volume; negative when expired).",
		}, func() float64 {
			t := v.EarliestExpiry()
			if t.IsZero() {
				return 0
			}
			return time.Until(t).Seconds()
		}),
	)
}

// Deletions is what the deletion gauge reads at scrape time.
type Deletions interface {
	// Pending is the number of requests queued for deletion or being retried.
	Pending() int
}

// ObserveDeletions registers the gauge of requests waiting to be deleted.
// Call it once.
func (m *Metrics) ObserveDeletions(d Deletions) {
	if m == nil {
		return
	}
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "request_deletions_pending",
		Help: "CertificateRequests of no more use that are queued for deletion or being retried after a failed delete.",
	}, func() float64 { return float64(d.Pending()) }))
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Issued records a successful issuance.
func (m *Metrics) Issued(trigger string, d time.Duration) {
	if m == nil {
		return
	}
	m.issuanceDuration.WithLabelValues(trigger).Observe(d.Seconds())
	m.issuances.WithLabelValues(trigger).Inc()
}

// Failed records a failed issuance.
func (m *Metrics) Failed(trigger string, reason failure.Reason, d time.Duration) {
	if m == nil {
		return
	}
	m.issuanceDuration.WithLabelValues(trigger).Observe(d.Seconds())
	m.failures.WithLabelValues(trigger, string(reason)).Inc()
}

// Renewed records a renewal attempt.
func (m *Metrics) Renewed(ok bool) {
	if m == nil {
		return
	}
	m.renewals.WithLabelValues(successOrFailure(ok)).Inc()
}

// CABundleReloaded records a change of the CA bundle file: applied, or
// rejected.
func (m *Metrics) CABundleReloaded(applied bool) {
	if m == nil {
		return
	}
	result := "applied"
	if !applied {
		result = "rejected"
	}
	m.caReloads.WithLabelValues(result).Inc()
}

// CABundleWritten records the rewrite of the CA bundle in one volume.
func (m *Metrics) CABundleWritten(ok bool) {
	if m == nil {
		return
	}
	m.caWrites.WithLabelValues(successOrFailure(ok)).Inc()
}

func successOrFailure(ok bool) string {
	if ok {
		return "success"
	}
	return "failure"
}
