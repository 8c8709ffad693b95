package deskoauth

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// This file is the network side of the token endpoint: TLS (custom CA,
// client certificate) and the plain-http policy.

// transports holds one *http.Transport per token-endpoint TLS
// configuration (the default one, or a tls_ca / tls_client_cert set),
// shared by every source that uses it: 200 credential sets toward one
// endpoint share its keep-alive connections instead of holding 200. A
// handler holds its transport from Provision to Cleanup; the last Cleanup
// closes its idle connections (the transport stays usable for requests
// still in flight).
var transports = caddy.NewUsagePool()

// sharedTransport is a transports entry.
type sharedTransport struct{ *http.Transport }

// Destruct closes the idle connections when no handler uses the transport.
func (t sharedTransport) Destruct() error {
	t.CloseIdleConnections()
	return nil
}

// acquireTransport returns the shared client for the handler's TLS
// configuration and the fingerprint of the files it read (part of a
// source's identity, so that a reload with changed files gets a new
// engine). Cleanup releases it.
func (h *Handler) acquireTransport() (*http.Client, string, error) {
	t, fp, err := h.tokenTransport()
	if err != nil {
		return nil, "", err
	}
	key := "tls:" + fp
	val, _, err := transports.LoadOrNew(key, func() (caddy.Destructor, error) { return sharedTransport{t}, nil })
	if err != nil {
		return nil, "", fmt.Errorf("token endpoint transport: %w", err)
	}
	h.transportKey = key
	return &http.Client{Transport: val.(sharedTransport).Transport}, fp, nil
}

// tokenTransport builds a transport for the token endpoint: the system's
// roots and HTTPS_PROXY/NO_PROXY, or the configured CA and client
// certificate; and a fingerprint of the files it read ("" for none).
func (h *Handler) tokenTransport() (*http.Transport, string, error) {
	t := http.DefaultTransport.(*http.Transport).Clone() // keeps ProxyFromEnvironment
	if h.TLSCA == "" && len(h.TLSClientCert) == 0 {
		return t, "", nil
	}
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	fp := sha256.New()
	if h.TLSCA != "" {
		pem, err := os.ReadFile(h.TLSCA)
		if err != nil {
			return nil, "", fmt.Errorf("tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("tls_ca: %s holds no PEM certificate", h.TLSCA)
		}
		t.TLSClientConfig.RootCAs = pool
		fp.Write(pem)
	}
	if len(h.TLSClientCert) > 0 {
		certPEM, err := os.ReadFile(h.TLSClientCert[0])
		if err != nil {
			return nil, "", fmt.Errorf("tls_client_cert: %w", err)
		}
		keyPEM, err := os.ReadFile(h.TLSClientCert[1])
		if err != nil {
			return nil, "", fmt.Errorf("tls_client_cert: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// The error text of X509KeyPair never quotes key material.
			return nil, "", fmt.Errorf("tls_client_cert: %w", err)
		}
		t.TLSClientConfig.Certificates = []tls.Certificate{cert}
		fp.Write(certPEM)
		fp.Write(keyPEM)
	}
	return t, hex.EncodeToString(fp.Sum(nil)), nil
}

// isLoopbackHost reports whether the URL's host is localhost or a loopback
// address, the only places plain http may carry the secret by default.
func isLoopbackHost(u *url.URL) bool {
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
