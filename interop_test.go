package deskoauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goauth2 "github.com/go-oauth2/oauth2/v4"
	goerrors "github.com/go-oauth2/oauth2/v4/errors"
	"github.com/go-oauth2/oauth2/v4/manage"
	"github.com/go-oauth2/oauth2/v4/models"
	"github.com/go-oauth2/oauth2/v4/server"
	"github.com/go-oauth2/oauth2/v4/store"
)

// Interoperability with a third-party OAuth2 server: go-oauth2/oauth2 v4,
// run in-process on a loopback httptest server, for the RFC 6749 styles
// (auth_style form and basic). go-oauth2 reads the token request as a form
// only, so the json style (Desko's) is not tested against it.
//
// go-oauth2 v4.5.4's own ClientBasicHandler takes the Basic credentials as
// they come (r.BasicAuth, no form-decoding), although RFC 6749 §2.3.1 says
// both parts are form-encoded before Basic encoding, as x/oauth2 (and so
// auth_style basic) does. A secret with reserved characters is therefore
// rejected by the stock handler: TestInteropGoOAuth2StockBasicHandlerDoesNotFormDecode
// pins that down, and the basic-style tests use rfcBasicHandler, a
// ClientInfoHandler that decodes as the RFC says.

const (
	interopClientID = "interop-client"
	// interopSecret has ':', '=', '%' (followed by hex digits, to catch a
	// double decode), '+', a space, '/' and non-ASCII characters.
	interopSecret = "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop"
	// interopWrongSecret is as tricky, and wrong.
	interopWrongSecret = "Wr0ng:s3=cr%2Ft é-not-the-secret"
)

// rfcBasicHandler reads client_secret_basic credentials as RFC 6749
// §2.3.1 says: each part of the Basic credentials form-decoded. It accepts
// nothing else (no form fallback), so a success proves the header was used.
func rfcBasicHandler(r *http.Request) (string, string, error) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return "", "", goerrors.ErrInvalidClient
	}
	id, err := url.QueryUnescape(user)
	if err != nil {
		return "", "", goerrors.ErrInvalidClient
	}
	secret, err := url.QueryUnescape(pass)
	if err != nil {
		return "", "", goerrors.ErrInvalidClient
	}
	return id, secret, nil
}

// goOAuth2 is a go-oauth2 authorization server with one confidential client
// allowed the client_credentials grant, its token handler on a loopback
// httptest server.
type goOAuth2 struct {
	*httptest.Server
	srv      *server.Server
	mgr      *manage.Manager
	requests atomic.Int64
}

func newGoOAuth2(t *testing.T, secret string, accessExp time.Duration, clientInfo server.ClientInfoHandler) *goOAuth2 {
	t.Helper()
	mgr := manage.NewDefaultManager()
	mgr.SetClientTokenCfg(&manage.Config{AccessTokenExp: accessExp})
	mgr.MustTokenStorage(store.NewMemoryTokenStore())
	clients := store.NewClientStore()
	if err := clients.Set(interopClientID, &models.Client{ID: interopClientID, Secret: secret, Domain: "http://127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	mgr.MapClientStorage(clients)

	srv := server.NewServer(server.NewConfig(), mgr)
	srv.SetAllowedGrantType(goauth2.ClientCredentials)
	srv.SetClientInfoHandler(clientInfo)

	g := &goOAuth2{srv: srv, mgr: mgr}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth/token", func(w http.ResponseWriter, r *http.Request) {
		g.requests.Add(1)
		_ = srv.HandleTokenRequest(w, r)
	})
	g.Server = httptest.NewServer(mux)
	t.Cleanup(g.Close)
	return g
}

func (g *goOAuth2) tokenURL() string { return g.URL + "/oauth/token" }

