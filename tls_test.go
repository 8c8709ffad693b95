package deskoauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// Mutual TLS to the token endpoint: a CA made by the test, a server
// certificate for 127.0.0.1 and a client certificate, both signed by it.
// File names end in .pem (caddytest rewrites paths ending in .key or .crt
// in the configs it loads).

// testPKI holds the test CA and the files written from it.
type testPKI struct {
	caPool     *x509.CertPool
	serverCert tls.Certificate

	caFile         string // the CA certificate
	clientCertFile string // the client certificate
	clientKeyFile  string // its key
	otherKeyFile   string // a key that matches no certificate
	notPEMFile     string // a file that holds no PEM
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	serial := int64(0)
	sign := func(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, []byte) {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyPEM := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	caKey := newKey()
	ca, caPEM := sign(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "desko_auth test CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil, &caKey.PublicKey, caKey)

	srvKey := newKey()
	_, srvPEM := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &srvKey.PublicKey, caKey)
	serverCert, err := tls.X509KeyPair(srvPEM, keyPEM(srvKey))
	if err != nil {
		t.Fatal(err)
	}

	cliKey := newKey()
	_, cliPEM := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "desko-mtls-client"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, &cliKey.PublicKey, caKey)

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{
		caPool:         pool,
		serverCert:     serverCert,
		caFile:         write("ca.pem", caPEM),
		clientCertFile: write("client.pem", cliPEM),
		clientKeyFile:  write("client-key.pem", keyPEM(cliKey)),
		otherKeyFile:   write("other-key.pem", keyPEM(newKey())),
		notPEMFile:     write("not-a-cert.pem", []byte("this is not a certificate\n")),
	}
}

// mtlsTokenServer is a token endpoint (Desko's JSON format) that requires a
// client certificate signed by the test CA.
type mtlsTokenServer struct {
	*httptest.Server
	mu      sync.Mutex
	issued  []string
	clients []string // the client certificate's CN, per token request
}

