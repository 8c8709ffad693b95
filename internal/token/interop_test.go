package token

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
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
)

// Interoperability with a third-party OAuth2 server: go-oauth2/oauth2 v4,
// for the RFC 6749 styles (auth_style form and basic). go-oauth2 reads the
// token request as a form only, so the json style (Desko's) is not tested
// against it. It runs in-process on a loopback httptest server, on the
// real clock, except in TestInteropGoOAuth2ShortLivedTokens, whose point
// is a refresh 2.325 s in: there the same server runs on the test network
// inside a bubble.
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

// goOAuth2 is a go-oauth2 authorization server with one confidential
// client allowed the client_credentials grant.
type goOAuth2 struct {
	url      string       // the base URL its token handler is served on
	client   *http.Client // a client that reaches url
	mgr      *manage.Manager
	requests atomic.Int64
}

// newGoOAuth2 serves a go-oauth2 server, with its own in-memory token
// store, on a loopback httptest server.
func newGoOAuth2(t *testing.T, secret string, accessExp time.Duration, clientInfo server.ClientInfoHandler) *goOAuth2 {
	t.Helper()
	ts, err := store.NewMemoryTokenStore()
	if err != nil {
		t.Fatal(err)
	}
	g, h := goOAuth2Handler(t, secret, accessExp, clientInfo, ts)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	g.url, g.client = srv.URL, srv.Client()
	return g
}

// newGoOAuth2InBubble serves a go-oauth2 server on the test network, for a
// bubble: its token store is mapTokenStore, since go-oauth2's own starts a
// goroutine that never ends, which would keep the bubble alive.
func newGoOAuth2InBubble(t *testing.T, secret string, accessExp time.Duration, clientInfo server.ClientInfoHandler) *goOAuth2 {
	t.Helper()
	g, h := goOAuth2Handler(t, secret, accessExp, clientInfo, &mapTokenStore{m: map[string]goauth2.TokenInfo{}})
	g.url, g.client = serveInMemory(t, h), testClient
	return g
}

// goOAuth2Handler builds the server and its token handler.
func goOAuth2Handler(t *testing.T, secret string, accessExp time.Duration, clientInfo server.ClientInfoHandler, ts goauth2.TokenStore) (*goOAuth2, http.Handler) {
	t.Helper()
	mgr := manage.NewDefaultManager()
	mgr.SetClientTokenCfg(&manage.Config{AccessTokenExp: accessExp})
	mgr.MapTokenStorage(ts)
	clients := store.NewClientStore()
	if err := clients.Set(interopClientID, &models.Client{ID: interopClientID, Secret: secret, Domain: "http://127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	mgr.MapClientStorage(clients)

	srv := server.NewServer(server.NewConfig(), mgr)
	srv.SetAllowedGrantType(goauth2.ClientCredentials)
	srv.SetClientInfoHandler(clientInfo)

	g := &goOAuth2{mgr: mgr}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /oauth/token", func(w http.ResponseWriter, r *http.Request) {
		g.requests.Add(1)
		_ = srv.HandleTokenRequest(w, r)
	})
	return g, mux
}

// tokenURL is the server's token endpoint.
func (g *goOAuth2) tokenURL() string { return g.url + "/oauth/token" }

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

// mapTokenStore is a go-oauth2 TokenStore in a map (client credentials
// tokens only: access tokens, no codes or refresh tokens).
type mapTokenStore struct {
	mu sync.Mutex
	m  map[string]goauth2.TokenInfo // access token → info
}

func (s *mapTokenStore) Create(_ context.Context, info goauth2.TokenInfo) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[info.GetAccess()] = info
	return nil
}

func (s *mapTokenStore) RemoveByAccess(_ context.Context, access string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, access)
	return nil
}

func (s *mapTokenStore) GetByAccess(_ context.Context, access string) (goauth2.TokenInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[access], nil
}

