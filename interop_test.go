package deskoauth

import (
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

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// Interoperability through Caddy with a third-party OAuth2 server:
// go-oauth2/oauth2 v4, run in-process on a loopback httptest server, for
// the RFC 6749 styles (auth_style form and basic). go-oauth2 reads the
// token request as a form only, so the json style (Desko's) is not tested
// against it. The token source's side (every style against go-oauth2,
// wrong secrets, short-lived tokens) is tested in internal/token.
//
// go-oauth2 v4.5.4's own ClientBasicHandler takes the Basic credentials as
// they come (r.BasicAuth, no form-decoding), although RFC 6749 §2.3.1 says
// both parts are form-encoded before Basic encoding, as x/oauth2 (and so
// auth_style basic) does. A secret with reserved characters is therefore
// refused by the stock handler (internal/token pins that down), and the
// basic style here uses rfcBasicHandler, a ClientInfoHandler that decodes
// as the RFC says.

const (
	interopClientID = "interop-client"
	// interopSecret has ':', '=', '%' (followed by hex digits, to catch a
	// double decode), '+', a space, '/' and non-ASCII characters.
	interopSecret = "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop"
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

	g := &goOAuth2{srv: srv}
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

var interopStyles = []struct {
	name       string
	style      token.AuthStyle
	clientInfo server.ClientInfoHandler
}{
	{"form", token.AuthForm, server.ClientFormHandler}, // go-oauth2's own handler
	{"basic", token.AuthBasic, rfcBasicHandler},
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
func checkCaptured(t *testing.T, style token.AuthStyle, got capturedRequest, secret string) {
	t.Helper()
	if v := got.header.Values("X-Tenant"); !reflect.DeepEqual(v, []string{"acme"}) {
		t.Errorf("X-Tenant = %q, want [acme]", v)
	}
	if ua := got.header.Get("User-Agent"); ua != "caddy-desko-auth" {
		t.Errorf("User-Agent = %q", ua)
	}
	switch style {
	case token.AuthJSON:
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
	case token.AuthForm, token.AuthBasic:
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
		if style == token.AuthForm {
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
	e.setenv("DESKO_INTEROP_SECRET", interopSecret)
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
	e.loadRaw(e.base + " {" + blocks.String() + "\n}")

	for _, style := range []token.AuthStyle{token.AuthJSON, token.AuthForm, token.AuthBasic} {
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
		style    token.AuthStyle
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
	e.setenv("DESKO_INTEROP_SECRET", interopSecret)
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
	e.loadRaw(e.base + " {" + blocks.String() + "\n}")

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
	lc := scrubtest.NewCheck(interopClientID, interopSecret, tokens...)
	for i, h := range append(bodies, string(logs)) {
		lc.AssertNone(t, fmt.Sprintf("Caddy's output %d", i+1), h)
	}
}
