package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/svid-csi/svid-csi/driver/failure"
)

type volumes struct{ n int }

func (v volumes) Len() int                  { return v.n }
func (v volumes) EarliestExpiry() time.Time { return time.Now().Add(time.Hour) }

type deletions int

func (d deletions) Pending() int { return int(d) }

func TestMetrics(t *testing.T) {
	m := New()
	m.ObserveVolumes(volumes{n: 3})
	m.ObserveDeletions(deletions(2))
	m.Issued("publish", 200*time.Millisecond)
	m.Failed("renew", failure.Denied, time.Second)
	m.Renewed(true)
	var nilMetrics *Metrics
	nilMetrics.Issued("publish", time.Second) // a nil *Metrics records nothing

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`svid_csi_driver_issuance_duration_seconds_count{trigger="publish"} 1`,
		`svid_csi_driver_issuances_total{trigger="publish"} 1`,
		`svid_csi_driver_issuance_failures_total{reason="denied",trigger="renew"} 1`,
		`svid_csi_driver_renewals_total{result="success"} 1`,
		`svid_csi_driver_managed_volumes 3`,
		`svid_csi_driver_request_deletions_pending 2`,
		`svid_csi_driver_earliest_expiry_seconds 3599`,
		// The help lists every issuance reason, from the one declaration.
		`reason (no_issuer, invalid, forbidden, rejected, api, timeout, denied, failed, token, local)`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %s", want)
		}
	}
}
