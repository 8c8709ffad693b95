package deskoauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The engine's errors: their shapes, and that they never hold the secret.

func deskoIn(m deskotest.Mode) http.Handler {
	s := deskotest.New(tsClientID, tsSecret, time.Hour)
	s.SetMode(m)
	return s
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
		wantKind   errorKind
		wantStatus int
		wantIn     []string // substrings of Error()
		check      func(t *testing.T, te *tokenError)
	}{
		{
			name: "Desko 401", handler: deskoIn(deskotest.ModeReject),
			wantKind: kindRejected, wantStatus: 401, wantIn: []string{"401", "Client authentication failed"},
		},
		{
			name: "Desko 401 shape, literal",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`)(w, r, 1)
			}),
			wantKind: kindRejected, wantStatus: 401, wantIn: []string{"Client authentication failed"},
		},
		{
			name: "RFC 6749 400 invalid_client", handler: deskoIn(deskotest.ModeRFCReject),
			wantKind: kindRejected, wantStatus: 400, wantIn: []string{"invalid_client", "Client authentication failed"},
		},
		{
			name: "RFC 6749 error code only",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(400, "application/json", `{"error":"invalid_scope"}`)(w, r, 1)
			}),
			wantKind: kindRejected, wantStatus: 400, wantIn: []string{"invalid_scope"},
		},
		{
			name: "403 plain text",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(403, "text/plain", "Forbidden")(w, r, 1)
			}),
			wantKind: kindRejected, wantStatus: 403, wantIn: []string{"403", "Forbidden"},
		},
		{
			name: "500", handler: deskoIn(deskotest.ModeDown),
			wantKind: kindTransient, wantStatus: 500, wantIn: []string{"500", "Internal server error"},
		},
		{
			name: "429 with Retry-After",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(429, "application/json", `{"message":"Too Many Attempts."}`, "Retry-After", "30")(w, r, 1)
			}),
			wantKind: kindTransient, wantStatus: 429, wantIn: []string{"Too Many Attempts."},
			check: func(t *testing.T, te *tokenError) {
				if te.RetryAfter != 30*time.Second {
					t.Errorf("RetryAfter = %v, want 30s", te.RetryAfter)
				}
			},
		},
		{
			name: "HTML 200", handler: deskoIn(deskotest.ModeHTML),
			wantKind: kindInvalidResponse, wantStatus: 200, wantIn: []string{"JSON"},
		},
		{
			name: "empty 200",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(200, "application/json", "")(w, r, 1)
			}),
			wantKind: kindInvalidResponse, wantStatus: 200,
		},
		{
			name: "HTML 502 is cut to a short excerpt",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(502, "text/html", bigHTML)(w, r, 1)
			}),
			wantKind: kindTransient, wantStatus: 502, wantIn: []string{"502 Bad Gateway"},
			check: func(t *testing.T, te *tokenError) {
				if n := utf8.RuneCountInString(te.Message); n > 130 {
					t.Errorf("Message is %d characters, want at most 130: %q", n, te.Message)
				}
				if strings.ContainsAny(te.Message, "\r\n\t") {
					t.Errorf("Message holds control characters: %q", te.Message)
				}
			},
		},
		{
			name: "502 of quotes and unprintable runes is cut too",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(502, "text/plain", strings.Repeat(`"\`+"\u200b", 300))(w, r, 1)
			}),
			wantKind: kindTransient, wantStatus: 502,
			check: func(t *testing.T, te *tokenError) {
				if n := utf8.RuneCountInString(te.Message); n > 130 {
					t.Errorf("Message is %d characters, want at most 130: %q", n, te.Message)
				}
			},
		},
		{
			name: "empty 503",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(503, "", "")(w, r, 1)
			}),
			wantKind: kindTransient, wantStatus: 503, wantIn: []string{"503"},
		},
		{
			name: "200 over 1 MiB",
			handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				answer(200, "application/json", `{"access_token":"abc","pad":"`+strings.Repeat("x", maxBodyBytes)+`"}`)(w, r, 1)
			}),
			wantKind: kindInvalidResponse, wantStatus: 200, wantIn: []string{"1 MiB"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			e := newTestEngine(t, srv.URL+deskotest.TokenPath, newFakeClock(t))
			te := mustGetErr(t, e)
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

// echoSecret answers status with a body built by format from the
// client_secret the request carried (read from the request, as a careless
// server would).
func echoSecret(status int, contentType string, format func(secret string) string) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		var req struct {
			ClientSecret string `json:"client_secret"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		answer(status, contentType, format(req.ClientSecret))(w, r, n)
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			srv := newTokenServer(t, tt.r)
			e := newTestEngine(t, srv.tokenURL(), newFakeClock(t), func(c *engineConfig) { c.Logger = zap.New(core) })
			te := mustGetErr(t, e)
			if leaksSecret(te.Error()) {
				t.Errorf("Error() leaks the secret: %q", te.Error())
			}
			if leaksSecret(te.Message) {
				t.Errorf("Message leaks the secret: %q", te.Message)
			}
			if st := e.Status(); leaksSecret(st.LastError) {
				t.Errorf("Status().LastError leaks the secret: %q", st.LastError)
			}
			for _, entry := range logs.All() {
				if line := fmt.Sprint(entry.Message, entry.ContextMap()); leaksSecret(line) {
					t.Errorf("log entry leaks the secret: %s", line)
				}
			}
		})
	}
}
