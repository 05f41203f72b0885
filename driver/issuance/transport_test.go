package issuance

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

func clientCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

func TestPodRequestsCarryThePodTokenOnly(t *testing.T) {
	type seen struct {
		auth  string
		certs int
	}
	var mu sync.Mutex
	var got []seen
	conns := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, seen{r.Header.Get("Authorization"), len(r.TLS.PeerCertificates)})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.StartTLS()
	defer srv.Close()

	certPEM, keyPEM := clientCert(t)
	driver := &rest.Config{
		Host:        srv.URL,
		BearerToken: "driver-token",
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}),
			CertData: certPEM, KeyData: keyPEM,
		},
	}
	hc, err := rest.HTTPClientFor(PodConfig(driver))
	if err != nil {
		t.Fatal(err)
	}
	get := func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/apis", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		return resp.Body.Close()
	}
	for _, tok := range []string{"pod-a", "pod-b", "pod-c"} {
		if err := get(withToken(context.Background(), tok)); err != nil {
			t.Fatal(err)
		}
	}
	if err := get(context.Background()); err == nil {
		t.Fatal("a pod request without a token was sent")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("server saw %d requests, want 3", len(got))
	}
	for i, want := range []string{"Bearer pod-a", "Bearer pod-b", "Bearer pod-c"} {
		if got[i].auth != want || got[i].certs != 0 {
			t.Errorf("request %d: Authorization %q, client certs %d; want %q and none", i, got[i].auth, got[i].certs, want)
		}
	}
	if conns != 1 {
		t.Errorf("%d connections for 3 pods, want 1 shared", conns)
	}
	// The driver's own config is untouched.
	if driver.BearerToken != "driver-token" || len(driver.CertData) == 0 {
		t.Error("PodConfig modified the driver's config")
	}
}