func (s *mapTokenStore) RemoveByCode(context.Context, string) error    { return nil }
func (s *mapTokenStore) RemoveByRefresh(context.Context, string) error { return nil }
func (s *mapTokenStore) GetByCode(context.Context, string) (goauth2.TokenInfo, error) {
	return nil, nil
}
func (s *mapTokenStore) GetByRefresh(context.Context, string) (goauth2.TokenInfo, error) {
	return nil, nil
}

// newInteropSource is a source for the interop client that reaches
// tokenURL with client.
func newInteropSource(t *testing.T, tokenURL string, client *http.Client, style AuthStyle, secret string) *Source {
	t.Helper()
	return newTestSource(t, tokenURL, func(c *Config) {
		c.Credentials = &Static{ClientID: interopClientID, ClientSecret: secret}
		c.Auth = style
		c.HTTPClient = client
	})
}

// assertNoSecretIn is the leak check for each of the interop client's
// secrets.
func assertNoSecretIn(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		scrubtest.NewCheck(interopClientID, s).AssertNone(t, what, text)
	}
}

var interopStyles = []struct {
	name       string
	style      AuthStyle
	clientInfo server.ClientInfoHandler
}{
	{"form", AuthForm, server.ClientFormHandler}, // go-oauth2's own handler
	{"basic", AuthBasic, rfcBasicHandler},
}

// A token obtained and accepted by go-oauth2, expires_in (2h) taken at
// face value, the refresh scheduled from it, and a token that the server
// revoked replaced after Rejected.
func TestInteropGoOAuth2Engine(t *testing.T) {
	for _, tc := range interopStyles {
		t.Run(tc.name, func(t *testing.T) {
			as := newGoOAuth2(t, interopSecret, 2*time.Hour, tc.clientInfo)
			s := newInteropSource(t, as.tokenURL(), as.client, tc.style, interopSecret)

			tok := mustGet(t, s)
			ti := as.mustValid(t, tok.Value)
			if got := ti.GetAccessExpiresIn(); got != 2*time.Hour {
				t.Fatalf("go-oauth2 issued a token for %v, want 2h", got)
			}
			// On the real clock: the lifetime from the moment the answer
			// was read.
			if got := tok.Expiry().Sub(tok.obtained.Round(0)); got != 2*time.Hour {
				t.Errorf("source expiry in %v, want the 2h of expires_in", got)
			}
			if st := s.Status(); !st.ExpiresAt.Equal(tok.Expiry()) || st.State != StateFresh {
				t.Errorf("Status = %+v, want fresh until %v", st, tok.Expiry())
			}
			if got := tok.refreshAt.Sub(tok.obtained); got != 93*time.Minute {
				t.Errorf("refresh %v after the fetch, want 93m (77.5%% of 2h)", got)
			}
			if again := mustGet(t, s); again != tok {
				t.Fatalf("second Get fetched a new token")
			}
			if n := as.requests.Load(); n != 1 {
				t.Fatalf("%d token requests, want 1", n)
			}

			// The server revokes the token; the upstream's 401 makes the
			// handler report it; the next Get has a new, valid one.
			if err := as.mgr.RemoveAccessToken(context.Background(), tok.Value); err != nil {
				t.Fatal(err)
			}
			if _, err := as.mgr.LoadAccessToken(context.Background(), tok.Value); err == nil {
				t.Fatal("go-oauth2 still accepts the revoked token")
			}
			s.Rejected(Refusal{Token: tok})
			tok2 := mustGet(t, s)
			if tok2 == tok || tok2.Value == tok.Value {
				t.Fatalf("after Rejected Get returned the revoked token")
			}
			as.mustValid(t, tok2.Value)
			if n := as.requests.Load(); n != 2 {
				t.Errorf("%d token requests, want 2", n)
			}
		})
	}
}

