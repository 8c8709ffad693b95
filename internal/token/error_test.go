package token

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
)

// The source's errors: their shapes, and that they never hold the secret
// or the token URL's query.

// deskoIn is the Desko stand-in in mode m.
func deskoIn(m deskotest.Mode) http.Handler {
	s := deskotest.New(tsClientID, tsSecret, time.Hour)
	s.SetMode(m)
	return s
}

// respondWith is r as a handler that answers every request as the first.
func respondWith(r responder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r(w, req, 1) })
}

func TestTokenErrorShapes(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	bigHTML := `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>502 Bad Gateway</title>
  <style>body { font-family: Helvetica, Arial, sans-serif; }</style>
</head>
<body>
  <center><h1>502 Bad Gateway</h1></center>
  <hr><center>nginx</center>
` + strings.Repeat("  <p>padding padding padding</p>\n", 500) + "</body></html>\n"

	tests := []struct {
		name       string
		handler    http.Handler
		wantKind   Kind
		wantStatus int
		wantIn     []string // substrings of Error()
		check      func(t *testing.T, te *Error)
	}{
		{
			name: "Desko 401", handler: deskoIn(deskotest.ModeReject),
			wantKind: KindRefused, wantStatus: 401, wantIn: []string{"401", "Client authentication failed"},
		},
		{
			name:     "Desko 401 shape, literal",
			handler:  respondWith(answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`)),
			wantKind: KindRefused, wantStatus: 401, wantIn: []string{"Client authentication failed"},
		},
		{
			name: "RFC 6749 400 invalid_client", handler: deskoIn(deskotest.ModeRFCReject),
			wantKind: KindRefused, wantStatus: 400, wantIn: []string{"invalid_client", "Client authentication failed"},
		},
		{
			name:     "RFC 6749 error code only",
			handler:  respondWith(answer(400, "application/json", `{"error":"invalid_scope"}`)),
			wantKind: KindRefused, wantStatus: 400, wantIn: []string{"invalid_scope"},
		},
		{
			name:     "403 plain text",
			handler:  respondWith(answer(403, "text/plain", "Forbidden")),
			wantKind: KindRefused, wantStatus: 403, wantIn: []string{"403", "Forbidden"},
		},
		{
			name: "500", handler: deskoIn(deskotest.ModeDown),
			wantKind: KindTransient, wantStatus: 500, wantIn: []string{"500", "Internal server error"},
		},
		{
			name:     "429 with Retry-After",
			handler:  respondWith(answer(429, "application/json", `{"message":"Too Many Attempts."}`, "Retry-After", "30")),
			wantKind: KindTransient, wantStatus: 429, wantIn: []string{"Too Many Attempts."},
			check: func(t *testing.T, te *Error) {
				if te.RetryAfter != 30*time.Second {
					t.Errorf("RetryAfter = %v, want 30s", te.RetryAfter)
				}
			},
		},
		{
			name:     "408 is transient",
			handler:  respondWith(answer(408, "", "")),
			wantKind: KindTransient, wantStatus: 408, wantIn: []string{"408", "empty body"},
		},
		{
			name: "HTML 200", handler: deskoIn(deskotest.ModeHTML),
			wantKind: KindInvalidAnswer, wantStatus: 200, wantIn: []string{"JSON"},
		},
		{
			name:     "empty 200",
			handler:  respondWith(answer(200, "application/json", "")),
			wantKind: KindInvalidAnswer, wantStatus: 200,
		},
		{
			name:     "HTML 502 is cut to a short excerpt",
			handler:  respondWith(answer(502, "text/html", bigHTML)),
			wantKind: KindTransient, wantStatus: 502, wantIn: []string{"502 Bad Gateway"},
			check: func(t *testing.T, te *Error) {
				if n := utf8.RuneCountInString(te.Message); n > 130 {
					t.Errorf("Message is %d characters, want at most 130: %q", n, te.Message)
				}
				if strings.ContainsAny(te.Message, "\r\n\t") {
					t.Errorf("Message holds control characters: %q", te.Message)
				}
			},
		},
		{
			name:     "502 of quotes and unprintable runes is cut too",
			handler:  respondWith(answer(502, "text/plain", strings.Repeat(`"\`+"\u200b", 300))),
			wantKind: KindTransient, wantStatus: 502,
			check: func(t *testing.T, te *Error) {
				if n := utf8.RuneCountInString(te.Message); n > 130 {
					t.Errorf("Message is %d characters, want at most 130: %q", n, te.Message)
				}
			},
		},
		{
			name:     "empty 503",
			handler:  respondWith(answer(503, "", "")),
			wantKind: KindTransient, wantStatus: 503, wantIn: []string{"503"},
		},
		{
			name:     "200 over 1 MiB",
			handler:  respondWith(answer(200, "application/json", `{"access_token":"abc","pad":"`+strings.Repeat("x", maxBodyBytes)+`"}`)),
			wantKind: KindInvalidAnswer, wantStatus: 200, wantIn: []string{"1 MiB"},
		},
	}
	for _, tt := range tests {
		inBubble(t, tt.name, func(t *testing.T) {
			url := serveInMemory(t, tt.handler)
			s := newTestSource(t, url+deskotest.TokenPath)
			te := mustGetErr(t, s)
			if te.Kind != tt.wantKind {
				t.Errorf("Kind = %v, want %v (%v)", te.Kind, tt.wantKind, te)
			}
			if te.Status != tt.wantStatus {
				t.Errorf("Status = %d, want %d", te.Status, tt.wantStatus)
			}
			msg := te.Error()
			for _, s := range tt.wantIn {
				if !strings.Contains(msg, s) {
					t.Errorf("Error() = %q, want it to contain %q", msg, s)
				}
			}
			if len(msg) > 400 {
				t.Errorf("Error() is %d bytes long", len(msg))
			}
			if tt.check != nil {
				tt.check(t, te)
			}
		})
	}
}

func TestTokenErrorNeverHoldsSecret(t *testing.T) {
	jsonStr := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	pad := strings.Repeat("x", 110) // puts the secret across the 120-character excerpt cut
	tests := []struct {
		name string
		r    responder
	}{
		{"Desko message", echoSecret(401, "application/json", func(s string) string {
			return `{"error":401,"id":"oauth_server","message":"Client authentication failed for secret ` + s + `"}`
		})},
		{"RFC error_description", echoSecret(400, "application/json", func(s string) string {
			return `{"error":"invalid_client","error_description":"unknown secret ` + s + `"}`
		})},
		{"RFC error code", echoSecret(400, "application/json", func(s string) string {
			return `{"error":` + jsonStr(s) + `}`
		})},
		{"plain text 500", echoSecret(500, "text/plain", func(s string) string { return "cannot verify " + s })},
		{"HTML 502 with the secret across the excerpt cut", echoSecret(502, "text/html", func(s string) string {
			return pad + s + "</p></body></html>"
		})},
		{"long JSON message with the secret across the cut", echoSecret(401, "application/json", func(s string) string {
			return `{"error":401,"message":"` + pad + s + `"}`
		})},
		{"200 with the secret as token_type", echoSecret(200, "application/json", func(s string) string {
			return `{"access_token":"abc","expires_in":60,"token_type":` + jsonStr(s) + `}`
		})},
		{"200 with the secret in a bad access_token", echoSecret(200, "application/json", func(s string) string {
			return `{"access_token":"bad token ` + s + `","expires_in":60}`
		})},
		{"200 with an OAuth error holding the secret", echoSecret(200, "application/json", func(s string) string {
			return `{"error":"invalid_client","error_description":"secret ` + s + ` unknown"}`
		})},
	}
	for _, tt := range tests {
		inBubble(t, tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			srv := newTokenServer(t, tt.r)
			s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Logger = zap.New(core) })
			te := mustGetErr(t, s)
			if leaksSecret(te.Error()) {
				t.Errorf("Error() leaks the secret: %q", te.Error())
			}
			if leaksSecret(te.Message) {
				t.Errorf("Message leaks the secret: %q", te.Message)
			}
			if st := s.Status(); leaksSecret(st.LastError) {
				t.Errorf("Status().LastError leaks the secret: %q", st.LastError)
			}
			if len(logs.All()) == 0 {
				t.Fatal("the failure was not logged: the log check would prove nothing")
			}
			for _, entry := range logs.All() {
				if line := fmt.Sprint(entry.Message, entry.ContextMap()); leaksSecret(line) {
					t.Errorf("log entry leaks the secret: %s", line)
				}
			}
		})
	}
}

