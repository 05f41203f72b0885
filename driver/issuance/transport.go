package issuance

import (
	"context"
	"errors"
	"net/http"

	"k8s.io/client-go/rest"
)

type tokenKey struct{}

// withToken returns a context whose API requests, sent through a client built
// from PodConfig, authenticate with the given pod token.
func withToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, tokenKey{}, token)
}

// PodConfig derives, from the driver's own config, the config of the client
// that acts as pods: same server, CA and limits, but no client certificate,
// bearer token or other credential of the driver (the API server would
// authenticate a client certificate before any bearer token), and a bearer
// token taken per request from the request's context. One client built from it
// serves every pod over one connection pool: no TLS handshake per pod.
func PodConfig(driver *rest.Config) *rest.Config {
	cfg := rest.AnonymousClientConfig(driver)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &bearerRoundTripper{next: rt} })
	return cfg
}

// errNoToken refuses to send a pod request without a token.
var errNoToken = errors.New("no pod token in the request context: refusing to send the request anonymously")

type bearerRoundTripper struct {
	next http.RoundTripper
}

func (b *bearerRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	token, _ := req.Context().Value(tokenKey{}).(string)
	if token == "" {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, errNoToken
	}
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+token)
	return b.next.RoundTrip(r)
}

// WrappedRoundTripper lets client-go's debugging wrappers see through.
func (b *bearerRoundTripper) WrappedRoundTripper() http.RoundTripper { return b.next }
