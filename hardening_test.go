package deskoauth

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Tests of issue 11's points 2, 3, 4, 5 and 7: what clients, logs and the
// admin API may show of a failure; floors under token lifetimes and
// durations; options that cannot work; one answer parser for every style.

// phpSecret is the secret of the review that found the leak: a '/' that PHP
// writes as "\/", and characters that HTML and Go's JSON escape.
const phpSecret = "Sup3r/Secret-Valu3&<x>"

// escapings are the ways a careless server may write s back.
func escapings(s string) map[string]string {
	goJSON, _ := json.Marshal(s)
	uAll := func(upper bool) string {
		var b strings.Builder
		for _, r := range s {
			f := "\\u%04x"
			if upper {
				f = "\\u%04X"
			}
			fmt.Fprintf(&b, f, r)
		}
		return b.String()
	}
	pctAll := func(upper bool) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			f := "%%%02x"
			if upper {
				f = "%%%02X"
			}
			fmt.Fprintf(&b, f, s[i])
		}
		return b.String()
	}
	return map[string]string{
		"raw":                  s,
		"PHP JSON (\\/)":       strings.ReplaceAll(s, "/", `\/`),
		"Go JSON":              string(goJSON[1 : len(goJSON)-1]),
		"\\u lower":            uAll(false),
		"\\u upper":            uAll(true),
		"HTML":                 html.EscapeString(s),
		"HTML decimal":         strings.ReplaceAll(html.EscapeString(s), "&amp;", "&#38;"),
		"percent lower":        pctAll(false),
		"percent upper":        pctAll(true),
		"query escape":         url.QueryEscape(s),
		"query escape in JSON": strings.ReplaceAll(url.QueryEscape(s), "%", `\u0025`),
		"base64":               base64.StdEncoding.EncodeToString([]byte(s)),
	}
}

// assertNoEscaping fails if text holds the secret in any escaping.
func assertNoEscaping(t *testing.T, what, text, secret string) {
	t.Helper()
	for name, form := range escapings(secret) {
		if strings.Contains(text, form) {
			t.Errorf("%s holds the secret (%s): %.400s", what, name, text)
		}
	}
}

// ---------------------------------------------------------------------------
// 2. The secret never reaches clients, whatever the escaping

