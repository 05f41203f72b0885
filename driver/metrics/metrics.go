// Package metrics defines the driver's Prometheus metrics on a registry of
// its own and serves them.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "svid_csi_driver"

// Metrics are the driver's metrics. A nil *Metrics records nothing.
type Metrics struct {
	Registry *prometheus.Registry

	issuanceDuration *prometheus.HistogramVec
	issuances        *prometheus.CounterVec
	failures         *prometheus.CounterVec
	renewals         *prometheus.CounterVec
	volumes          prometheus.Gauge
}

// New registers the metrics; earliestExpiry reports the earliest NotAfter of
// all managed certificates (zero when there is none).
func New(earliestExpiry func() time.Time) *Metrics {
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
			Help: "Failed issuances, by trigger and reason (denied, failed, no_issuer, timeout, api, local).",
		}, []string{"trigger", "reason"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "renewals_total",
			Help: "Renewal attempts, by result (success, failure).",
		}, []string{"result"}),
		volumes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "managed_volumes",
			Help: "Volumes currently published and managed by this driver.",
		}),
	}
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "earliest_expiry_seconds",
		Help: "Seconds until the earliest certificate of any managed volume expires (0 with no volume; negative when expired).",
	}, func() float64 {
		t := earliestExpiry()
		if t.IsZero() {
			return 0
		}
		return time.Until(t).Seconds()
	})
	reg.MustRegister(m.issuanceDuration, m.issuances, m.failures, m.renewals, m.volumes, expiry,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
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
func (m *Metrics) Failed(trigger, reason string, d time.Duration) {
	if m == nil {
		return
	}
	m.issuanceDuration.WithLabelValues(trigger).Observe(d.Seconds())
	m.failures.WithLabelValues(trigger, reason).Inc()
}

// Renewed records a renewal attempt.
func (m *Metrics) Renewed(ok bool) {
	if m == nil {
		return
	}
	result := "success"
	if !ok {
		result = "failure"
	}
	m.renewals.WithLabelValues(result).Inc()
}

// SetVolumes sets the number of managed volumes.
func (m *Metrics) SetVolumes(n int) {
	if m == nil {
		return
	}
	m.volumes.Set(float64(n))
}