// mustValid checks with go-oauth2's manager that it issued tok to the
// interop client and that tok is still valid.
func (g *goOAuth2) mustValid(t *testing.T, tok string) goauth2.TokenInfo {
	t.Helper()
	ti, err := g.mgr.LoadAccessToken(context.Background(), tok)
	if err != nil {
		t.Fatalf("go-oauth2 does not accept the token: %v", err)
	}
	if ti.GetClientID() != interopClientID {
		t.Fatalf("token issued to %q, want %q", ti.GetClientID(), interopClientID)
	}
	return ti
}

// newInteropEngine is an engine for the interop client.
func newInteropEngine(t *testing.T, tokenURL string, clk engineClock, style authStyle, secret string) *tokenEngine {
	t.Helper()
	return newTestEngine(t, tokenURL, clk, func(c *engineConfig) {
		c.ClientID = interopClientID
		c.ClientSecret = secret
		c.AuthStyle = style
	})
}

// assertNoSecretIn is the leak check for each of the interop client's
// secrets.
func assertNoSecretIn(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		newLeakCheck(interopClientID, s).assertNone(t, what, text)
	}
}

var interopStyles = []struct {
	name       string
	style      authStyle
	clientInfo server.ClientInfoHandler
}{
	{"form", authForm, server.ClientFormHandler}, // go-oauth2's own handler
	{"basic", authBasic, rfcBasicHandler},
}

// accessToken obtained and accepted by go-oauth2, expires_in (2h) taken at face
// value, the refresh scheduled from it, and a token that the server revoked
// replaced after Invalidate.
func TestInteropGoOAuth2Engine(t *testing.T) {
	for _, tc := range interopStyles {
		t.Run(tc.name, func(t *testing.T) {
			as := newGoOAuth2(t, interopSecret, 2*time.Hour, tc.clientInfo)
			clk := newFakeClock(t)
			e := newInteropEngine(t, as.tokenURL(), clk, tc.style, interopSecret)

			tok := mustGet(t, e)
			ti := as.mustValid(t, tok.Value)
			if got := ti.GetAccessExpiresIn(); got != 2*time.Hour {
				t.Fatalf("go-oauth2 issued a token for %v, want 2h", got)
			}
			if got := e.Status().ExpiresAt.Sub(clk.Now().Round(0)); got != 2*time.Hour {
				t.Errorf("engine expiry in %v, want the 2h of expires_in", got)
			}
			clk.BlockUntilTimers(1)
			if got := onlyPending(t, clk); got != 93*time.Minute {
				t.Errorf("refresh in %v, want 93m (77.5%% of 2h)", got)
			}
			if again := mustGet(t, e); again != tok {
				t.Fatalf("second Get fetched a new token")
			}
			if n := as.requests.Load(); n != 1 {
				t.Fatalf("%d token requests, want 1", n)
			}

			// The server revokes the token; the upstream's 401 makes the
			// handler invalidate it; the next Get has a new, valid one.
			if err := as.mgr.RemoveAccessToken(context.Background(), tok.Value); err != nil {
				t.Fatal(err)
			}
			if _, err := as.mgr.LoadAccessToken(context.Background(), tok.Value); err == nil {
				t.Fatal("go-oauth2 still accepts the revoked token")
			}
			e.Invalidate(tok)
			tok2 := mustGet(t, e)
			if tok2 == tok || tok2.Value == tok.Value {
				t.Fatalf("after Invalidate Get returned the revoked token")
			}
			as.mustValid(t, tok2.Value)
			if n := as.requests.Load(); n != 2 {
				t.Errorf("%d token requests, want 2", n)
			}
		})
	}
}