// The same for user information and query keys in errors the source
// builds itself (a real dial to a closed port, so that the error is the
// real transport's), and for a query key echoed by the server.
func TestTokenErrorsHideTheURLQuery(t *testing.T) {
	t.Run("transport error", func(t *testing.T) {
		// Port 1 (tcpmux) on loopback: nothing listens there, and no test
		// server can be given it.
		s := newTestSource(t, "http://user:PASSWORD-xyz@127.0.0.1:1/t?key=QUERYKEY-abc123", func(c *Config) {
			c.HTTPClient = nil // the source's own client: a real dial
		})
		te := mustGetErr(t, s)
		if te.Kind.String() != "connect" || !strings.Contains(te.Error(), "127.0.0.1:1/t") {
			t.Errorf("error %q (%v), want a connect error naming the redacted URL", te, te.Kind)
		}
		for _, bad := range []string{"QUERYKEY", "PASSWORD-xyz", "key=", "user:"} {
			if strings.Contains(te.Error(), bad) || strings.Contains(s.Status().LastError, bad) {
				t.Errorf("error %q holds %q", te.Error(), bad)
			}
		}
	})
	t.Run("an unknown host of the test network", func(t *testing.T) {
		s := newTestSource(t, "http://user:PASSWORD-xyz@nowhere.test/t?key=QUERYKEY-abc123")
		te := mustGetErr(t, s)
		if !strings.Contains(te.Error(), "nowhere.test/t") {
			t.Errorf("error %q, want the redacted URL", te)
		}
		for _, bad := range []string{"QUERYKEY", "PASSWORD-xyz", "key="} {
			if strings.Contains(te.Error(), bad) {
				t.Errorf("error %q holds %q", te.Error(), bad)
			}
		}
	})
	inBubble(t, "echoed by the server", func(t *testing.T) {
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			answer(401, "text/plain", "bad key "+r.URL.Query().Get("key"))(w, r, n)
		})
		s := newTestSource(t, srv.tokenURL()+"?key=QUERYKEY-abc123")
		if te := mustGetErr(t, s); strings.Contains(te.Error(), "QUERYKEY") || !strings.Contains(te.Error(), scrub.Redacted) {
			t.Errorf("error %q holds the echoed query key, or did not redact it", te.Error())
		}
	})
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://api.desko.com.br/v1.1/oauth/token":                  "https://api.desko.com.br/v1.1/oauth/token",
		"https://user:pw@idp.example:8443/token?key=k&x=1#frag":      "https://idp.example:8443/token",
		"http://127.0.0.1:1/t?key=QUERYKEY":                          "http://127.0.0.1:1/t",
		"://bad":                                                     "invalid-url",
		"https://idp.example/token?client_secret=s3cr3t&scope=a%20b": "https://idp.example/token",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// The source logs through the scrubber too: a failure holds no value of
