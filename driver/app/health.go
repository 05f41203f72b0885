package app

import (
	"context"
	"net/http"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// probeTimeout bounds one Probe call on the driver's own socket.
const probeTimeout = 3 * time.Second

// healthHandler serves the driver's probes, each through a Probe call on its
// own CSI socket, as the kubelet would make it:
//
//   - /healthz (liveness and startup): the socket answers. It never waits for
//     the API server, so a driver started while the API server is slow or
//     away keeps serving unpublishes and its recovered volumes instead of
//     being restarted in a loop.
//   - /readyz (readiness): the driver can publish (its caches are synced);
//     notReady says what it still waits for.
func healthHandler(client csipb.IdentityClient, notReady func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if _, err := probe(r.Context(), client); err != nil {
			http.Error(w, "CSI Probe failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready, err := probe(r.Context(), client)
		switch {
		case err != nil:
			http.Error(w, "CSI Probe failed: "+err.Error(), http.StatusServiceUnavailable)
		case !ready:
			msg := "CSI driver not ready"
			if err := notReady(); err != nil {
				msg = err.Error()
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ok\n"))
		}
	})
	return mux
}

func probe(ctx context.Context, client csipb.IdentityClient) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	resp, err := client.Probe(ctx, &csipb.ProbeRequest{})
	if err != nil {
		return false, err
	}
	return resp.GetReady().GetValue(), nil
}
