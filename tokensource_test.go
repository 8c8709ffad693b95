package deskoauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// The engine tests run every timing decision on a fakeClock and synchronise
// with the engine's goroutines through channels, the fake clock's
// BlockUntil* helpers and a token endpoint that can hold requests. None of
// them sleeps.

const (
	tsClientID = "943e47a1-test-client"
	tsSecret   = "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB"
)

// hasMonotonic reports whether t carries a monotonic clock reading (its
// String form then ends with "m=±<seconds>", as documented by package time).
func hasMonotonic(t time.Time) bool { return strings.Contains(t.String(), " m=") }

// leaksSecret reports whether s holds the client secret in any form the
// leak check finds, or any 6-character piece of it (a secret cut in half
// by a truncation is still a leak).
func leaksSecret(s string) bool {
	if lc := newLeakCheck(tsClientID, tsSecret); lc.sc.Scrub(s) != s {
		return true
	}
	const piece = 6
	for i := 0; i+piece <= len(tsSecret); i++ {
		if strings.Contains(s, tsSecret[i:i+piece]) {
			return true
		}
	}
	return false
}

// responder answers the n-th (1-based) token request.
type responder func(w http.ResponseWriter, r *http.Request, n int64)

// okToken issues opaque tokens "tok-<n>" that live expiresIn seconds. They
// are not JWTs on purpose, so that their lifetime is exactly expiresIn
// whatever the fake clock says.
func okToken(expiresIn int) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":%d,"access_token":"tok-%d"}`, expiresIn, n)
	}
}

// answer always gives the same answer; headers are name, value pairs.
func answer(status int, contentType, body string, headers ...string) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// tokenServer is a scriptable token endpoint that counts its requests and
// can hold them until the test releases them.
type tokenServer struct {
	*httptest.Server
	t        testing.TB
	requests atomic.Int64
	arrived  chan int64 // the number of every request, as it arrives

	mu      sync.Mutex
	respond responder
	hold    chan struct{}
}

func newTokenServer(t testing.TB, r responder) *tokenServer {
	s := &tokenServer{t: t, respond: r, arrived: make(chan int64, 4096)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *tokenServer) serve(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	s.mu.Lock()
	respond, hold := s.respond, s.hold
	s.mu.Unlock()
	select {
	case s.arrived <- n:
	default:
	}
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	respond(w, r, n)
}

func (s *tokenServer) tokenURL() string { return s.URL + deskotest.TokenPath }

func (s *tokenServer) setRespond(r responder) {
	s.mu.Lock()
	s.respond = r
	s.mu.Unlock()
}

// holdRequests makes requests that arrive from now on wait until release
// is called (release is idempotent and also runs at cleanup, before the
// server closes).
func (s *tokenServer) holdRequests() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
	s.t.Cleanup(release)
	return release
}

// waitArrival blocks until the n-th request has reached the handler.
func (s *tokenServer) waitArrival(n int64) {
	s.t.Helper()
	for {
		if got := waitChan(s.t, s.arrived, fmt.Sprintf("token request #%d", n)); got >= n {
			return
		}
	}
}

func (s *tokenServer) count() int64 { return s.requests.Load() }

func fixedRand(v float64) func() float64 { return func() float64 { return v } }

// newTestEngine starts an engine for tokenURL with the test credentials,
// clk, and jitter pinned to the middle (Rand 0.5 makes backoff jitter
// exactly ×1 and refreshes happen at 77.5% of a token's lifetime).
func newTestEngine(t testing.TB, tokenURL string, clk engineClock, opts ...func(*engineConfig)) *tokenEngine {
	t.Helper()
	cfg := engineConfig{
		TokenURL:     tokenURL,
		ClientID:     tsClientID,
		ClientSecret: tsSecret,
		Clock:        clk,
		Rand:         fixedRand(0.5),
	}
	for _, o := range opts {
		o(&cfg)
	}
	e, err := newTokenEngine(cfg)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), fakeWaitLimit)
	t.Cleanup(cancel)
	return ctx
}

func mustGet(t testing.TB, e *tokenEngine) *accessToken {
	t.Helper()
	tok, err := e.Get(testCtx(t))
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if tok == nil || tok.Value == "" {
		t.Fatalf("Get returned an empty token")
	}
	return tok
}

// mustReplace tells e that tok was rejected and returns its replacement.
func mustReplace(t testing.TB, e *tokenEngine, tok *accessToken) *accessToken {
	t.Helper()
	fresh := e.Replace(testCtx(t), tok)
	if fresh == nil || fresh.Value == tok.Value {
		t.Fatalf("Replace(%q) found no newer token (status %+v)", tok.Value, e.Status())
	}
	return fresh
}

func mustGetErr(t testing.TB, e *tokenEngine) *tokenError {
	t.Helper()
	tok, err := e.Get(testCtx(t))
	if err == nil {
		t.Fatalf("Get returned token %q, want an error", tok.Value)
	}
	var te *tokenError
	if !errors.As(err, &te) {
		t.Fatalf("Get error %T %v is not a *TokenError", err, err)
	}
	return te
}

// onlyPending returns the single armed timer's remaining time.
func onlyPending(t testing.TB, clk *fakeClock) time.Duration {
	t.Helper()
	p := clk.Pending()
	if len(p) != 1 {
		t.Fatalf("armed timers fire in %v, want exactly one timer", p)
	}
	return p[0]
}

// ---------------------------------------------------------------------------
// Request format