// A token that lives a few seconds: its 3s expires_in decides the refresh
// (at 2.325s), which gets a new token from go-oauth2. In a bubble, so
// that the refresh comes 2.325 s in without a test that waits that long.
func TestInteropGoOAuth2ShortLivedTokens(t *testing.T) {
	for _, tc := range interopStyles {
		inBubble(t, tc.name, func(t *testing.T) {
			as := newGoOAuth2InBubble(t, interopSecret, 3*time.Second, tc.clientInfo)
			s := newInteropSource(t, as.tokenURL(), as.client, tc.style, interopSecret)

			tok1 := mustGet(t, s)
			if got := as.mustValid(t, tok1.Value).GetAccessExpiresIn(); got != 3*time.Second {
				t.Fatalf("go-oauth2 issued a token for %v, want 3s", got)
			}
			if got := s.Status().ExpiresAt.Sub(time.Now()); got != 3*time.Second {
				t.Errorf("source expiry in %v, want 3s", got)
			}
			if got := nextWake(t, s); got != 2325*time.Millisecond {
				t.Fatalf("refresh in %v, want 2.325s", got)
			}
			settle(2325*time.Millisecond - time.Nanosecond)
			if n := as.requests.Load(); n != 1 {
				t.Fatalf("%d token requests before the refresh, want 1", n)
			}
			settle(time.Nanosecond) // the refresh is done and the next one armed
			if n := as.requests.Load(); n != 2 {
				t.Errorf("%d token requests, want 2", n)
			}
			tok2 := mustGet(t, s)
			if tok2.Value == tok1.Value {
				t.Fatal("the refresh kept the old token")
			}
			as.mustValid(t, tok2.Value)
			// It expires 3 s after its fetch, and is used until its safety
			// margin (5% of 3 s) before.
			if !tok2.Expiry().Equal(time.Now().Add(3*time.Second)) ||
				!tok2.Valid(time.Now().Add(2850*time.Millisecond-time.Nanosecond)) || tok2.Valid(time.Now().Add(2850*time.Millisecond)) {
				t.Errorf("the new token should expire 3s after its fetch and be used until 150ms before")
			}
			// The source stopped serving the old token before go-oauth2
			// stopped accepting it.
			settle(675 * time.Millisecond) // tok1's expiry
			as.mustValid(t, tok1.Value)
			if got := mustGet(t, s); got != tok2 {
				t.Errorf("at tok1's expiry Get = %q, want the refreshed token", got.Value)
			}
		})
	}
}