// A token that lives a few seconds: its 3s expires_in decides the refresh
// (at 2.325s), which gets a new token from go-oauth2.
func TestInteropGoOAuth2ShortLivedTokens(t *testing.T) {
	for _, tc := range interopStyles {
		t.Run(tc.name, func(t *testing.T) {
			as := newGoOAuth2(t, interopSecret, 3*time.Second, tc.clientInfo)
			clk := newFakeClock(t)
			e := newInteropEngine(t, as.tokenURL(), clk, tc.style, interopSecret)

			tok1 := mustGet(t, e)
			if got := as.mustValid(t, tok1.Value).GetAccessExpiresIn(); got != 3*time.Second {
				t.Fatalf("go-oauth2 issued a token for %v, want 3s", got)
			}
			if got := e.Status().ExpiresAt.Sub(clk.Now().Round(0)); got != 3*time.Second {
				t.Errorf("engine expiry in %v, want 3s", got)
			}
			clk.BlockUntilTimers(1)
			if got := onlyPending(t, clk); got != 2325*time.Millisecond {
				t.Fatalf("refresh in %v, want 2.325s", got)
			}
			if fired := clk.Advance(2325 * time.Millisecond); fired != 1 {
				t.Fatalf("%d timers fired, want the refresh", fired)
			}
			clk.BlockUntilTimers(1) // the refresh is done and the next one armed
			tok2 := mustGet(t, e)
			if tok2.Value == tok1.Value {
				t.Fatal("the refresh kept the old token")
			}
			as.mustValid(t, tok2.Value)
			if n := as.requests.Load(); n != 2 {
				t.Errorf("%d token requests, want 2", n)
			}
			if !tok2.Valid(clk.Now()) || tok2.Valid(clk.Now().Add(3*time.Second)) {
				t.Errorf("the new token should live exactly 3s from its fetch")
			}
		})
	}
}

// A wrong secret: go-oauth2 answers 401 invalid_client; the engine reports
// a rejection that names the OAuth error code and holds no secret.
func TestInteropGoOAuth2WrongSecret(t *testing.T) {
	for _, tc := range interopStyles {
		t.Run(tc.name, func(t *testing.T) {
			as := newGoOAuth2(t, interopSecret, 2*time.Hour, tc.clientInfo)
			e := newInteropEngine(t, as.tokenURL(), newFakeClock(t), tc.style, interopWrongSecret)

			te := mustGetErr(t, e)
			if te.Kind != kindRejected {
				t.Errorf("Kind = %v, want rejected", te.Kind)
			}
			if te.Status != http.StatusUnauthorized {
				t.Errorf("Status = %d, want 401", te.Status)
			}
			msg := te.Error()
			if !strings.Contains(msg, "invalid_client") {
				t.Errorf("error %q does not name invalid_client", msg)
			}
			assertNoSecretIn(t, "the error", msg, interopWrongSecret, interopSecret)
			if st := e.Status(); st.State != stateRejected {
				t.Errorf("state %s, want rejected", st.State)
			} else {
				assertNoSecretIn(t, "the status", st.LastError, interopWrongSecret, interopSecret)
			}
			if n := as.requests.Load(); n != 1 {
				t.Errorf("%d token requests, want exactly 1 (no auth style probing)", n)
			}
		})
	}
}