func TestEngineRequestFormat(t *testing.T) {
	documented := []string{"organization.show", "organization.upsert", "integration.checkin", "booking.show", "organization.remove"}
	tests := []struct {
		name      string
		scopes    []string
		wantScope string // "" means the field must be absent
	}{
		{"no scopes", nil, ""},
		{"empty scope list", []string{}, ""},
		{"one scope", []string{"organization.show"}, "organization.show"},
		{"documented scopes", documented, "organization.show organization.upsert integration.checkin booking.show organization.remove"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			desko := deskotest.New(tsClientID, tsSecret, time.Hour)
			srv := httptest.NewServer(desko)
			t.Cleanup(srv.Close)
			e := newTestEngine(t, srv.URL+deskotest.TokenPath, newFakeClock(t), func(c *engineConfig) { c.Scopes = tt.scopes })

			tok := mustGet(t, e)
			if !desko.Valid(tok.Value) {
				t.Fatalf("the stand-in does not recognise token %q", tok.Value)
			}
			req, body := desko.LastTokenRequest()
			if req.Method != http.MethodPost {
				t.Errorf("method = %s, want POST", req.Method)
			}
			if req.URL.Path != deskotest.TokenPath {
				t.Errorf("path = %s, want %s", req.URL.Path, deskotest.TokenPath)
			}
			if got := req.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", got)
			}
			if got := req.Header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept = %q, want application/json", got)
			}
			if got := req.Header.Get("Authorization"); got != "" {
				t.Errorf("token request carries Authorization %q; the credentials belong in the JSON body", got)
			}
			var fields map[string]any
			if err := json.Unmarshal(body, &fields); err != nil {
				t.Fatalf("body %q is not a JSON object: %v", body, err)
			}
			want := map[string]any{
				"grant_type":    "client_credentials",
				"client_id":     tsClientID,
				"client_secret": tsSecret,
			}
			if tt.wantScope != "" {
				want["scope"] = tt.wantScope
			}
			if !reflect.DeepEqual(fields, want) {
				t.Errorf("body fields = %v\nwant          %v", fields, want)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Answer parsing

func makeJWT(claims string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." +
		enc.EncodeToString([]byte(claims)) + "." +
		enc.EncodeToString([]byte("not-a-real-signature"))
}

func TestParseTokenResponse(t *testing.T) {
	// now has a whole number of seconds (so that a JWT exp, which has
	// second resolution, gives an exact lifetime) and keeps its monotonic
	// reading, like the engine's clock readings.
	now := time.Now()
	now = now.Add(-time.Duration(now.Nanosecond()))
	if !hasMonotonic(now) {
		t.Fatal("test setup: now lost its monotonic reading")
	}
	const def = 7 * time.Minute
	jwtIn := func(d time.Duration) string {
		return makeJWT(fmt.Sprintf(`{"sub":"943e47a1","exp":%d}`, now.Add(d).Unix()))
	}
	tok := func(at string, rest string) string {
		b, _ := json.Marshal(at)
		if rest != "" {
			rest = "," + rest
		}
		return `{"access_token":` + string(b) + rest + `}`
	}
	const bearer = `"token_type":"Bearer"`
	year := 366 * 24 * time.Hour

	tests := []struct {
		name        string
		body        string
		wantTTL     time.Duration
		wantDefault bool
		wantErr     string // substring of the error; "" for success
	}{
		// expires_in
		{name: "expires_in number", body: tok("abc", bearer+`,"expires_in":3600`), wantTTL: time.Hour},
		{name: "expires_in numeric string", body: tok("abc", bearer+`,"expires_in":"3600"`), wantTTL: time.Hour},
		{name: "expires_in padded string", body: tok("abc", bearer+`,"expires_in":" 3600 "`), wantTTL: time.Hour},
		{name: "expires_in fraction truncated", body: tok("abc", bearer+`,"expires_in":3600.9`), wantTTL: time.Hour},
		{name: "expires_in 1.5 truncated to 1s", body: tok("abc", `"expires_in":1.5`), wantTTL: time.Second},
		{name: "expires_in exponent", body: tok("abc", `"expires_in":3.6e3`), wantTTL: time.Hour},
		{name: "expires_in below one second ignored", body: tok("abc", `"expires_in":0.5`), wantTTL: def, wantDefault: true},
		{name: "expires_in zero ignored", body: tok("abc", `"expires_in":0`), wantTTL: def, wantDefault: true},
		{name: "expires_in negative ignored", body: tok("abc", `"expires_in":-60`), wantTTL: def, wantDefault: true},
		{name: "expires_in negative string ignored", body: tok("abc", `"expires_in":"-60"`), wantTTL: def, wantDefault: true},
		{name: "expires_in huge ignored", body: tok("abc", `"expires_in":1e12`), wantTTL: def, wantDefault: true},
		{name: "expires_in beyond float64 ignored", body: tok("abc", `"expires_in":1e400`), wantTTL: def, wantDefault: true},
		{name: "expires_in 366 days kept", body: tok("abc", `"expires_in":31622400`), wantTTL: year},
		{name: "expires_in 366 days + 1s ignored", body: tok("abc", `"expires_in":31622401`), wantTTL: def, wantDefault: true},
		{name: "expires_in NaN string ignored", body: tok("abc", `"expires_in":"NaN"`), wantTTL: def, wantDefault: true},
		{name: "expires_in Inf string ignored", body: tok("abc", `"expires_in":"+Inf"`), wantTTL: def, wantDefault: true},
		{name: "expires_in word ignored", body: tok("abc", `"expires_in":"soon"`), wantTTL: def, wantDefault: true},
		{name: "expires_in bool ignored", body: tok("abc", `"expires_in":true`), wantTTL: def, wantDefault: true},
		{name: "expires_in object ignored", body: tok("abc", `"expires_in":{"seconds":3600}`), wantTTL: def, wantDefault: true},
		{name: "expires_in null ignored", body: tok("abc", `"expires_in":null`), wantTTL: def, wantDefault: true},
		{name: "expires_in missing", body: tok("abc", bearer), wantTTL: def, wantDefault: true},

		// token_type
		{name: "token_type lower case", body: tok("abc", `"token_type":"bearer","expires_in":60`), wantTTL: time.Minute},
		{name: "token_type upper case", body: tok("abc", `"token_type":"BEARER","expires_in":60`), wantTTL: time.Minute},
		{name: "token_type absent", body: tok("abc", `"expires_in":60`), wantTTL: time.Minute},
		{name: "token_type null", body: tok("abc", `"token_type":null,"expires_in":60`), wantTTL: time.Minute},
		{name: "token_type mac rejected", body: tok("abc", `"token_type":"mac","expires_in":60`), wantErr: "token_type"},

		// access_token
		{name: "access_token missing", body: `{"token_type":"Bearer","expires_in":60}`, wantErr: "no access_token"},
		{name: "access_token empty", body: tok("", `"expires_in":60`), wantErr: "no access_token"},
		{name: "access_token null", body: `{"access_token":null,"expires_in":60}`, wantErr: "no access_token"},
		{name: "access_token number", body: `{"access_token":12345,"expires_in":60}`, wantErr: "access_token is not a string"},
		{name: "access_token CRLF", body: tok("abc\r\nX-Injected: 1", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token LF", body: tok("abc\ndef", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token CR", body: tok("abc\rdef", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token space", body: tok("abc def", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token leading space", body: tok(" abc", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token tab", body: tok("abc\tdef", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token NUL", body: tok("abc\x00def", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token DEL", body: tok("abc\x7fdef", `"expires_in":60`), wantErr: "characters"},
		{name: "access_token non-ASCII", body: tok("tokén", `"expires_in":60`), wantErr: "characters"},

		// not a JSON object
		{name: "plain text", body: "hello", wantErr: "JSON"},
		{name: "empty body", body: "", wantErr: "JSON"},
		{name: "JSON array", body: `[{"access_token":"abc"}]`, wantErr: "JSON"},
		{name: "JSON string", body: `"abc"`, wantErr: "JSON"},
		{name: "JSON null", body: `null`, wantErr: "not a JSON object"},
		{name: "truncated object", body: `{"access_token":"abc"`, wantErr: "JSON"},
		{name: "HTML", body: "<html><body>Maintenance</body></html>", wantErr: "JSON"},

		// trailing data
		{name: "trailing newline allowed", body: tok("abc", `"expires_in":60`) + "\r\n", wantTTL: time.Minute},
		{name: "trailing word", body: tok("abc", `"expires_in":60`) + " x", wantErr: "after the JSON"},
		{name: "second object", body: tok("abc", `"expires_in":60`) + tok("def", ""), wantErr: "after the JSON"},
		{name: "stray closing brace", body: tok("abc", `"expires_in":60`) + "}", wantErr: "after the JSON"},
		{name: "stray closing bracket", body: tok("abc", `"expires_in":60`) + "]", wantErr: "after the JSON"},

		// JWT exp
		{name: "JWT exp when expires_in missing", body: tok(jwtIn(10*time.Minute), bearer), wantTTL: 10 * time.Minute},
		{name: "JWT exp earlier than expires_in", body: tok(jwtIn(10*time.Minute), `"expires_in":3600`), wantTTL: 10 * time.Minute},
		{name: "expires_in earlier than JWT exp", body: tok(jwtIn(2*time.Hour), `"expires_in":300`), wantTTL: 5 * time.Minute},
		{name: "JWT exp in the past, no expires_in", body: tok(jwtIn(-time.Minute), bearer), wantErr: "in the past"},
		{name: "JWT exp now, no expires_in", body: tok(jwtIn(0), bearer), wantErr: "in the past"},
		{name: "JWT exp in the past, valid expires_in", body: tok(jwtIn(-time.Minute), `"expires_in":3600`), wantTTL: time.Hour},
		{name: "JWT exp beyond 366 days ignored", body: tok(jwtIn(400*24*time.Hour), bearer), wantTTL: def, wantDefault: true},
		{name: "JWT exp absurd ignored", body: tok(makeJWT(`{"exp":1e15}`), bearer), wantTTL: def, wantDefault: true},
		{name: "JWT without exp", body: tok(makeJWT(`{"sub":"x"}`), bearer), wantTTL: def, wantDefault: true},
		{name: "JWT-looking garbage", body: tok("a.b!c.d", `"expires_in":60`), wantTTL: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseTokenResponse([]byte(tt.body), now, def)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseTokenResponse(%q) = token %q expiring in %v, want an error containing %q",
						tt.body, p.Value, p.expiry.Sub(now), tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTokenResponse(%q): %v", tt.body, err)
			}
			var raw struct {
				AccessToken string `json:"access_token"`
			}
			json.NewDecoder(strings.NewReader(tt.body)).Decode(&raw)
			if p.Value != raw.AccessToken {
				t.Errorf("Value = %q, want %q", p.Value, raw.AccessToken)
			}
			if got := p.expiry.Sub(now); got != tt.wantTTL {
				t.Errorf("lifetime = %v, want %v", got, tt.wantTTL)
			}
			if p.usedDefaultTTL != tt.wantDefault {
				t.Errorf("usedDefaultTTL = %v, want %v", p.usedDefaultTTL, tt.wantDefault)
			}
			if !p.obtained.Equal(now) {
				t.Errorf("obtained = %v, want %v", p.obtained, now)
			}
			// The expiry the engine compares against must keep the
			// monotonic reading; the wall expiry must not (it is shown to
			// operators and metrics).
			if !hasMonotonic(p.expiry) {
				t.Errorf("expiry %v lost the monotonic reading", p.expiry)
			}
			if hasMonotonic(p.wallExpiry) || !p.wallExpiry.Equal(now.Add(tt.wantTTL)) {
				t.Errorf("wallExpiry = %v, want %v without monotonic reading", p.wallExpiry, now.Add(tt.wantTTL).Round(0))
			}
		})
	}
}

func TestJWTExpiry(t *testing.T) {
	enc := base64.RawURLEncoding
	tests := []struct {
		name   string
		tok    string
		want   int64 // unix seconds
		wantOK bool
	}{
		{"integer exp", makeJWT(`{"exp":1700000000}`), 1700000000, true},
		{"fractional exp", makeJWT(`{"exp":1700000000.9}`), 1700000000, true},
		{"exponent exp", makeJWT(`{"exp":1.7e9}`), 1700000000, true},
		{"padded payload", enc.EncodeToString([]byte(`{}`)) + "." + base64.URLEncoding.EncodeToString([]byte(`{"exp": 1700000000}`)) + ".sig", 1700000000, true},
		{"empty signature", enc.EncodeToString([]byte(`{}`)) + "." + enc.EncodeToString([]byte(`{"exp":1700000000}`)) + ".", 1700000000, true},
		{"no exp", makeJWT(`{"sub":"x"}`), 0, false},
		{"exp null", makeJWT(`{"exp":null}`), 0, false},
		{"exp zero", makeJWT(`{"exp":0}`), 0, false},
		{"exp negative", makeJWT(`{"exp":-5}`), 0, false},
		{"exp absurd", makeJWT(`{"exp":1e300}`), 0, false},
		{"exp word", makeJWT(`{"exp":"soon"}`), 0, false},
		{"exp object", makeJWT(`{"exp":{"a":1}}`), 0, false},
		{"payload not JSON", makeJWT(`not json`), 0, false},
		{"payload JSON array", makeJWT(`[1,2]`), 0, false},
		{"payload not base64", "a.%%%.c", 0, false},
		{"two parts", "a." + enc.EncodeToString([]byte(`{"exp":1700000000}`)), 0, false},
		{"four parts", makeJWT(`{"exp":1700000000}`) + ".d", 0, false},
		{"opaque token", "tok-1", 0, false},
		{"empty", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := jwtExpiry(tt.tok)
			if ok != tt.wantOK {
				t.Fatalf("JWTExpiry(%q) ok = %v, want %v", tt.tok, ok, tt.wantOK)
			}
			if ok && got.Unix() != tt.want {
				t.Fatalf("JWTExpiry(%q) = %d, want %d", tt.tok, got.Unix(), tt.want)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Error shapes

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

func TestEngineBodyLimit(t *testing.T) {
	// A valid answer padded with whitespace to exactly 1 MiB is read whole;
	// one byte more is refused.
	valid := `{"token_type":"Bearer","expires_in":60,"access_token":"abc"}`
	for _, tc := range []struct {
		size   int
		wantOK bool
	}{{maxBodyBytes, true}, {maxBodyBytes + 1, false}} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			body := valid + strings.Repeat(" ", tc.size-len(valid))
			srv := newTokenServer(t, answer(200, "application/json", body))
			e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
			tok, err := e.Get(testCtx(t))
			if tc.wantOK {
				if err != nil || tok.Value != "abc" {
					t.Fatalf("Get = %v, %v; want token abc", tok, err)
				}
				return
			}
			var te *tokenError
			if !errors.As(err, &te) || te.Kind != kindInvalidResponse {
				t.Fatalf("Get error = %v, want an invalid_response TokenError", err)
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

func TestEngineRedirects(t *testing.T) {
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect, http.StatusFound} {
		t.Run(fmt.Sprintf("%d to another host is not followed", code), func(t *testing.T) {
			other := newTokenServer(t, okToken(3600))
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				http.Redirect(w, r, other.tokenURL(), code)
			})
			e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
			te := mustGetErr(t, e)
			if other.count() != 0 {
				t.Fatalf("the other host received %d requests (and the secret)", other.count())
			}
			if !strings.Contains(te.Error(), "redirect") {
				t.Errorf("Error() = %q, want it to mention the redirect", te.Error())
			}
			if te.Kind != kindRejected {
				t.Errorf("Kind = %v, want rejected: a redirect elsewhere is a configuration problem", te.Kind)
			}
			if leaksSecret(te.Error()) {
				t.Errorf("Error() leaks the secret: %q", te.Error())
			}
		})
	}
	t.Run("307 on the same host is followed with the body", func(t *testing.T) {
		var bodies []string
		var mu sync.Mutex
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies = append(bodies, r.Method+" "+r.URL.Path+" "+string(b))
			mu.Unlock()
			if r.URL.Path != deskotest.TokenPath {
				http.Redirect(w, r, deskotest.TokenPath, http.StatusTemporaryRedirect)
				return
			}
			if !strings.Contains(string(b), tsSecret) {
				answer(400, "application/json", `{"error":"invalid_request"}`)(w, r, n)
				return
			}
			okToken(3600)(w, r, n)
		})
		e := newTestEngine(t, srv.URL+"/old/token", newFakeClock(t))
		tok := mustGet(t, e)
		if tok.Value != "tok-2" || srv.count() != 2 {
			t.Fatalf("got token %q after %d requests, want tok-2 after 2 (requests: %q)", tok.Value, srv.count(), bodies)
		}
		if !strings.HasPrefix(bodies[1], "POST "+deskotest.TokenPath+" {") {
			t.Fatalf("redirected request = %q, want a POST with the JSON body", bodies[1])
		}
	})
	t.Run("same-host redirect loop stops", func(t *testing.T) {
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			http.Redirect(w, r, fmt.Sprintf("/loop/%d", n), http.StatusTemporaryRedirect)
		})
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		mustGetErr(t, e)
		if n := srv.count(); n > 4 {
			t.Fatalf("followed %d redirects", n-1)
		}
	})
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	tests := []struct {
		name           string
		status         int
		retryAfter     func() string
		wantRetryAfter [2]time.Duration // range of TokenError.RetryAfter
		wantBackoff    [2]time.Duration // range of the first backoff
	}{
		{"429 seconds", 429, func() string { return "30" }, [2]time.Duration{30 * time.Second, 30 * time.Second}, [2]time.Duration{30 * time.Second, 30 * time.Second}},
		{"503 seconds", 503, func() string { return "120" }, [2]time.Duration{2 * time.Minute, 2 * time.Minute}, [2]time.Duration{2 * time.Minute, 2 * time.Minute}},
		{"429 HTTP date", 429, func() string { return time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat) }, [2]time.Duration{85 * time.Second, 90 * time.Second}, [2]time.Duration{85 * time.Second, 90 * time.Second}},
		{"429 zero keeps normal backoff", 429, func() string { return "0" }, [2]time.Duration{0, 0}, [2]time.Duration{time.Second, time.Second}},
		{"429 unreadable keeps normal backoff", 429, func() string { return "soon" }, [2]time.Duration{0, 0}, [2]time.Duration{time.Second, time.Second}},
		{"429 a day is capped at 10 minutes", 429, func() string { return "86400" }, [2]time.Duration{10 * time.Minute, 10 * time.Minute}, [2]time.Duration{10 * time.Minute, 10 * time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				answer(tt.status, "application/json", `{"message":"slow down"}`, "Retry-After", tt.retryAfter())(w, r, n)
			})
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk)
			te := mustGetErr(t, e)
			if te.Kind != kindTransient {
				t.Errorf("Kind = %v, want transient", te.Kind)
			}
			if te.RetryAfter < tt.wantRetryAfter[0] || te.RetryAfter > tt.wantRetryAfter[1] {
				t.Errorf("RetryAfter = %v, want within %v", te.RetryAfter, tt.wantRetryAfter)
			}
			clk.BlockUntilTimers(1)
			backoff := onlyPending(t, clk)
			if backoff < tt.wantBackoff[0] || backoff > tt.wantBackoff[1] {
				t.Errorf("next attempt in %v, want within %v", backoff, tt.wantBackoff)
			}
			if backoff < te.RetryAfter {
				t.Errorf("next attempt in %v, sooner than the server's Retry-After %v", backoff, te.RetryAfter)
			}
			// Get fails fast during the backoff and says when to retry.
			te2 := mustGetErr(t, e)
			if te2.RetryAfter != backoff || srv.count() != 1 {
				t.Errorf("during backoff: RetryAfter = %v (want %v), %d requests (want 1)", te2.RetryAfter, backoff, srv.count())
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Single flight

// waitSignalCtx reports every call of Done on waiting: the engine calls it
// when a caller starts waiting for a fetch, which is how the tests know all
// callers have piled up on the same fetch.
type waitSignalCtx struct {
	context.Context
	waiting chan<- struct{}
}

func (c waitSignalCtx) Done() <-chan struct{} {
	c.waiting <- struct{}{}
	return c.Context.Done()
}

func TestEngineSingleFlight(t *testing.T) {
	const callers = 100
	srv := newTokenServer(t, okToken(3600))
	release := srv.holdRequests()
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))

	waiting := make(chan struct{}, 10*callers)
	ctx := waitSignalCtx{testCtx(t), waiting}
	type result struct {
		tok *accessToken
		err error
	}
	results := make(chan result, callers)
	for range callers {
		go func() {
			tok, err := e.Get(ctx)
			results <- result{tok, err}
		}()
	}
	for i := range callers {
		waitChan(t, waiting, fmt.Sprintf("caller %d to wait", i+1))
	}
	srv.waitArrival(1)
	if st := e.Status(); st.State != stateRefreshing {
		t.Errorf("State while fetching = %s, want %s", st.State, stateRefreshing)
	}
	release()
	var first *accessToken
	for range callers {
		r := waitChan(t, results, "a caller's result")
		if r.err != nil {
			t.Fatalf("Get: %v", r.err)
		}
		if first == nil {
			first = r.tok
		}
		if r.tok != first {
			t.Fatalf("callers got different tokens %q and %q", first.Value, r.tok.Value)
		}
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d callers caused %d token requests, want 1", callers, n)
	}
	if st := e.Status(); st.Fetches != 1 || st.State != stateFresh {
		t.Errorf("Status = %+v, want 1 fetch and state fresh", st)
	}
}

func TestEngineSingleFlightCancelledCaller(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	release := srv.holdRequests()
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))

	waiting := make(chan struct{}, 10)
	ctxA, cancelA := context.WithCancel(testCtx(t))
	defer cancelA()
	errA := make(chan error, 1)
	go func() {
		_, err := e.Get(waitSignalCtx{ctxA, waiting})
		errA <- err
	}()
	type result struct {
		tok *accessToken
		err error
	}
	resB := make(chan result, 1)
	go func() {
		tok, err := e.Get(waitSignalCtx{testCtx(t), waiting})
		resB <- result{tok, err}
	}()
	waitChan(t, waiting, "caller A to wait")
	waitChan(t, waiting, "caller B to wait")
	srv.waitArrival(1)

	cancelA()
	// A returns while the token request is still held by the server.
	err := waitChan(t, errA, "the cancelled caller to return")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	select {
	case r := <-resB:
		t.Fatalf("caller B returned (%v, %v) before the token request finished", r.tok, r.err)
	default:
	}

	release()
	r := waitChan(t, resB, "caller B's result")
	if r.err != nil || r.tok.Value != "tok-1" {
		t.Fatalf("caller B got %v, %v; want tok-1", r.tok, r.err)
	}
	if p := e.Peek(); p != r.tok {
		t.Fatalf("the fetch A gave up on did not fill the cache (Peek = %v)", p)
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

func TestEngineWarmUp(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	release := srv.holdRequests()
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
	e.WarmUp() // must not block although the server holds the request
	srv.waitArrival(1)
	e.WarmUp() // joins nothing, starts nothing: one is in flight
	release()
	if tok := mustGet(t, e); tok.Value != "tok-1" {
		t.Fatalf("Get = %q, want tok-1", tok.Value)
	}
	e.WarmUp() // a valid token is held: no fetch
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// ---------------------------------------------------------------------------
// Proactive refresh

func TestEngineProactiveRefresh(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)

	tok1 := mustGet(t, e)
	if tok1.Value != "tok-1" {
		t.Fatalf("first token %q", tok1.Value)
	}
	clk.BlockUntilTimers(1) // the refresher is asleep until the refresh time

	if fired := clk.Advance(70 * time.Second); fired != 0 {
		t.Fatalf("a timer fired at 70s of a 100s token")
	}
	if got := mustGet(t, e); got != tok1 {
		t.Fatalf("at 70s Get = %q, want the first token", got.Value)
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests at 70s, want 1", n)
	}

	release := srv.holdRequests()
	if fired := clk.Advance(11 * time.Second); fired != 1 {
		t.Fatalf("%d timers fired at 81s, want the refresh timer", fired)
	}
	srv.waitArrival(2) // the background refresh is in flight and held
	for range 3 {
		if got := mustGet(t, e); got != tok1 {
			t.Fatalf("during the refresh Get = %q, want the old, still valid token", got.Value)
		}
	}
	if st := e.Status(); st.State != stateRefreshing || st.ExpiresAt.IsZero() {
		t.Errorf("Status during the refresh = %+v, want refreshing with an expiry", st)
	}
	release()
	clk.BlockUntilTimers(1) // the refresh finished and the next one is scheduled

	tok2 := mustGet(t, e)
	if tok2.Value != "tok-2" {
		t.Fatalf("after the refresh Get = %q, want tok-2", tok2.Value)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d token requests, want exactly 2", n)
	}
	// The new token is refreshed at 77.5% of its own lifetime.
	if got := onlyPending(t, clk); got != 77500*time.Millisecond {
		t.Errorf("next refresh in %v, want 77.5s", got)
	}
}

func TestEngineRefreshShortTokens(t *testing.T) {
	// 3s tokens, time moving in 1s steps for 30s (ten lifetimes): a
	// refresh is due 2.325s into each token's life and runs at the next
	// step, so tokens are fetched at 0s, 3s, 6s … 30s: 11 fetches, about
	// one per lifetime and certainly no fetch loop.
	srv := newTokenServer(t, okToken(3))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	mustGet(t, e)
	clk.BlockUntilTimers(1)
	for range 30 {
		if clk.Advance(time.Second) > 0 {
			clk.BlockUntilTimers(1)
		}
		tok := mustGet(t, e)
		if !tok.Valid(clk.Now()) {
			t.Fatalf("at +%v Get returned a token that is not valid", clk.Since())
		}
	}
	if n := srv.count(); n != 11 {
		t.Fatalf("%d token requests over 10 lifetimes, want 11", n)
	}
}

func TestEngineRefreshNeverServesExpiredToken(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok1 := mustGet(t, e)
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(500, "application/json", `{"error":500,"message":"Internal server error"}`))
	// Move in 1s steps up to 99s: the refresh (77.5s) and its retries
	// (1s, 2s, 4s, 8s later…) fail; the old token is served throughout.
	for clk.Since() < 99*time.Second {
		if clk.Advance(time.Second) > 0 {
			clk.BlockUntilTimers(1)
		}
		if got := mustGet(t, e); got != tok1 {
			t.Fatalf("at +%v Get = %q, want the old token", clk.Since(), got.Value)
		}
	}
	before := srv.count()
	if before < 2 {
		t.Fatalf("only %d token requests: the refresh was not attempted", before)
	}
	if st := e.Status(); st.State != stateBackingOff || st.ExpiresAt.IsZero() {
		t.Fatalf("Status = %+v, want backing_off while still holding a token", st)
	}

	// One nanosecond before its expiry the token is still served; at its
	// expiry it is not.
	clk.Advance(time.Second - time.Nanosecond)
	if got := mustGet(t, e); got != tok1 {
		t.Fatalf("1ns before expiry Get = %q, want the old token", got.Value)
	}
	clk.Advance(time.Nanosecond)
	if p := e.Peek(); p != nil {
		t.Fatalf("Peek returned the expired token")
	}
	// Fail fast: no token request per call while backing off.
	for range 20 {
		te := mustGetErr(t, e)
		if te.Kind != kindTransient || te.Status != 500 || te.RetryAfter <= 0 {
			t.Fatalf("Get error = %+v, want the last transient 500 with a RetryAfter", te)
		}
	}
	if n := srv.count(); n != before {
		t.Fatalf("Gets after expiry made %d token requests while backing off", n-before)
	}
	if st := e.Status(); st.State != stateBackingOff || !st.ExpiresAt.IsZero() {
		t.Fatalf("Status = %+v, want backing_off without an expiry", st)
	}
}

// ---------------------------------------------------------------------------
// Backoff

func TestEngineBackoff(t *testing.T) {
	secs := func(s ...int) []time.Duration {
		out := make([]time.Duration, len(s))
		for i, v := range s {
			out[i] = time.Duration(v) * time.Second
		}
		return out
	}
	tests := []struct {
		name     string
		r        responder
		wantKind errorKind
		waits    []time.Duration
	}{
		{"transient 500", answer(500, "application/json", `{"error":500,"message":"down"}`), kindTransient, secs(1, 2, 4, 8, 16, 32, 60, 60, 60)},
		{"transient 429 without Retry-After", answer(429, "", ""), kindTransient, secs(1, 2, 4, 8, 16, 32, 60, 60)},
		{"invalid response", answer(200, "text/html", "<html></html>"), kindInvalidResponse, secs(1, 2, 4, 8, 16, 32, 60, 60)},
		{"rejected 401", answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`), kindRejected, secs(5, 10, 20, 40, 80, 160, 300, 300)},
		{"rejected 403", answer(403, "text/plain", "Forbidden"), kindRejected, secs(5, 10, 20, 40, 80, 160, 300, 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.r)
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk)
			if te := mustGetErr(t, e); te.Kind != tt.wantKind {
				t.Fatalf("Kind = %v, want %v", te.Kind, tt.wantKind)
			}
			for i, want := range tt.waits {
				clk.BlockUntilTimers(1)
				if got := onlyPending(t, clk); got != want {
					t.Fatalf("after failure %d the next attempt is in %v, want %v", i+1, got, want)
				}
				if te := mustGetErr(t, e); te.RetryAfter != want {
					t.Fatalf("after failure %d Get's RetryAfter = %v, want %v", i+1, te.RetryAfter, want)
				}
				if n := srv.count(); n != int64(i+1) {
					t.Fatalf("after failure %d: %d token requests", i+1, n)
				}
				// Just before the step ends nothing happens.
				if clk.Advance(want-time.Millisecond) != 0 {
					t.Fatalf("the retry fired early")
				}
				if clk.Advance(time.Millisecond) != 1 {
					t.Fatalf("the retry did not fire after %v", want)
				}
			}
		})
	}
}

func TestEngineBackoffJitter(t *testing.T) {
	tests := []struct {
		name   string
		rand   float64
		status int
		want   time.Duration
	}{
		{"transient, lowest jitter", 0, 500, 800 * time.Millisecond},
		{"transient, highest jitter", 0.999, 500, time.Duration(float64(time.Second) * (0.8 + 0.4*0.999))},
		{"rejected, lowest jitter", 0, 401, 4 * time.Second},
		{"rejected, highest jitter", 0.999, 401, time.Duration(float64(5*time.Second) * (0.8 + 0.4*0.999))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, answer(tt.status, "", ""))
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk, func(c *engineConfig) { c.Rand = fixedRand(tt.rand) })
			mustGetErr(t, e)
			clk.BlockUntilTimers(1)
			if got := onlyPending(t, clk); got != tt.want {
				t.Fatalf("first backoff = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEngineBackoffRecovery(t *testing.T) {
	tests := []struct {
		name string
		fail responder
		step time.Duration // the backoff after three failures
	}{
		{"transient", answer(500, "", ""), 4 * time.Second},
		{"rejected", answer(401, "application/json", `{"error":401,"message":"Client authentication failed"}`), 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.fail)
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk)
			mustGetErr(t, e)
			for range 2 {
				clk.BlockUntilTimers(1)
				clk.Advance(onlyPending(t, clk))
			}
			clk.BlockUntilTimers(1)
			if got := onlyPending(t, clk); got != tt.step {
				t.Fatalf("after 3 failures the backoff is %v, want %v", got, tt.step)
			}
			if n := srv.count(); n != 3 {
				t.Fatalf("%d token requests, want 3", n)
			}

			// The server is fixed in the middle of the step.
			clk.Advance(tt.step / 2)
			srv.setRespond(okToken(3600))
			mustGetErr(t, e) // still failing fast until the step ends
			if n := srv.count(); n != 3 {
				t.Fatalf("Get during the backoff made a request")
			}
			if clk.Advance(tt.step-tt.step/2) != 1 {
				t.Fatal("the retry did not fire at the end of the step")
			}
			clk.BlockUntilTimers(1)
			tok := mustGet(t, e)
			if tok.Value != "tok-4" || srv.count() != 4 {
				t.Fatalf("after recovery Get = %q with %d requests, want tok-4 with 4", tok.Value, srv.count())
			}
			st := e.Status()
			if st.State != stateFresh || st.LastError != "" || !st.NextRetryAt.IsZero() {
				t.Fatalf("Status after recovery = %+v", st)
			}
			// Back to the normal schedule: the next timer is the refresh.
			if got := onlyPending(t, clk); got != time.Duration(float64(time.Hour)*0.775) {
				t.Fatalf("after recovery the next wake is in %v, want the refresh", got)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// engineStatus

func TestEngineStatus(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)

	checkClean := func(st engineStatus, tok *accessToken) {
		t.Helper()
		b, _ := json.Marshal(st)
		for _, s := range []string{st.LastError, string(b)} {
			if leaksSecret(s) {
				t.Errorf("Status leaks the secret: %s", s)
			}
			if tok != nil && strings.Contains(s, tok.Value) {
				t.Errorf("Status leaks the token: %s", s)
			}
		}
	}

	st := e.Status()
	if st.State != stateEmpty || st.Fetches != 0 || st.LastError != "" || !st.ExpiresAt.IsZero() || !st.LastFetchAt.IsZero() {
		t.Fatalf("new engine Status = %+v, want empty", st)
	}

	tok := mustGet(t, e)
	clk.BlockUntilTimers(1)
	st = e.Status()
	if st.State != stateFresh || st.Fetches != 1 || st.LastError != "" || st.LastFetchAt.IsZero() {
		t.Fatalf("Status after a token = %+v, want fresh", st)
	}
	if want := tok.wallExpiry; !st.ExpiresAt.Equal(want) || st.ExpiresAt.Sub(clk.Now()) != time.Hour {
		t.Errorf("ExpiresAt = %v, want %v (one hour after the fetch)", st.ExpiresAt, want)
	}
	checkClean(st, tok)

	// A failing refresh: backing off, still holding the token. The server
	// echoes the secret.
	srv.setRespond(echoSecret(500, "application/json", func(s string) string {
		return `{"error":500,"message":"database down while checking ` + s + `"}`
	}))
	if _, err := e.Refresh(testCtx(t)); err == nil {
		t.Fatal("Refresh against a failing server succeeded")
	}
	st = e.Status()
	if st.State != stateBackingOff || st.ExpiresAt.IsZero() || st.NextRetryAt.IsZero() || st.Fetches != 2 {
		t.Fatalf("Status after a failed refresh = %+v, want backing_off with the token still held", st)
	}
	if !strings.Contains(st.LastError, "500") {
		t.Errorf("LastError = %q, want the status", st.LastError)
	}
	if hasMonotonic(st.NextRetryAt) || st.NextRetryAt.Sub(clk.Now()) != time.Second {
		t.Errorf("NextRetryAt = %v, want a wall time 1s from now", st.NextRetryAt)
	}
	checkClean(st, tok)

	// An answer whose token is unusable: its value must not leak either.
	srv.setRespond(answer(200, "application/json", `{"access_token":"leaky-token-value\r\n","token_type":"mac"}`))
	e.Refresh(testCtx(t))
	st = e.Status()
	if st.State != stateBackingOff || strings.Contains(st.LastError, "leaky-token-value") {
		t.Errorf("Status after an unusable answer = %+v", st)
	}

	// Refused credentials.
	srv.setRespond(echoSecret(401, "application/json", func(s string) string {
		return `{"error":401,"id":"oauth_server","message":"Client authentication failed: ` + s + `"}`
	}))
	if _, err := e.Refresh(testCtx(t)); err == nil {
		t.Fatal("Refresh against a refusing server succeeded")
	}
	st = e.Status()
	if st.State != stateRejected || !strings.Contains(st.LastError, "Client authentication failed") {
		t.Fatalf("Status after a refusal = %+v, want rejected", st)
	}
	checkClean(st, tok)

	// Recovery.
	srv.setRespond(okToken(3600))
	tok2, err := e.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	st = e.Status()
	if st.State != stateFresh || st.LastError != "" || st.Fetches != 5 {
		t.Fatalf("Status after recovery = %+v", st)
	}
	checkClean(st, tok2)
}

// ---------------------------------------------------------------------------
// Close

func TestEngineClose(t *testing.T) {
	t.Run("stops the refresher", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		clk := newFakeClock(t)
		e := newTestEngine(t, srv.tokenURL(), clk)
		tok := mustGet(t, e)
		clk.BlockUntilTimers(1)

		closed := make(chan error, 1)
		go func() { closed <- e.Close() }()
		if err := waitChan(t, closed, "Close to return"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if p := clk.Pending(); len(p) != 0 {
			t.Fatalf("after Close timers are still armed: %v", p)
		}
		if err := e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		// A request still in flight during a reload gets the cached token.
		if got := mustGet(t, e); got != tok {
			t.Fatalf("Get after Close = %q, want the cached token", got.Value)
		}
		// No background refresh any more: time passes, nothing is fetched.
		clk.Advance(2 * time.Hour)
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests after Close, want 1", n)
		}
	})
	t.Run("empty engine still answers", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		e.Close()
		if tok := mustGet(t, e); tok.Value != "tok-1" {
			t.Fatalf("Get after Close = %q", tok.Value)
		}
	})
	t.Run("empty engine with a failing server still answers", func(t *testing.T) {
		srv := newTokenServer(t, answer(503, "", ""))
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		e.Close()
		if te := mustGetErr(t, e); te.Status != 503 {
			t.Fatalf("Get after Close error = %v", te)
		}
		mustGetErr(t, e) // fail fast, no panic
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
	t.Run("does not wait for a fetch in flight", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		release := srv.holdRequests()
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		e.WarmUp()
		srv.waitArrival(1)
		closed := make(chan error, 1)
		go func() { closed <- e.Close() }()
		waitChan(t, closed, "Close to return while a fetch is held")
		release()
		if tok := mustGet(t, e); tok.Value != "tok-1" {
			t.Fatalf("Get = %q, want tok-1", tok.Value)
		}
	})
}

// ---------------------------------------------------------------------------
// Monotonic time

// TestEngineExpiryUsesMonotonicClock checks what can honestly be checked
// about wall-clock jumps.
//
// A wall-clock jump cannot be simulated here: the engine compares times
// with time.Time.Before/Sub, which use the monotonic reading when both
// sides have one, and package time offers no way to build a time whose
// wall and monotonic readings disagree (Add moves both), while a test
// cannot move the machine's wall clock. What the engine must do to be
// immune is keep the monotonic reading on every time it compares
// (obtained, expiry, refreshAt, next attempt): Round(0), UTC(), In(),
// Truncate() or a JSON round trip on that path would strip it, and these
// assertions would fail. The second half checks that validity follows the
// clock's offsets to the nanosecond.
func TestEngineExpiryUsesMonotonicClock(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	if !hasMonotonic(clk.Now()) {
		t.Fatal("the fake clock lost the monotonic reading")
	}
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok := mustGet(t, e)
	for name, v := range map[string]time.Time{"obtained": tok.obtained, "expiry": tok.expiry, "refreshAt": tok.refreshAt} {
		if !hasMonotonic(v) {
			t.Errorf("token %s = %v has no monotonic reading", name, v)
		}
	}
	if hasMonotonic(tok.wallExpiry) {
		t.Errorf("wallExpiry %v carries a monotonic reading (it is for display)", tok.wallExpiry)
	}
	if d := tok.expiry.Sub(tok.obtained); d != 100*time.Second {
		t.Fatalf("lifetime = %v, want 100s", d)
	}
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(500, "", ""))
	clk.Advance(100*time.Second - time.Nanosecond) // the refresh at 77.5s fails
	clk.BlockUntilTimers(1)
	e.mu.Lock()
	next := e.nextAttempt
	e.mu.Unlock()
	if !hasMonotonic(next) {
		t.Errorf("next attempt %v has no monotonic reading", next)
	}
	if p := e.Peek(); p != tok {
		t.Fatalf("1ns before expiry Peek = %v, want the token", p)
	}
	clk.Advance(time.Nanosecond)
	if p := e.Peek(); p != nil {
		t.Fatalf("at expiry Peek still returns the token")
	}
}