// A wrong secret: go-oauth2 answers 401 invalid_client; the source
// reports a refusal that names the OAuth error code and holds no secret.
func TestInteropGoOAuth2WrongSecret(t *testing.T) {
	for _, tc := range interopStyles {
		t.Run(tc.name, func(t *testing.T) {
			as := newGoOAuth2(t, interopSecret, 2*time.Hour, tc.clientInfo)
			s := newInteropSource(t, as.tokenURL(), as.client, tc.style, interopWrongSecret)

			te := mustGetErr(t, s)
			if te.Kind != KindRefused {
				t.Errorf("Kind = %v, want refused", te.Kind)
			}
			if te.Status != http.StatusUnauthorized {
				t.Errorf("Status = %d, want 401", te.Status)
			}
			msg := te.Error()
			if !strings.Contains(msg, "invalid_client") {
				t.Errorf("error %q does not name invalid_client", msg)
			}
			assertNoSecretIn(t, "the error", msg, interopWrongSecret, interopSecret)
			if st := s.Status(); st.State != StateRefused {
				t.Errorf("state %s, want refused", st.State)
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
	s := newInteropSource(t, as.tokenURL(), as.client, AuthBasic, interopSecret)
	te := mustGetErr(t, s)
	if te.Kind != KindRefused || te.Status != http.StatusUnauthorized || !strings.Contains(te.Error(), "invalid_client") {
		t.Errorf("stock handler with a form-encoded secret: %v (kind %v), want 401 invalid_client", te, te.Kind)
	}
	assertNoSecretIn(t, "the error", te.Error(), interopSecret)

	// The raw (non-RFC) encoding of the same credentials is what it wants.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, as.tokenURL(), strings.NewReader("grant_type=client_credentials"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(interopClientID, interopSecret)
	resp, err := as.client.Do(req)
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
	s2 := newInteropSource(t, as2.tokenURL(), as2.client, AuthBasic, plain)
	as2.mustValid(t, mustGet(t, s2).Value)
}

// go-oauth2 answers an unknown client_id with 500 server_error (its client
// store's "not found" is not an OAuth error), which the source can only
// treat as a transient failure.
func TestInteropGoOAuth2UnknownClientIsAServerError(t *testing.T) {
	as := newGoOAuth2(t, interopSecret, time.Hour, server.ClientFormHandler)
	s := newTestSource(t, as.tokenURL(), func(c *Config) {
		c.Credentials = &Static{ClientID: "no-such-client", ClientSecret: interopSecret}
		c.Auth = AuthForm
		c.HTTPClient = as.client
	})
	te := mustGetErr(t, s)
	if te.Status != http.StatusInternalServerError || te.Kind != KindTransient || !strings.Contains(te.Error(), "server_error") {
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
		style  AuthStyle
		secret string
	}{
		{"json, reserved characters", AuthJSON, interopSecret},
		{"form, reserved characters", AuthForm, interopSecret},
		{"basic, reserved characters", AuthBasic, interopSecret},
		{"basic, plain secret", AuthBasic, "Plain-Secret_0.9~only-unreserved"},
	} {
		inBubble(t, tc.name, func(t *testing.T) {
			echo := serveInMemory(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, "%s|%s", r.Header.Get("Authorization"), b)
			}))
			s := newInteropSource(t, echo+"/token", testClient, tc.style, tc.secret)
			te := mustGetErr(t, s)
			if te.Status != http.StatusBadRequest || !strings.Contains(te.Error(), "[REDACTED]") {
				t.Errorf("error %q: want the 400 echo with the secret redacted", te)
			}
			assertNoSecretIn(t, "the error", te.Error(), tc.secret)
			assertNoSecretIn(t, "the status", s.Status().LastError, tc.secret)
		})
	}
}

// ---------------------------------------------------------------------------
// Params and token headers, in every auth style

// capturedRequest is a token request as the endpoint received it.
type capturedRequest struct {
	path   string
	header http.Header
	body   string
}

// capture reads r into a capturedRequest.
func capture(r *http.Request) capturedRequest {
	b, _ := io.ReadAll(r.Body)
	return capturedRequest{path: r.URL.Path, header: r.Header.Clone(), body: string(b)}
}

// checkCaptured checks a token request of the given style that carried
// audience=https://api.example, X-Tenant: acme and the scopes "a b".
func checkCaptured(t *testing.T, style AuthStyle, got capturedRequest, secret string) {
	t.Helper()
	if got.path != "/token" {
		t.Errorf("path = %q, want /token", got.path)
	}
	if v := got.header.Values("X-Tenant"); !reflect.DeepEqual(v, []string{"acme"}) {
		t.Errorf("X-Tenant = %q, want [acme]", v)
	}
	if ua := got.header.Get("User-Agent"); ua != "caddy-desko-auth" {
		t.Errorf("User-Agent = %q", ua)
	}
	if a := got.header.Get("Accept"); a != "application/json" {
		t.Errorf("Accept = %q, want application/json", a)
	}
	switch style {
	case AuthJSON:
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
	case AuthForm, AuthBasic:
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
		if style == AuthForm {
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
	for _, style := range []AuthStyle{AuthJSON, AuthForm, AuthBasic} {
		inBubble(t, style.String(), func(t *testing.T) {
			var reqs []capturedRequest
			url := serveInMemory(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reqs = append(reqs, capture(r))
				okToken(3600)(w, r, int64(len(reqs)))
			}))
			s := newTestSource(t, url+"/token", func(c *Config) {
				c.Credentials = &Static{
					ClientID:     interopClientID,
					ClientSecret: interopSecret,
					Params:       map[string]string{"audience": "https://api.example"},
					Headers:      map[string]string{"X-Tenant": "acme"},
				}
				c.Auth = style
				c.Scopes = []string{"a", "b"}
			})
			if tok := mustGet(t, s); tok.Value != "tok-1" {
				t.Fatalf("token %q", tok.Value)
			}
			if len(reqs) != 1 {
				t.Fatalf("%d token requests, want 1", len(reqs))
			}
			checkCaptured(t, style, reqs[0], interopSecret)
		})
	}
}