// Config.Secrets or Credentials.Secrets, in its error or its log line.
func TestEngineScrubsConfigSecrets(t *testing.T) {
	const secret = "TENANT-SECRET-42"
	for _, tc := range []struct {
		name string
		set  func(c *Config)
	}{
		{"Config.Secrets", func(c *Config) { c.Secrets = []string{secret} }},
		{"Credentials.Secrets", func(c *Config) { static(c).Secrets = []string{secret} }},
	} {
		inBubble(t, tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				answer(400, "text/plain", "unknown tenant "+r.Header.Get("X-Tenant-Key"))(w, r, n)
			})
			s := newTestSource(t, srv.tokenURL(), func(c *Config) {
				static(c).Headers = map[string]string{"X-Tenant-Key": secret}
				c.Logger = zap.New(core)
				tc.set(c)
			})
			te := mustGetErr(t, s)
			if strings.Contains(te.Error(), secret) || !strings.Contains(te.Error(), scrub.Redacted) {
				t.Errorf("error %q", te.Error())
			}
			if len(logs.All()) == 0 {
				t.Fatal("the failure was not logged")
			}
			for _, entry := range logs.All() {
				if line := fmt.Sprint(entry.Message, entry.ContextMap()); strings.Contains(line, secret) {
					t.Errorf("log entry holds the secret: %s", line)
				}
			}
		})
	}
}