// A token endpoint answers 401 by echoing the request PHP-style ('/' as
// "\/"): the client gets a fixed message and a correlation ID; the log line
// with that ID and the admin last_error get the detail, scrubbed.
func TestE2EEchoedSecretNeverReachesClients(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		_ = json.NewDecoder(r.Body).Decode(&req)
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // PHP's json_encode leaves & < > alone…
		_ = enc.Encode(req)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, strings.ReplaceAll(b.String(), "/", `\/`)) // …and escapes '/'
	}))
	t.Cleanup(echo.Close)
	e := newE2E(t, time.Hour)
	t.Setenv("DESKO_TEST_SECRET", phpSecret)
	e.loadRaw(fmt.Sprintf(proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     %s/token
		warm_up       off
	}
	respond "never reached"
}`, testClientID, echo.URL))

	status, _, body := e.do("GET", "/a", "")
	if status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502: %s", status, body)
	}
	d := decodeErr(t, body)
	if d.Message != msgRejected || d.ID != "desko_auth" || d.Error != 502 {
		t.Errorf("client answer %+v, want the fixed message %q", d, msgRejected)
	}
	assertNoEscaping(t, "the client's answer", body, phpSecret)
	if strings.Contains(body, "client_id") || strings.Contains(body, "grant_type") {
		t.Errorf("the client's answer holds the token endpoint's text: %s", body)
	}

	detail := e.detail(d)
	if !strings.Contains(detail, "token endpoint answered 401") || !strings.Contains(detail, redacted) {
		t.Errorf("logged detail %q, want the 401 with the secret redacted", detail)
	}
	logs, _ := os.ReadFile(e.logFile)
	assertNoEscaping(t, "Caddy's log", string(logs), phpSecret)
	_, status2 := adminDo(t, "GET", "/desko_auth/status")
	if !strings.Contains(status2, redacted) {
		t.Errorf("admin status %s: want last_error with the redacted detail", status2)
	}
	assertNoEscaping(t, "the admin status", status2, phpSecret)
}

// The scrubber, one escaping at a time, as text around the secret.
func TestScrubEscapings(t *testing.T) {
	for _, secret := range []string{phpSecret, "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop", "a\\u0041b&amp;c", "x&y%41\"z"} {
		sc := newScrubber("client-id", secret)
		for name, form := range escapings(secret) {
			in := `{"echo":"before ` + form + ` after"}`
			out := sc.Scrub(in)
			if strings.Contains(out, form) || !strings.Contains(out, redacted) {
				t.Errorf("secret %q, %s: Scrub(%q) = %q", secret, name, in, out)
			}
			if !strings.Contains(out, "before ") || !strings.Contains(out, " after") {
				t.Errorf("secret %q, %s: Scrub removed more than the secret: %q", secret, name, out)
			}
		}
	}
	// Basic credentials, and a Basic header echoed in JSON with '\/'.
	sc := newScrubber("id:x", phpSecret)
	basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape("id:x") + ":" + url.QueryEscape(phpSecret)))
	for _, in := range []string{"Basic " + basic, `"Basic ` + strings.ReplaceAll(basic, "/", `\/`) + `"`} {
		if out := sc.Scrub(in); strings.Contains(out, basic) || !strings.Contains(out, redacted) {
			t.Errorf("Scrub(%q) = %q", in, out)
		}
	}
	// Extra secrets (expanded params and headers, token URL keys); too
	// short ones are not scrubbed.
	sc = newScrubber("id", "secret-1", append(urlSecrets("https://h/t?api_key=QUERYKEY-abc123"), "param-key-value", "ab")...)
	if out := sc.Scrub(`key QUERYKEY-abc123 param param-key-value ab`); out != `key [REDACTED] param [REDACTED] ab` {
		t.Errorf("Scrub = %q", out)
	}
	if out := sc.Scrub("nothing to see"); out != "nothing to see" {
		t.Errorf("Scrub changed clean text: %q", out)
	}
}

// escapeRandomly writes s with every character escaped one of the ways a
// server might, chosen by the bits of seed, and the whole possibly wrapped
// in another layer.
func escapeRandomly(s string, seed uint64) string {
	next := func(n uint64) uint64 {
		seed = seed*6364136223846793005 + 1442695040888963407
		return (seed >> 33) % n
	}
	var b strings.Builder
	for _, r := range s {
		switch next(9) {
		case 0:
			fmt.Fprintf(&b, "\\u%04x", r)
		case 1:
			fmt.Fprintf(&b, "\\u%04X", r)
		case 2:
			for _, c := range []byte(string(r)) {
				fmt.Fprintf(&b, "%%%02x", c)
			}
		case 3:
			for _, c := range []byte(string(r)) {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		case 4:
			fmt.Fprintf(&b, "&#%d;", r)
		case 5:
			fmt.Fprintf(&b, "&#x%X;", r)
		case 6:
			if esc := html.EscapeString(string(r)); esc != string(r) {
				b.WriteString(esc)
			} else if r == '/' {
				b.WriteString(`\/`)
			} else {
				b.WriteRune(r)
			}
		default:
			b.WriteRune(r)
		}
	}
	out := b.String()
	switch next(4) {
	case 0: // percent-encoded again (a form-encoded echo)
		out = url.QueryEscape(out)
	case 1: // JSON-encoded again
		q, _ := json.Marshal(out)
		out = string(q[1 : len(q)-1])
	}
	return out
}

// FuzzScrubEscapedSecret embeds a secret, escaped at random, in random
// text: the scrubber must redact it. The seeds run under plain go test.
func FuzzScrubEscapedSecret(f *testing.F) {
	for i, s := range []string{phpSecret, "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop", "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB", `q"u\o<t>e&`} {
		for seed := range uint64(4) {
			f.Add(s, "prefix "+strconv.Itoa(i), " suffix", seed*7919+uint64(i))
		}
	}
	f.Fuzz(func(t *testing.T, secret, prefix, suffix string, seed uint64) {
		if len(secret) < 4 || !utf8Valid(secret, prefix, suffix) {
			t.Skip()
		}
		// Text around the escaped secret must not start or end an escape
		// of its own, which would change what the secret's escapes mean.
		clean := func(s string) string { return strings.Map(dropEscapeChars, s) }
		prefix, suffix = clean(prefix), clean(suffix)
		form := escapeRandomly(secret, seed)
		in := prefix + form + suffix
		out := newScrubber("client", secret).Scrub(in)
		if strings.Contains(out, form) {
			t.Fatalf("secret %q escaped as %q survives in %q", secret, form, out)
		}
		if !strings.Contains(out, redacted) {
			t.Fatalf("nothing redacted in %q (secret %q as %q)", out, secret, form)
		}
	})
}