// go-oauth2's stock ClientBasicHandler compares the Basic password as sent,
// without the form-decoding of RFC 6749 §2.3.1. An RFC client (x/oauth2,
// hence auth_style basic) with a secret that has reserved characters is
// refused; the same secret sent raw is accepted; a secret of unreserved
// characters works either way.
func TestInteropGoOAuth2StockBasicHandlerDoesNotFormDecode(t *testing.T) {
	as := newGoOAuth2(t, interopSecret, time.Hour, server.ClientBasicHandler)
	e := newInteropEngine(t, as.tokenURL(), newFakeClock(t), authBasic, interopSecret)
	te := mustGetErr(t, e)
	if te.Kind != kindRejected || te.Status != http.StatusUnauthorized || !strings.Contains(te.Error(), "invalid_client") {
		t.Errorf("stock handler with a form-encoded secret: %v (kind %v), want 401 invalid_client", te, te.Kind)
	}
	assertNoSecretIn(t, "the error", te.Error(), interopSecret)

	// The raw (non-RFC) encoding of the same credentials is what it wants.
	req, err := http.NewRequest(http.MethodPost, as.tokenURL(), strings.NewReader("grant_type=client_credentials"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(interopClientID, interopSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "access_token") {
		t.Errorf("raw Basic credentials: status %d, body %s; want a token", resp.StatusCode, body)
	}

	const plain = "Plain-Secret_0.9~only-unreserved"
	as2 := newGoOAuth2(t, plain, time.Hour, server.ClientBasicHandler)
	e2 := newInteropEngine(t, as2.tokenURL(), newFakeClock(t), authBasic, plain)
	as2.mustValid(t, mustGet(t, e2).Value)
}

// go-oauth2 answers an unknown client_id with 500 server_error (its client
// store's "not found" is not an OAuth error), which the engine can only
// treat as a transient failure.
func TestInteropGoOAuth2UnknownClientIsAServerError(t *testing.T) {
	as := newGoOAuth2(t, interopSecret, time.Hour, server.ClientFormHandler)
	e := newTestEngine(t, as.tokenURL(), newFakeClock(t), func(c *engineConfig) {
		c.ClientID = "no-such-client"
		c.ClientSecret = interopSecret
		c.AuthStyle = authForm
	})
	te := mustGetErr(t, e)
	if te.Status != http.StatusInternalServerError || te.Kind != kindTransient || !strings.Contains(te.Error(), "server_error") {
		t.Errorf("unknown client: %v (kind %v), want 500 server_error, transient", te, te.Kind)
	}
	assertNoSecretIn(t, "the error", te.Error(), interopSecret)
}

// A token endpoint that echoes the request in its error answer: the secret,
// in the form each style sent it (form-encoded in the body, inside the
// Basic credentials), never reaches the error, the status or the log.
func TestInteropStyleErrorsNeverHoldTheSentSecret(t *testing.T) {
	for _, tc := range []struct {
		name   string
		style  authStyle
		secret string
	}{
		{"form, reserved characters", authForm, interopSecret},
		{"basic, reserved characters", authBasic, interopSecret},
		{"basic, plain secret", authBasic, "Plain-Secret_0.9~only-unreserved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, "%s|%s", r.Header.Get("Authorization"), b)
			}))
			t.Cleanup(echo.Close)
			e := newInteropEngine(t, echo.URL, newFakeClock(t), tc.style, tc.secret)
			te := mustGetErr(t, e)
			if te.Status != http.StatusBadRequest || !strings.Contains(te.Error(), "[REDACTED]") {
				t.Errorf("error %q: want the 400 echo with the secret redacted", te)
			}
			assertNoSecretIn(t, "the error", te.Error(), tc.secret)
			assertNoSecretIn(t, "the status", e.Status().LastError, tc.secret)
		})
	}
}

// ---------------------------------------------------------------------------
// param and token_header, in every auth style

// capturedRequest is a token request as the endpoint received it.
type capturedRequest struct {
	path   string
	header http.Header
	body   string
}