// When the credentials change, the next token request uses the new ones,
// and an echo of the old secret is scrubbed as well as the new one.
func TestEngineCredentialRotation(t *testing.T) {
	inBubble(t, "", func(t *testing.T) {
		// Unrelated secrets: the scrubber also redacts long pieces of a
		// secret, which would hide an old secret that shares them.
		const oldSecret, newSecret = "Xk9-first-credential-77", "Qz4_other_pass_0031"
		var seen []string
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			var req struct {
				ClientSecret string `json:"client_secret"`
			}
			_ = json.NewDecoder(r.Body).Decode(&req)
			seen = append(seen, req.ClientSecret)
			if req.ClientSecret != newSecret {
				okToken(3600)(w, r, n)
				return
			}
			// A careless server echoes what it had on file and what it got.
			answer(401, "text/plain", "expected "+oldSecret+", got "+req.ClientSecret)(w, r, n)
		})
		creds := &rotating{cur: &Credentials{ClientID: tsClientID, ClientSecret: oldSecret}}
		s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Credentials = creds })
		mustGet(t, s)
		creds.set(&Credentials{ClientID: tsClientID, ClientSecret: newSecret})
		_, err := s.Refresh(t.Context())
		if err == nil {
			t.Fatal("Refresh with the new secret succeeded against a server that refuses it")
		}
		if len(seen) != 2 || seen[0] != oldSecret || seen[1] != newSecret {
			t.Fatalf("the token requests carried %q, want the old then the new secret", seen)
		}
		for _, text := range []string{err.Error(), s.Status().LastError, s.Scrub("x " + oldSecret + " " + newSecret)} {
			if strings.Contains(text, oldSecret) || strings.Contains(text, newSecret) {
				t.Errorf("%q holds a secret", text)
			}
		}
	})
}

// rotating is a CredentialSource whose credentials the test changes.
type rotating struct {
	mu  sync.Mutex
	cur *Credentials
}

func (r *rotating) Current() *Credentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *rotating) set(c *Credentials) {
	r.mu.Lock()
	r.cur = c
	r.mu.Unlock()
}

// failure is a way for a token request to fail: a round trip error (as
// the transport returns it) or an answer of the token endpoint.
type failure struct {
	err error
	r   responder
}

// dialError is the error of a dial to a loopback port that fails with
// errno, as the net package builds it.
func dialError(errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443},
		Err: os.NewSyscallError("connect", errno)}
}