func dropEscapeChars(r rune) rune {
	if r == '\\' || r == '%' || r == '&' {
		return -1
	}
	return r
}

func utf8Valid(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// 3. No token URL query or userinfo anywhere; no internal detail to clients

// closedPort is a port nothing listens on: 1 (tcpmux) on loopback, which
// no test server can be given, unlike a freed ephemeral port.
func closedPort(*testing.T) int { return 1 }

func TestE2ETokenURLQueryAndAddressesStayHidden(t *testing.T) {
	e := newE2E(t, time.Hour)
	port := closedPort(t)
	e.loadRaw(fmt.Sprintf(proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     http://127.0.0.1:%d/token?api_key=QUERYKEY-abc123
		warm_up       off
	}
	respond "never reached"
}`, testClientID, port))

	status, hdr, body := e.do("GET", "/a", "")
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After: %s", status, hdr.Get("Retry-After"), body)
	}
	d := decodeErr(t, body)
	if d.Message != msgUnavailable {
		t.Errorf("client message %q, want %q", d.Message, msgUnavailable)
	}
	for _, bad := range []string{"QUERYKEY", "api_key", "127.0.0.1", "/token", "dial", "Post", "connect"} {
		if strings.Contains(body, bad) {
			t.Errorf("the client's answer holds %q: %s", bad, body)
		}
	}
	// The operator sees the cause and the address, not the key.
	detail := e.detail(d)
	if !strings.Contains(detail, "127.0.0.1:"+strconv.Itoa(port)+"/token") || !strings.Contains(detail, "connection refused") {
		t.Errorf("logged detail %q, want the redacted URL and the cause", detail)
	}
	logs, _ := os.ReadFile(e.logFile)
	_, admin := adminDo(t, "GET", "/desko_auth/status")
	for what, text := range map[string]string{"the log": string(logs), "the admin status": admin, "the detail": detail} {
		if strings.Contains(text, "QUERYKEY") || strings.Contains(text, "api_key") {
			t.Errorf("%s holds the token URL's query: %.600s", what, text)
		}
	}
}

// The same for userinfo and query keys in errors the engine builds itself,
// and for a query key echoed by the server.
func TestTokenErrorsHideTheURLQuery(t *testing.T) {
	port := closedPort(t)
	e := newTestEngine(t, fmt.Sprintf("http://user:PASSWORD-xyz@127.0.0.1:%d/t?key=QUERYKEY-abc123", port), newFakeClock(t))
	te := mustGetErr(t, e)
	for _, bad := range []string{"QUERYKEY", "PASSWORD-xyz", "key="} {
		if strings.Contains(te.Error(), bad) || strings.Contains(e.Status().LastError, bad) {
			t.Errorf("error %q holds %q", te.Error(), bad)
		}
	}
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		answer(401, "text/plain", "bad key "+r.URL.Query().Get("key"))(w, r, n)
	})
	e = newTestEngine(t, srv.tokenURL()+"?key=QUERYKEY-abc123", newFakeClock(t))
	if te := mustGetErr(t, e); strings.Contains(te.Error(), "QUERYKEY") {
		t.Errorf("error %q holds the echoed query key", te.Error())
	}
}

// ---------------------------------------------------------------------------
// 4. Floors

// An endpoint whose tokens expire at once (expires_in 0 with a tiny
// default_ttl, or a JWT exp less than a second away) gets about one token
// request a second, not one per request.
func TestEngineLifetimeFloor(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(now time.Time) string
	}{
		{"expires_in 0 and a 300ns default_ttl", func(time.Time) string {
			return `{"token_type":"Bearer","expires_in":0,"access_token":"opaque"}`
		}},
		{"JWT exp a moment away", func(now time.Time) string {
			return `{"token_type":"Bearer","access_token":"` + makeJWT(fmt.Sprintf(`{"exp":%d}`, now.Unix()+1)) + `"}`
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock(t)
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				answer(200, "application/json", tc.answer(clk.Now()))(w, r, n)
			})
			e := newTestEngine(t, srv.tokenURL(), clk, func(c *engineConfig) { c.DefaultTTL = 300 })
			mustGet(t, e)
			clk.BlockUntilTimers(1)
			const steps = 100 // 10 s in 100 ms steps, a request at each
			for range steps {
				if clk.Advance(100*time.Millisecond) > 0 {
					clk.BlockUntilTimers(1)
				}
				tok := mustGet(t, e)
				if !tok.Valid(clk.Now()) {
					t.Fatalf("at +%v Get returned an expired token", clk.Since())
				}
			}
			if n := srv.count(); n > 11 {
				t.Fatalf("%d token requests in 10 s, want at most 11 (one a second)", n)
			}
		})
	}
}

// assertRefused loads a config that must be refused with an error holding
// want (caddytest.AssertLoadError panics on a config that loads).
func assertRefused(t *testing.T, cfg, adapter, want string) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("the config loaded; want an error containing %q", want)
		}
	}()
	caddytest.AssertLoadError(t, cfg, adapter, want)
}

func jsonSite(handler string) string {
	return `{
	"admin": {"listen": "localhost:2999"},
	"apps": {"http": {"http_port": ` + httpPort + `, "servers": {"s": {"listen": [":` + httpPort + `"], "routes": [{"handle": [` + handler + `]}]}}},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}}}
}`
}

// A bare number in JSON config is nanoseconds: Validate says so.
func TestE2EDurationFloors(t *testing.T) {
	const base = `"handler":"desko_auth","client_id":"x","client_secret":"{env.DESKO_TEST_SECRET}","token_url":"http://127.0.0.1:9/t","warm_up":false`
	t.Setenv("DESKO_TEST_SECRET", testSecret)
	assertRefused(t, jsonSite(`{`+base+`,"default_ttl":300}`), "json",
		`default_ttl: 300ns is below the 1s minimum; durations in JSON config are nanoseconds unless written as a string like \"5m\"`) // quoted in the JSON error
	assertRefused(t, jsonSite(`{`+base+`,"timeout":5000000}`), "json", `timeout: 5ms is below the 100ms minimum`)
	assertRefused(t, tlsSite("default_ttl 500ms"), "caddyfile", "default_ttl: 500ms is below the 1s minimum")
	assertRefused(t, tlsSite("timeout 10ms"), "caddyfile", "timeout: 10ms is below the 100ms minimum")
}

