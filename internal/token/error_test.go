package token

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
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
		{
			name:     "304, a redirect status the client does not follow, is a configuration problem",
			handler:  respondWith(answer(304, "", "")),
			wantKind: KindRefused, wantStatus: 304, wantIn: []string{"redirect not followed (check token_url)"},
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
		if te.Kind != KindTransient || !strings.Contains(te.Error(), "127.0.0.1:1/t") {
			t.Errorf("error %q (%v), want a transient error naming the redacted URL", te, te.Kind)
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