// failureKinds are the failures each kind of error comes from, with the
// kind's label, the status the error carries, substrings of its text, the
// first two steps of its backoff (Rand 0.5: no jitter) and its log lines
// (level and message, with no valid token and while one is served). The
// labels and messages are written out: they are what operators read.
var failureKinds = []struct {
	name         string
	f            failure
	label        string
	status       int
	wantIn       []string
	backoff      []time.Duration
	level        zapcore.Level
	msg, serving string
}{
	{
		name: "no such host", f: failure{err: &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "no such host", Name: "desko.invalid", Server: "10.0.0.53:53", IsNotFound: true}}},
		label:   "dns",
		wantIn:  []string{"token endpoint's host does not resolve (check token_url and DNS): ", "lookup desko.invalid", "no such host"},
		backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg:     "could not obtain a token: the token endpoint's host does not resolve; check token_url and DNS",
		serving: "token refresh failed: the token endpoint's host does not resolve; still serving the current token; check token_url and DNS",
	},
	{
		name: "the resolver does not answer", f: failure{err: &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "i/o timeout", Name: "desko.example", Server: "10.0.0.53:53", IsTimeout: true}}},
		label: "dns", wantIn: []string{"token endpoint's host does not resolve", "i/o timeout"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg:     "could not obtain a token: the token endpoint's host does not resolve; check token_url and DNS",
		serving: "token refresh failed: the token endpoint's host does not resolve; still serving the current token; check token_url and DNS",
	},
	{
		name: "connection refused", f: failure{err: dialError(syscall.ECONNREFUSED)},
		label:   "connect",
		wantIn:  []string{"could not connect to the token endpoint (check token_url's host and port, and the network): ", "connection refused"},
		backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg:     "could not obtain a token: no connection to the token endpoint; check token_url's host and port, and the network",
		serving: "token refresh failed: no connection to the token endpoint; still serving the current token; check token_url's host and port, and the network",
	},
	{
		name: "host unreachable", f: failure{err: dialError(syscall.EHOSTUNREACH)},
		label: "connect", wantIn: []string{"could not connect to the token endpoint", "no route to host"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg:     "could not obtain a token: no connection to the token endpoint; check token_url's host and port, and the network",
		serving: "token refresh failed: no connection to the token endpoint; still serving the current token; check token_url's host and port, and the network",
	},
	{
		name: "network unreachable", f: failure{err: dialError(syscall.ENETUNREACH)},
		label: "connect", wantIn: []string{"could not connect to the token endpoint", "network is unreachable"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg:     "could not obtain a token: no connection to the token endpoint; check token_url's host and port, and the network",
		serving: "token refresh failed: no connection to the token endpoint; still serving the current token; check token_url's host and port, and the network",
	},
	{
		name: "no answer to the connection attempt", f: failure{err: &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}},
		label: "connect", wantIn: []string{"could not connect to the token endpoint", "i/o timeout"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg:     "could not obtain a token: no connection to the token endpoint; check token_url's host and port, and the network",
		serving: "token refresh failed: no connection to the token endpoint; still serving the current token; check token_url's host and port, and the network",
	},
	{
		name: "connection reset while reading", f: failure{err: &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}},
		label: "transient", wantIn: []string{"token request failed: ", "connection reset by peer"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg: "could not obtain a token", serving: "token refresh failed; still serving the current token",
	},
	{
		name: "timeout", f: failure{err: context.DeadlineExceeded},
		label: "transient", wantIn: []string{"token request failed: ", "context deadline exceeded"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg: "could not obtain a token", serving: "token refresh failed; still serving the current token",
	},
	{
		name: "certificate of an unknown authority", f: failure{err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}},
		label:   "tls",
		wantIn:  []string{"token endpoint's certificate does not verify (check tls_ca and the endpoint's certificate): ", "unknown authority"},
		backoff: secs(5, 10), level: zapcore.ErrorLevel,
		msg:     "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate",
		serving: "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate",
	},
	{
		name: "another host's certificate", f: failure{err: &tls.CertificateVerificationError{
			Err: x509.HostnameError{Certificate: &x509.Certificate{DNSNames: []string{"other.example"}}, Host: "desko.example"}}},
		label: "tls", wantIn: []string{"token endpoint's certificate does not verify", "desko.example"}, backoff: secs(5, 10), level: zapcore.ErrorLevel,
		msg:     "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate",
		serving: "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate",
	},
	{
		name: "expired certificate", f: failure{err: &tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}},
		label: "tls", wantIn: []string{"token endpoint's certificate does not verify", "expired"}, backoff: secs(5, 10), level: zapcore.ErrorLevel,
		msg:     "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate",
		serving: "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate",
	},
	{
		name: "a redirect status that is not followed", f: failure{r: answer(304, "", "")},
		label: "redirect", status: 304, wantIn: []string{"token endpoint answered 304: redirect not followed: ", "(check token_url)"},
		backoff: secs(5, 10), level: zapcore.ErrorLevel,
		msg:     "token endpoint redirected the token request; check token_url",
		serving: "token endpoint redirected the token request; check token_url",
	},
	{
		name: "a redirect status with a Location", f: failure{r: answer(300, "", "", "Location", "/v2/token?key=QUERYKEY")},
		label: "redirect", status: 300, wantIn: []string{"token endpoint answered 300: redirect to http://", "/v2/token not followed: "},
		backoff: secs(5, 10), level: zapcore.ErrorLevel,
		msg:     "token endpoint redirected the token request; check token_url",
		serving: "token endpoint redirected the token request; check token_url",
	},
	{
		name: "refused credentials", f: failure{r: answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`)},
		label: "refused", status: 401, wantIn: []string{"token endpoint answered 401: Client authentication failed"},
		backoff: secs(5, 10), level: zapcore.ErrorLevel,
		msg:     "token endpoint refused the credentials; check client_id, client_secret and scope",
		serving: "token endpoint refused the credentials; check client_id, client_secret and scope",
	},
	{
		name: "5xx", f: failure{r: answer(503, "text/plain", "maintenance")},
		label: "transient", status: 503, wantIn: []string{"token endpoint answered 503"}, backoff: secs(1, 2), level: zapcore.WarnLevel,
		msg: "could not obtain a token", serving: "token refresh failed; still serving the current token",
	},
}

// Each kind of failure is told apart, names what to check in its error
// and its log line, and is retried at its kind's pace.
func TestEngineFailureKinds(t *testing.T) {
	for _, tc := range failureKinds {
		inBubble(t, tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			url := ""
			if tc.f.err != nil {
				url = failInMemory(t, tc.f.err)
			} else {
				url = serveInMemory(t, respondWith(tc.f.r))
			}
			s := newTestSource(t, url+deskotest.TokenPath, func(c *Config) { c.Logger = zap.New(core) })
			for i, want := range tc.backoff {
				if i > 0 {
					settle(tc.backoff[i-1]) // the retry, at the end of the step, fails too
				}
				te := mustGetErr(t, s)
				if te.Kind.String() != tc.label || te.Status != tc.status {
					t.Fatalf("error %q: kind %s, status %d; want %s, %d", te, te.Kind, te.Status, tc.label, tc.status)
				}
				for _, w := range tc.wantIn {
					if !strings.Contains(te.Error(), w) {
						t.Errorf("error %q, want it to hold %q", te, w)
					}
				}
				if strings.Contains(te.Error(), "QUERYKEY") {
					t.Errorf("error %q holds a URL's query", te)
				}
				if got := nextWake(t, s); got != want {
					t.Fatalf("after failure %d the next attempt is in %v, want %v", i+1, got, want)
				}
			}
			got := logs.All()
			if len(got) != 1 {
				t.Fatalf("%d log lines for %d failures of one kind, want 1: %v", len(got), len(tc.backoff), got)
			}
			if g := got[0]; g.Level != tc.level || g.Message != tc.msg || g.ContextMap()["kind"] != tc.label {
				t.Errorf("log line %s %q %v, want %s %q with kind %s", g.Level, g.Message, g.ContextMap(), tc.level, tc.msg, tc.label)
			}
			if st := s.Status(); (st.State == StateRefused) != (tc.label == "refused") {
				t.Errorf("status state %s for %s", st.State, tc.label)
			}
		})
		inBubble(t, tc.name+" while a token is served", func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			srv := newTokenServer(t, okToken(100))
			s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Logger = zap.New(core) })
			tok := mustGet(t, s)
			if tc.f.err != nil {
				testHosts.Store(strings.TrimPrefix(srv.url, "http://"), tc.f.err)
			} else {
				srv.setRespond(tc.f.r)
			}
			settle(nextWake(t, s)) // the proactive refresh fails
			if got := mustGet(t, s); got != tok {
				t.Fatalf("Get = %q, want the current token %q", got.Value, tok.Value)
			}
			got := logs.All()
			if len(got) != 1 || got[0].Level != tc.level || got[0].Message != tc.serving {
				t.Fatalf("log lines %v, want one %s %q", got, tc.level, tc.serving)
			}
		})
	}
}

// A refusal is a refusal whatever the size of its body; an error status
// never becomes an unusable answer.
func TestEngineLargeErrorAnswersKeepTheirStatus(t *testing.T) {
	t.Parallel() // with the other slow ones (TestMain)
	// Prose, as an error_description is: a megabyte of one character is
	// as large, and three times the scrubber's work under -race.
	const line = "the token endpoint is overloaded; try again later. "
	huge := strings.Repeat(line, maxBodyBytes/len(line)+1)
	for _, tc := range []struct {
		status int
		label  string
	}{{401, "refused"}, {400, "refused"}, {503, "transient"}, {304, "redirect"}} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			t.Parallel() // a megabyte each, which -race makes slow
			synctest.Test(t, func(t *testing.T) {
				url := serveInMemory(t, respondWith(answer(tc.status, "application/json",
					`{"error":"invalid_client","error_description":"`+huge+`"}`)))
				s := newTestSource(t, url+deskotest.TokenPath)
				te := mustGetErr(t, s)
				if te.Kind.String() != tc.label || te.Status != tc.status {
					t.Fatalf("error %.200q: kind %s status %d, want %s %d", te, te.Kind, te.Status, tc.label, tc.status)
				}
				if len(te.Error()) > 400 {
					t.Errorf("error is %d bytes", len(te.Error()))
				}
			})
		})
	}
}

// Real TLS (outside a bubble: a real handshake): a certificate of an
// unknown authority, and one for another name, are tls errors.
func TestEngineTLSErrors(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	srv := httptest.NewTLSServer(respondWith(okToken(3600)))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	t.Cleanup(srv.Close)
	trusting := func() *http.Client {
		pool := x509.NewCertPool()
		pool.AddCert(srv.Certificate())
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	for _, tc := range []struct {
		name, url string
		client    *http.Client
		want      string
	}{
		// The system's roots do not hold httptest's certificate.
		{"unknown authority", srv.URL + "/token", nil, "certificate signed by unknown authority"},
		// httptest's certificate is for 127.0.0.1, ::1 and example.com.
		{"another name", strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/token", trusting(), "not localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestSource(t, tc.url, func(c *Config) { c.HTTPClient = tc.client })
			te := mustGetErr(t, s)
			if te.Kind.String() != "tls" || !strings.Contains(te.Error(), tc.want) ||
				!strings.HasPrefix(te.Error(), "token endpoint's certificate does not verify (check tls_ca and the endpoint's certificate): ") {
				t.Errorf("error %q (kind %s), want a tls error holding %q", te, te.Kind, tc.want)
			}
		})
	}
	t.Run("trusted", func(t *testing.T) {
		mustGet(t, newTestSource(t, srv.URL+"/token", func(c *Config) { c.HTTPClient = trusting() }))
	})
}

// Real DNS (outside a bubble): .invalid never resolves (RFC 6761). The
// fetch timeout bounds a resolver that does not answer; either way the
// error is dns.
func TestEngineUnresolvableHost(t *testing.T) {
	s := newTestSource(t, "https://desko-auth-test.invalid/token", func(c *Config) {
		c.HTTPClient = nil // the source's own client: a real lookup
		c.Timeout = 5 * time.Second
	})
	te := mustGetErr(t, s)
	if te.Kind.String() != "dns" || !strings.Contains(te.Error(), "desko-auth-test.invalid") ||
		!strings.HasPrefix(te.Error(), "token endpoint's host does not resolve (check token_url and DNS): ") {
		t.Errorf("error %q (kind %s), want a dns error naming the host", te, te.Kind)
	}
}

// Real dials (outside a bubble) that get no answer within the fetch
// timeout. The fetch's deadline ends them before the dialer's own timeout
// (30 s) or the resolver's, so Go reports "context deadline exceeded", not
// a dial error: the phase the request was in says what to check. A
// connection attempt that gets no answer (a firewall that drops it) is a
// connect error; a resolver that does not answer is a dns error; a
// connection made whose answer does not come in time stays transient.
func TestEngineUnansweredDials(t *testing.T) {
	t.Parallel() // with the other slow ones (TestMain)
	silentResolver := func(t *testing.T) *http.Client {
		// A DNS server that reads the queries and never answers.
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 1500)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", pc.LocalAddr().String())
		}}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = (&net.Dialer{Timeout: 30 * time.Second, Resolver: r}).DialContext
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	slowAnswer := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-slowAnswer:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(slowAnswer) }) // before slow.Close
	for _, tc := range []struct {
		name   string
		url    func(t *testing.T) string
		client func(t *testing.T) *http.Client
		kind   string
		prefix string
		want   string
	}{
		{
			name: "connection attempt", kind: "connect",
			url: func(t *testing.T) string {
				addr, stop, err := deskotest.Unanswered()
				if err != nil {
					t.Skip(err)
				}
				t.Cleanup(stop)
				return "http://" + addr + "/token"
			},
			prefix: msgConnect + ": ",
			want:   "no answer to the connection attempt",
		},
		{
			name: "resolver", kind: "dns",
			url:    func(*testing.T) string { return "https://desko-auth-test.example/token" },
			client: silentResolver,
			prefix: msgDNS + ": ",
			want:   "no answer from the resolver",
		},
		{
			name: "answer after the connection", kind: "transient",
			url:    func(*testing.T) string { return slow.URL + "/token" },
			prefix: msgTransportFailed + ": ",
			want:   "context deadline exceeded",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each waits out its timeout
			url := tc.url(t)
			s := newTestSource(t, url, func(c *Config) {
				c.HTTPClient = nil // the source's own client: a real dial
				if tc.client != nil {
					c.HTTPClient = tc.client(t)
				}
				c.Timeout = 500 * time.Millisecond
			})
			te := mustGetErr(t, s)
			if te.Kind.String() != tc.kind || !strings.HasPrefix(te.Error(), tc.prefix) || !strings.Contains(te.Error(), tc.want) {
				t.Errorf("error %q (kind %s), want a %s error starting %q and holding %q", te, te.Kind, tc.kind, tc.prefix, tc.want)
			}
		})
	}
}