// ---------------------------------------------------------------------------
// 5. Options that cannot work are refused; placeholders in param and
// token_header values

func TestE2EUnworkableHeadersRefused(t *testing.T) {
	t.Setenv("DESKO_TEST_SECRET", testSecret)
	for _, tc := range []struct{ line, want string }{
		{"header Proxy-Authorization", "header: Proxy-Authorization never reaches the upstream: it is a hop-by-hop header"},
		{"header connection", "header: connection never reaches the upstream"},
		{"header Transfer-Encoding", "header: Transfer-Encoding never reaches the upstream"},
		{"header Upgrade", "header: Upgrade never reaches the upstream"},
		{"header Host", "header: Host never reaches the upstream"},
		{"header Content-Length", "header: Content-Length never reaches the upstream"},
		{"token_header Accept-Encoding gzip", "token_header: Accept-Encoding cannot be set: Go's HTTP client decompresses"},
		{"token_header Content-Length 12", "token_header: Content-Length cannot be set"},
		{"token_header Keep-Alive 5", "token_header: Keep-Alive cannot be set: it is a hop-by-hop header"},
		{"token_header TE trailers", "token_header: TE cannot be set"},
	} {
		assertRefused(t, tlsSite(tc.line), "caddyfile", tc.want)
	}
}