// newCaptureServer records every token request and answers a valid token.
func newCaptureServer(t *testing.T) (*httptest.Server, <-chan capturedRequest) {
	t.Helper()
	ch := make(chan capturedRequest, 64)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		select {
		case ch <- capturedRequest{path: r.URL.Path, header: r.Header.Clone(), body: string(b)}:
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"cap-tok-%d","token_type":"Bearer","expires_in":3600}`, n.Add(1))
	}))
	t.Cleanup(srv.Close)
	return srv, ch
}

// checkCaptured checks a token request of the given style that carried
// audience=https://api.example, X-Tenant: acme and the scopes "a b".
func checkCaptured(t *testing.T, style authStyle, got capturedRequest, secret string) {
	t.Helper()
	if v := got.header.Values("X-Tenant"); !reflect.DeepEqual(v, []string{"acme"}) {
		t.Errorf("X-Tenant = %q, want [acme]", v)
	}
	if ua := got.header.Get("User-Agent"); ua != "caddy-desko-auth" {
		t.Errorf("User-Agent = %q", ua)
	}
	switch style {
	case authJSON:
		if ct := got.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
		if a := got.header.Get("Authorization"); a != "" {
			t.Errorf("json style sent Authorization %q", a)
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(got.body), &fields); err != nil {
			t.Fatalf("body is not JSON: %v", err)
		}
		want := map[string]any{
			"grant_type": "client_credentials", "client_id": interopClientID, "client_secret": secret,
			"scope": "a b", "audience": "https://api.example",
		}
		if !reflect.DeepEqual(fields, want) {
			t.Errorf("JSON fields = %v\nwant          %v", fields, want)
		}
	case authForm, authBasic:
		if ct := got.header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
			t.Errorf("Content-Type = %q, want application/x-www-form-urlencoded", ct)
		}
		form, err := url.ParseQuery(got.body)
		if err != nil {
			t.Fatalf("body %q is not a form: %v", got.body, err)
		}
		want := url.Values{
			"grant_type": {"client_credentials"},
			"scope":      {"a b"},
			"audience":   {"https://api.example"},
		}
		if style == authForm {
			want["client_id"] = []string{interopClientID}
			want["client_secret"] = []string{secret}
			if a := got.header.Get("Authorization"); a != "" {
				t.Errorf("form style sent Authorization %q", a)
			}
		} else {
			wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(interopClientID)+":"+url.QueryEscape(secret)))
			if a := got.header.Get("Authorization"); a != wantAuth {
				t.Errorf("Authorization = %q\nwant            %q (each part url.QueryEscape'd)", a, wantAuth)
			}
			if strings.Contains(got.body, "client_secret") || strings.Contains(got.body, url.QueryEscape(secret)) {
				t.Errorf("basic style put the secret in the body: %q", got.body)
			}
		}
		if !reflect.DeepEqual(form, want) {
			t.Errorf("form = %v\nwant   %v", form, want)
		}
	}
}

func TestInteropParamAndTokenHeaderInEveryStyle(t *testing.T) {
	for _, style := range []authStyle{authJSON, authForm, authBasic} {
		t.Run(style.String(), func(t *testing.T) {
			srv, reqs := newCaptureServer(t)
			e := newTestEngine(t, srv.URL+"/token", newFakeClock(t), func(c *engineConfig) {
				c.ClientID = interopClientID
				c.ClientSecret = interopSecret
				c.AuthStyle = style
				c.Scopes = []string{"a", "b"}
				c.Params = map[string]string{"audience": "https://api.example"}
				c.Headers = map[string]string{"X-Tenant": "acme"}
			})
			if tok := mustGet(t, e); tok.Value != "cap-tok-1" {
				t.Fatalf("token %q", tok.Value)
			}
			checkCaptured(t, style, waitChan(t, reqs, "the token request"), interopSecret)
		})
	}
}

// The same through a Caddyfile: one site, one desko_auth per style.
func TestInteropE2EParamAndTokenHeaderInEveryStyle(t *testing.T) {
	capture, reqs := newCaptureServer(t)
	var mu sync.Mutex
	seen := map[string]string{} // path prefix → Authorization at the upstream
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[strings.Split(r.URL.Path, "/")[1]] = r.Header.Get("Authorization")
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(upstream.Close)

	e := newE2E(t, time.Hour)
	t.Setenv("DESKO_INTEROP_SECRET", interopSecret)
	var blocks strings.Builder
	for _, style := range []string{"json", "form", "basic"} {
		fmt.Fprintf(&blocks, `
	handle /%[1]s/* {
		desko_auth {
			client_id     %[2]s
			client_secret {env.DESKO_INTEROP_SECRET}
			token_url     %[3]s/%[1]s/token
			auth_style    %[1]s
			scope         a b
			param         audience https://api.example
			token_header  X-Tenant acme
			warm_up       off
		}
		reverse_proxy %[4]s
	}`, style, interopClientID, capture.URL, upstream.Listener.Addr())
	}
	e.loadRaw(proxyBase + " {" + blocks.String() + "\n}")

	for _, style := range []authStyle{authJSON, authForm, authBasic} {
		status, _, body := e.do("GET", "/"+style.String()+"/resource", "")
		if status != 200 || body != "ok" {
			t.Fatalf("%s: status %d, body %s", style, status, body)
		}
		got := waitChan(t, reqs, style.String()+" token request")
		if got.path != "/"+style.String()+"/token" {
			t.Fatalf("token request for %s went to %s", style, got.path)
		}
		t.Run(style.String(), func(t *testing.T) { checkCaptured(t, style, got, interopSecret) })
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range []string{"json", "form", "basic"} {
		if a := seen[s]; !strings.HasPrefix(a, "Bearer cap-tok-") {
			t.Errorf("%s: upstream saw Authorization %q", s, a)
		}
	}
}

// ---------------------------------------------------------------------------
// Through Caddy against go-oauth2

// newValidatingUpstream answers 200 only to requests whose bearer token the
// go-oauth2 server validates, and records the tokens it accepted.
func newValidatingUpstream(t *testing.T, as *goOAuth2) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var accepted []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti, err := as.srv.ValidationBearerToken(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			http.Error(w, "invalid token", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		accepted = append(accepted, ti.GetAccess())
		mu.Unlock()
		fmt.Fprintf(w, "hello %s", ti.GetClientID())
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), accepted...)
	}
}

func TestInteropE2EGoOAuth2ThroughCaddy(t *testing.T) {
	type site struct {
		style    authStyle
		as       *goOAuth2
		upstream *httptest.Server
		accepted func() []string
	}
	var sites []*site
	for _, tc := range interopStyles {
		s := &site{style: tc.style, as: newGoOAuth2(t, interopSecret, 2*time.Hour, tc.clientInfo)}
		s.upstream, s.accepted = newValidatingUpstream(t, s.as)
		sites = append(sites, s)
	}

	e := newE2E(t, time.Hour)
	t.Setenv("DESKO_INTEROP_SECRET", interopSecret)
	var blocks strings.Builder
	for _, s := range sites {
		fmt.Fprintf(&blocks, `
	handle /%[1]s/* {
		desko_auth {
			client_id     %[2]s
			client_secret {env.DESKO_INTEROP_SECRET}
			token_url     %[3]s
			auth_style    %[1]s
			warm_up       off
		}
		reverse_proxy %[4]s
	}`, s.style, interopClientID, s.as.tokenURL(), s.upstream.Listener.Addr())
	}
	e.loadRaw(proxyBase + " {" + blocks.String() + "\n}")

	var bodies []string
	for _, s := range sites {
		for i := range 3 {
			// No credentials from the client; a stray Authorization of the
			// client's is replaced.
			var hdr []string
			if i == 2 {
				hdr = []string{"Authorization", "Bearer not-a-go-oauth2-token"}
			}
			status, _, body := e.do("GET", fmt.Sprintf("/%s/r%d", s.style, i), "", hdr...)
			if status != 200 || body != "hello "+interopClientID {
				t.Fatalf("%s request %d: status %d, body %q", s.style, i, status, body)
			}
			bodies = append(bodies, body)
		}
		acc := s.accepted()
		if len(acc) != 3 || acc[0] != acc[1] || acc[1] != acc[2] {
			t.Errorf("%s: upstream accepted %d requests with tokens %q, want 3 with one token", s.style, len(acc), acc)
		}
		if n := s.as.requests.Load(); n != 1 {
			t.Errorf("%s: %d token requests, want 1", s.style, n)
		}
	}

	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) == 0 {
		t.Fatal("Caddy's DEBUG log is empty: the leak check would prove nothing")
	}
	var tokens []string
	for _, s := range sites {
		tokens = append(tokens, s.accepted()...)
	}
	lc := newLeakCheck(interopClientID, interopSecret, tokens...)
	for i, h := range append(bodies, string(logs)) {
		lc.assertNone(t, fmt.Sprintf("Caddy's output %d", i+1), h)
	}
}