func newMTLSTokenServer(t *testing.T, pki *testPKI) *mtlsTokenServer {
	t.Helper()
	s := &mtlsTokenServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ClientID     string `json:"client_id"`
			ClientSecret string `json:"client_secret"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		if req.ClientID != testClientID || req.ClientSecret != testSecret {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		tok := fmt.Sprintf("mtls-tok-%d", len(s.issued)+1)
		s.issued = append(s.issued, tok)
		s.clients = append(s.clients, r.TLS.PeerCertificates[0].Subject.CommonName)
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, tok)
	}))
	s.TLS = &tls.Config{
		Certificates: []tls.Certificate{pki.serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.caPool,
		MinVersion:   tls.VersionTLS12,
	}
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	s.StartTLS()
	t.Cleanup(s.Close)
	if !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Fatalf("unexpected TLS server URL %s", s.URL)
	}
	return s
}

func (s *mtlsTokenServer) tokenURL() string { return s.URL + "/v1.1/oauth/token" }

func (s *mtlsTokenServer) snapshot() (issued, clients []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...), append([]string(nil), s.clients...)
}

// newTLSSource is a token source with the test credentials and client
// (nil: the source's own, with the system's roots), closed at the end of
// the test.
func newTLSSource(t *testing.T, tokenURL string, client *http.Client) *token.Source {
	t.Helper()
	src, err := token.New(token.Config{
		TokenURL:    tokenURL,
		Credentials: &token.Static{ClientID: testClientID, ClientSecret: testSecret},
		HTTPClient:  client,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// sourceGet asks src for a token, bounded by waitLimit.
func sourceGet(t *testing.T, src *token.Source) (*token.Token, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	return src.Get(ctx)
}

// sourceGetErr asks src for a token and returns the *token.Error it must
// fail with.
func sourceGetErr(t *testing.T, src *token.Source) *token.Error {
	t.Helper()
	tok, err := sourceGet(t, src)
	var te *token.Error
	if !errors.As(err, &te) {
		t.Fatalf("Get = %v, %v; want a *token.Error", tok, err)
	}
	return te
}

// Token source level: the client built from tls_ca and tls_client_cert
// gets a token; without the certificate, or without the CA, it does not.
func TestTLSEngineMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	srv := newMTLSTokenServer(t, pki)
	engine := func(t *testing.T, h *Handler) *token.Source {
		t.Helper()
		client, fp, err := h.tokenTransport()
		if err != nil {
			t.Fatalf("tokenTransport: %v", err)
		}
		if client == nil || fp == "" {
			t.Fatalf("tokenTransport returned transport %v, fingerprint %q: want a custom one", client, fp)
		}
		return newTLSSource(t, srv.tokenURL(), &http.Client{Transport: client})
	}

	t.Run("ca and client certificate", func(t *testing.T) {
		e := engine(t, &Handler{TLSCA: pki.caFile, TLSClientCert: []string{pki.clientCertFile, pki.clientKeyFile}})
		tok, err := sourceGet(t, e)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		issued, clients := srv.snapshot()
		if len(issued) == 0 || issued[len(issued)-1] != tok.Value || clients[len(clients)-1] != "desko-mtls-client" {
			t.Fatalf("token %q; server issued %q to %q", tok.Value, issued, clients)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		before, _ := srv.snapshot()
		e := engine(t, &Handler{TLSCA: pki.caFile})
		te := sourceGetErr(t, e)
		if te.Kind != token.KindTransient || te.Status != 0 {
			t.Errorf("error %v: kind %v status %d, want a transient transport error", te, te.Kind, te.Status)
		}
		if !strings.Contains(te.Error(), "certificate") {
			t.Errorf("error %q does not mention the certificate", te)
		}
		if after, _ := srv.snapshot(); len(after) != len(before) {
			t.Errorf("a token was issued without a client certificate")
		}
	})
	t.Run("system roots", func(t *testing.T) {
		e := engine(t, &Handler{TLSClientCert: []string{pki.clientCertFile, pki.clientKeyFile}})
		te := sourceGetErr(t, e)
		// A certificate that does not verify is a configuration problem of
		// its own (tls): retried slowly and answered 502, not refused
		// credentials.
		if te.Kind != token.KindTLS || !strings.Contains(te.Error(), "x509") {
			t.Errorf("error %v (kind %v), want a tls x509 error", te, te.Kind)
		}
	})
	t.Run("default client", func(t *testing.T) {
		e := newTLSSource(t, srv.tokenURL(), nil)
		if te := sourceGetErr(t, e); !strings.Contains(te.Error(), "x509") {
			t.Errorf("error %v, want an x509 error", te)
		}
	})
}

// tokenTransport's file errors name the subdirective; its fingerprint
// follows the files' contents.
func TestTLSTokenTransportFiles(t *testing.T) {
	pki := newTestPKI(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	keyPEM, err := os.ReadFile(pki.clientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		h    Handler
		want string
	}{
		{"missing ca", Handler{TLSCA: missing}, "tls_ca: open " + missing},
		{"ca is not PEM", Handler{TLSCA: pki.notPEMFile}, "tls_ca: " + pki.notPEMFile + " holds no PEM certificate"},
		{"ca is a key", Handler{TLSCA: pki.clientKeyFile}, "tls_ca: "},
		{"missing cert", Handler{TLSClientCert: []string{missing, pki.clientKeyFile}}, "tls_client_cert: open " + missing},
		{"missing key", Handler{TLSClientCert: []string{pki.clientCertFile, missing}}, "tls_client_cert: open " + missing},
		{"mismatched key", Handler{TLSClientCert: []string{pki.clientCertFile, pki.otherKeyFile}}, "tls_client_cert: "},
		{"cert and key swapped", Handler{TLSClientCert: []string{pki.clientKeyFile, pki.clientCertFile}}, "tls_client_cert: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, _, err := tc.h.tokenTransport()
			if err == nil || client != nil {
				t.Fatalf("tokenTransport = %v, %v; want an error", client, err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error %q, want it to start with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), string(keyPEM)) || strings.Contains(err.Error(), "PRIVATE KEY-----\n") {
				t.Errorf("error %q quotes key material", err)
			}
		})
	}

	// The count is Validate's to check; tokenTransport trusts it.
	t.Run("one file", func(t *testing.T) {
		h := Handler{ClientID: "id", ClientSecret: "{env.S}", TLSClientCert: []string{pki.clientCertFile}}
		if err := h.Validate(); err == nil || err.Error() != "tls_client_cert: needs a certificate file and a key file" {
			t.Errorf("Validate = %v", err)
		}
	})

	t.Run("fingerprint", func(t *testing.T) {
		if c, fp, err := (&Handler{}).tokenTransport(); c == nil || (c.TLSClientConfig != nil && (c.TLSClientConfig.RootCAs != nil || len(c.TLSClientConfig.Certificates) > 0)) || c.Proxy == nil || fp != "" || err != nil {
			t.Errorf("nothing customised: %v %q %v, want a default transport (system roots, proxy from the environment) and no fingerprint", c, fp, err)
		}
		h := Handler{TLSCA: pki.caFile, TLSClientCert: []string{pki.clientCertFile, pki.clientKeyFile}}
		_, fp1, err := h.tokenTransport()
		if err != nil {
			t.Fatal(err)
		}
		_, fp2, _ := h.tokenTransport()
		if fp1 == "" || fp1 != fp2 {
			t.Fatalf("fingerprints %q, %q: want equal and non-empty", fp1, fp2)
		}
		other := newTestPKI(t)
		h.TLSCA = other.caFile
		if _, fp3, _ := h.tokenTransport(); fp3 == fp1 {
			t.Errorf("a different CA file gave the same fingerprint")
		}
	})
}

// Through Caddy: one site, three desko_auth blocks on the same mTLS token
// endpoint — with CA and client certificate (works), without the client
// certificate, and without the CA (system roots).
func TestTLSE2EMutualTLSTokenEndpoint(t *testing.T) {
	pki := newTestPKI(t)
	tokenSrv := newMTLSTokenServer(t, pki)
	var mu sync.Mutex
	var upstreamSaw []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamSaw = append(upstreamSaw, r.Header.Get("Authorization"))
		mu.Unlock()
		issued, _ := tokenSrv.snapshot()
		for _, tok := range issued {
			if r.Header.Get("Authorization") == "Bearer "+tok {
				io.WriteString(w, "ok")
				return
			}
		}
		http.Error(w, "unknown token", http.StatusUnauthorized)
	}))
	t.Cleanup(upstream.Close)

	e := newE2E(t, time.Hour)
	block := func(path, tlsLines string) string {
		return fmt.Sprintf(`
	handle /%s/* {
		desko_auth {
			client_id     %s
			client_secret {env.DESKO_TEST_SECRET}
			token_url     %s
			warm_up       off
			%s
		}
		reverse_proxy %s
	}`, path, testClientID, tokenSrv.tokenURL(), tlsLines, upstream.Listener.Addr())
	}
	e.loadRaw(e.base + " {" +
		block("mtls", fmt.Sprintf("tls_ca %s\n\t\t\ttls_client_cert %s %s", pki.caFile, pki.clientCertFile, pki.clientKeyFile)) +
		block("nocert", "tls_ca "+pki.caFile) +
		block("noca", fmt.Sprintf("tls_client_cert %s %s", pki.clientCertFile, pki.clientKeyFile)) +
		"\n}")

	var bodies []string
	for i := range 3 {
		status, _, body := e.do("GET", fmt.Sprintf("/mtls/%d", i), "")
		if status != 200 || body != "ok" {
			t.Fatalf("mTLS request %d: status %d, body %s", i, status, body)
		}
		bodies = append(bodies, body)
	}
	issued, clients := tokenSrv.snapshot()
	if len(issued) != 1 || clients[0] != "desko-mtls-client" {
		t.Fatalf("token server issued %q to %q, want one token to the client certificate", issued, clients)
	}

	for _, tc := range []struct {
		path, want string
		status     int
	}{
		// The server refusing the handshake is only a TLS alert: transient.
		{"nocert", "certificate", http.StatusServiceUnavailable},
		// Our side failing to verify the server: a configuration problem.
		{"noca", "x509", http.StatusBadGateway},
	} {
		status, hdr, body := e.do("GET", "/"+tc.path+"/x", "")
		bodies = append(bodies, body)
		if status != tc.status {
			t.Errorf("%s: status %d, want %d; body %s", tc.path, status, tc.status, body)
		}
		if tc.status == http.StatusServiceUnavailable && hdr.Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After on a transient failure", tc.path)
		}
		d := decodeErr(t, body)
		if d.ID != "desko_auth" || !strings.Contains(e.detail(d), tc.want) {
			t.Errorf("%s: error %+v, want a logged detail mentioning %q", tc.path, d, tc.want)
		}
	}
	if after, _ := tokenSrv.snapshot(); len(after) != 1 {
		t.Errorf("tokens issued: %q, want only the mTLS one", after)
	}
	mu.Lock()
	if len(upstreamSaw) != 3 {
		t.Errorf("upstream got %d requests, want only the 3 mTLS ones: %q", len(upstreamSaw), upstreamSaw)
	}
	mu.Unlock()

	logs, err := os.ReadFile(e.logFile)
	if err != nil || len(logs) == 0 {
		t.Fatalf("Caddy's log: %v (%d bytes)", err, len(logs))
	}
	lc := scrubtest.NewCheck(testClientID, testSecret, issued[0])
	for i, h := range append(bodies, string(logs)) {
		lc.AssertNone(t, fmt.Sprintf("output %d", i+1), h)
	}
}

// assertLoadError loads a Caddyfile that must be refused, once per wanted
// substring of the error (caddytest.AssertLoadError panics on a config
// that loads: that is reported as a failure here).
func assertLoadError(t *testing.T, caddyfile string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("the config loaded; want an error containing %q", w)
				}
			}()
			caddytest.AssertLoadError(t, caddyfile, "caddyfile", w)
		}()
	}
}

// tlsSite is a minimal config with one desko_auth block.
func tlsSite(lines string) string {
	return fmt.Sprintf(`{
	skip_install_trust
	admin localhost:2999
	http_port `+httpPort+`
	https_port `+httpsPort+`
}
`+proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     https://127.0.0.1:1/v1.1/oauth/token
		warm_up       off
		%s
	}
	respond ok
}`, testClientID, lines)
}

func TestTLSE2EProvisionErrors(t *testing.T) {
	pki := newTestPKI(t)
	t.Setenv("DESKO_TEST_SECRET", testSecret)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name, lines string
		wants       []string
	}{
		{"tls_ca missing file", "tls_ca " + missing, []string{"tls_ca: open " + missing}},
		{"tls_ca not PEM", "tls_ca " + pki.notPEMFile, []string{"tls_ca: " + pki.notPEMFile + " holds no PEM certificate"}},
		{"tls_client_cert mismatched key", fmt.Sprintf("tls_client_cert %s %s", pki.clientCertFile, pki.otherKeyFile), []string{"tls_client_cert: tls: private key does not match public key"}},
		{"tls_client_cert missing key", fmt.Sprintf("tls_client_cert %s %s", pki.clientCertFile, missing), []string{"tls_client_cert: open " + missing}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assertLoadError(t, tlsSite(tc.lines), tc.wants...)
		})
	}
}