// param and token_header values take {env.*} and {file.*} like the secret:
// the endpoint gets the values, /config/ keeps the placeholders, an empty
// expansion is refused with the placeholder's name, and the values never
// reach an error or the log.
func TestE2EParamAndTokenHeaderPlaceholders(t *testing.T) {
	const audience, apiKey = "https://aud.example/AUDIENCE-VALUE", "HEADER-KEY-FROM-FILE"
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DESKO_TEST_AUDIENCE", audience)
	capture, reqs := newCaptureServer(t)
	e := newE2E(t, time.Hour)
	site := func(tokenURL, audienceVar string) string {
		return fmt.Sprintf(proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     %s
		auth_style    form
		param         audience {env.%s}
		token_header  X-Api-Key {file.%s}
		warm_up       off
	}
	respond "ok"
}`, testClientID, tokenURL, audienceVar, keyFile)
	}
	e.loadRaw(site(capture.URL+"/token", "DESKO_TEST_AUDIENCE"))
	if s, _, body := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	got := waitChan(t, reqs, "the token request")
	form, _ := url.ParseQuery(got.body)
	if form.Get("audience") != audience || got.header.Get("X-Api-Key") != apiKey {
		t.Errorf("endpoint got audience %q, X-Api-Key %q; want the expanded values", form.Get("audience"), got.header.Get("X-Api-Key"))
	}
	_, cfg := adminDo(t, "GET", "/config/")
	if strings.Contains(cfg, "AUDIENCE-VALUE") || strings.Contains(cfg, apiKey) ||
		!strings.Contains(cfg, "{env.DESKO_TEST_AUDIENCE}") || !strings.Contains(cfg, "{file."+keyFile+"}") {
		t.Errorf("/config/ must show the placeholders and not the values: %s", cfg)
	}

	// An endpoint that echoes both values in its refusal.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintf(w, "refused %s for %s", r.Header.Get("X-Api-Key"), r.PostForm.Get("audience"))
	}))
	t.Cleanup(echo.Close)
	e.loadRaw(site(echo.URL+"/token", "DESKO_TEST_AUDIENCE"))
	s, _, body := e.do("GET", "/b", "")
	if s != http.StatusBadGateway {
		t.Fatalf("status %d: %s", s, body)
	}
	if detail := e.detail(decodeErr(t, body)); !strings.Contains(detail, "refused [REDACTED] for [REDACTED]") {
		t.Errorf("logged detail %q, want both values redacted", detail)
	}
	logs, _ := os.ReadFile(e.logFile)
	_, admin := adminDo(t, "GET", "/desko_auth/status")
	lc := newLeakCheck(testClientID, testSecret, apiKey, "AUDIENCE-VALUE", audience)
	lc.assertNone(t, "Caddy's log", string(logs))
	lc.assertNone(t, "the admin status", admin)
	lc.assertNone(t, "the answer", body)

	assertRefused(t, `{
	skip_install_trust
	admin localhost:2999
	http_port `+httpPort+`
}
`+site(capture.URL+"/token", "DESKO_SURELY_UNSET_AUDIENCE"), "caddyfile",
		"param audience: placeholder {env.DESKO_SURELY_UNSET_AUDIENCE} expanded to an empty value")
}

// ---------------------------------------------------------------------------
// 7. One answer parser for every style

// quirkyAnswer has what the review found: a second access_token key in
// another case, a token_type with a trailing space, a fractional expires_in.
const quirkyAnswer = `{"access_token":"good-token","ACCESS_TOKEN":"evil-token","token_type":"Bearer ","expires_in":3600.7}`

func TestAnswerParserEveryStyle(t *testing.T) {
	for _, tc := range []struct {
		name, contentType, body string
		wantToken               string
		wantTTL                 time.Duration
		wantKind                errorKind
		wantErr                 string
	}{
		{name: "quirky JSON", contentType: "application/json", body: quirkyAnswer, wantToken: "good-token", wantTTL: 3600 * time.Second},
		{name: "upper-case keys only", contentType: "application/json", body: `{"ACCESS_TOKEN":"evil","Token_Type":"mac"}`,
			wantKind: kindInvalidResponse, wantErr: "answer has no access_token"},
		{name: "access_token twice", contentType: "application/json", body: `{"access_token":"a","access_token":"b"}`,
			wantKind: kindInvalidResponse, wantErr: "answer has access_token more than once"},
		{name: "token_type mac", contentType: "application/json", body: `{"access_token":"a","token_type":" mac "}`,
			wantKind: kindInvalidResponse, wantErr: `token_type is " mac "; only Bearer tokens are supported`},
		{name: "token_type not a string", contentType: "application/json", body: `{"access_token":"a","token_type":7}`,
			wantKind: kindInvalidResponse, wantErr: "token_type is not a string"},
		{name: "form-encoded answer", contentType: "application/x-www-form-urlencoded",
			body: "access_token=form-token&token_type=bearer+&expires_in=60.5&ACCESS_TOKEN=evil", wantToken: "form-token", wantTTL: 60 * time.Second},
		{name: "form-encoded access_token twice", contentType: "application/x-www-form-urlencoded", body: "access_token=a&access_token=b",
			wantKind: kindInvalidResponse, wantErr: "answer has access_token more than once"},
		{name: "JSON sent as text/plain", contentType: "text/plain", body: quirkyAnswer, wantToken: "good-token", wantTTL: 3600 * time.Second},
		{name: "plain text page", contentType: "text/plain; charset=utf-8", body: "Service Unavailable",
			wantKind: kindInvalidResponse, wantErr: "answer is neither a JSON object nor a form-encoded token"},
		{name: "OAuth error with 200", contentType: "application/json", body: `{"error":"invalid_client","error_description":"nope"}`,
			wantKind: kindRejected, wantErr: "token endpoint answered 200: invalid_client: nope"},
	} {
		for _, style := range []authStyle{authJSON, authForm, authBasic} {
			t.Run(tc.name+"/"+style.String(), func(t *testing.T) {
				srv := newTokenServer(t, answer(200, tc.contentType, tc.body))
				clk := newFakeClock(t)
				e := newTestEngine(t, srv.tokenURL(), clk, func(c *engineConfig) { c.AuthStyle = style })
				if tc.wantToken == "" {
					te := mustGetErr(t, e)
					if te.Kind != tc.wantKind || !strings.Contains(te.Error(), tc.wantErr) {
						t.Fatalf("error %v (%v), want %v containing %q", te, te.Kind, tc.wantKind, tc.wantErr)
					}
					return
				}
				tok := mustGet(t, e)
				if tok.Value != tc.wantToken {
					t.Fatalf("token %q, want %q", tok.Value, tc.wantToken)
				}
				if ttl := tok.expiry.Sub(clk.Now()); ttl != tc.wantTTL {
					t.Errorf("lifetime %v, want %v", ttl, tc.wantTTL)
				}
			})
		}
	}
}

// Through Caddy, one site per style: each upstream request carries the
// token of the exact access_token key.
func TestE2EAnswerQuirksEveryStyle(t *testing.T) {
	srv := newTokenServer(t, answer(200, "application/json", quirkyAnswer))
	var mu sync.Mutex
	seen := map[string]string{}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[strings.Split(r.URL.Path, "/")[1]] = r.Header.Get("Authorization")
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(upstream.Close)
	e := newE2E(t, time.Hour)
	var blocks strings.Builder
	for _, style := range []string{"json", "form", "basic"} {
		fmt.Fprintf(&blocks, `
	handle /%[1]s/* {
		desko_auth {
			client_id     %[2]s
			client_secret {env.DESKO_TEST_SECRET}
			token_url     %[3]s
			auth_style    %[1]s
			warm_up       off
		}
		reverse_proxy %[4]s
	}`, style, testClientID, srv.tokenURL(), upstream.Listener.Addr())
	}
	e.loadRaw(proxyBase + " {" + blocks.String() + "\n}")
	for _, style := range []string{"json", "form", "basic"} {
		if s, _, body := e.do("GET", "/"+style+"/x", ""); s != 200 {
			t.Errorf("%s: status %d: %s", style, s, body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{"json": "Bearer good-token", "form": "Bearer good-token", "basic": "Bearer good-token"}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("upstream saw %v, want %v", seen, want)
	}
}

// The engine logs through the scrubber too: a logged failure holds no
// expanded secret of Config.Secrets.
func TestEngineScrubsConfigSecrets(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		answer(400, "text/plain", "unknown tenant "+r.Header.Get("X-Tenant-Key"))(w, r, n)
	})
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t), func(c *engineConfig) {
		c.Headers = map[string]string{"X-Tenant-Key": "TENANT-SECRET-42"}
		c.Secrets = []string{"TENANT-SECRET-42"}
		c.Logger = zap.New(core)
	})
	te := mustGetErr(t, e)
	if strings.Contains(te.Error(), "TENANT-SECRET-42") || !strings.Contains(te.Error(), redacted) {
		t.Errorf("error %q", te.Error())
	}
	for _, entry := range logs.All() {
		if line := fmt.Sprint(entry.Message, entry.ContextMap()); strings.Contains(line, "TENANT-SECRET-42") {
			t.Errorf("log entry holds the secret: %s", line)
		}
	}
}

// Validate, without Caddy: the floors and the header names, with reasons;
// values at the floors and ordinary names pass.
func TestValidateFloorsAndHeaders(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"timeout at the floor", func(h *Handler) { h.Timeout = caddy.Duration(100 * time.Millisecond) }, ""},
		{"default_ttl at the floor", func(h *Handler) { h.DefaultTTL = caddy.Duration(time.Second) }, ""},
		{"default_ttl 300 (ns) in JSON", func(h *Handler) { h.DefaultTTL = 300 }, `default_ttl: 300ns is below the 1s minimum|nanoseconds unless written as a string like "5m"`},
		{"timeout 10 (ns) in JSON", func(h *Handler) { h.Timeout = 10 }, "timeout: 10ns is below the 100ms minimum"},
		{"timeout 99ms", func(h *Handler) { h.Timeout = caddy.Duration(99 * time.Millisecond) }, "timeout: 99ms is below the 100ms minimum"},
		{"default_ttl negative", func(h *Handler) { h.DefaultTTL = caddy.Duration(-time.Second) }, "default_ttl: must be positive"},
		{"header X-Api-Token", func(h *Handler) { h.Header = "X-Api-Token" }, ""},
		{"header Proxy-Authorization", func(h *Handler) { h.Header = "Proxy-Authorization" }, "header: Proxy-Authorization never reaches the upstream|hop-by-hop"},
		{"header keep-alive", func(h *Handler) { h.Header = "keep-alive" }, "header: keep-alive never reaches the upstream"},
		{"header Host", func(h *Handler) { h.Header = "Host" }, "header: Host never reaches the upstream|request's host"},
		{"token_header Accept-Encoding", func(h *Handler) { h.TokenHeaders = map[string]string{"Accept-Encoding": "gzip"} }, "token_header: Accept-Encoding cannot be set|decompresses"},
		{"token_header Connection", func(h *Handler) { h.TokenHeaders = map[string]string{"Connection": "close"} }, "token_header: Connection cannot be set|hop-by-hop"},
		{"token_header X-Api-Key from a file", func(h *Handler) { h.TokenHeaders = map[string]string{"X-Api-Key": "{file./run/key}"} }, ""},
	})
}
