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
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// Tests of issue 11's points 2, 3, 4, 5 and 7 through Caddy: what clients,
// logs and the admin API may show of a failure; floors under durations;
// options that cannot work; one answer parser for every style. The engine's
// side of them (the scrubber, the lifetime floor, the parser) is tested in
// internal/token and internal/scrub.

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
	e.setenv("DESKO_TEST_SECRET", scrubtest.PHPSecret)
	e.loadRaw(fmt.Sprintf(e.base+` {
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
	if d.Message != msgRefused || d.ID != "desko_auth" || d.Error != 502 {
		t.Errorf("client answer %+v, want the fixed message %q", d, msgRefused)
	}
	scrubtest.AssertNoEscaping(t, "the client's answer", body, scrubtest.PHPSecret)
	if strings.Contains(body, "client_id") || strings.Contains(body, "grant_type") {
		t.Errorf("the client's answer holds the token endpoint's text: %s", body)
	}

	detail := e.detail(d)
	if !strings.Contains(detail, "token endpoint answered 401") || !strings.Contains(detail, scrub.Redacted) {
		t.Errorf("logged detail %q, want the 401 with the secret redacted", detail)
	}
	logs, _ := os.ReadFile(e.logFile)
	scrubtest.AssertNoEscaping(t, "Caddy's log", string(logs), scrubtest.PHPSecret)
	_, status2 := e.adminDo("GET", "/desko_auth/status")
	if !strings.Contains(status2, scrub.Redacted) {
		t.Errorf("admin status %s: want last_error with the redacted detail", status2)
	}
	scrubtest.AssertNoEscaping(t, "the admin status", status2, scrubtest.PHPSecret)
}

// ---------------------------------------------------------------------------
// 3. No token URL query or userinfo anywhere; no internal detail to clients

// closedPort is a port nothing listens on: 1 (tcpmux) on loopback, which
// no test server can be given, unlike a freed ephemeral port.
func closedPort(*testing.T) int { return 1 }

func TestE2ETokenURLQueryAndAddressesStayHidden(t *testing.T) {
	e := newE2E(t, time.Hour)
	port := closedPort(t)
	e.loadRaw(fmt.Sprintf(e.base+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     http://127.0.0.1:%d/token?api_key=QUERYKEY-abc123
		warm_up       off
	}
	respond "never reached"
}`, testClientID, port))

	d, body := e.unavailable("/a", msgUnreachable)
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
	_, admin := e.adminDo("GET", "/desko_auth/status")
	// The WARN about a literal credential in the query names the
	// parameter (api_key), never its value or the query.
	for what, text := range map[string]string{"the log": string(logs), "the admin status": admin, "the detail": detail} {
		if strings.Contains(text, "QUERYKEY") || strings.Contains(text, "api_key=") {
			t.Errorf("%s holds the token URL's query: %.600s", what, text)
		}
	}
}

// ---------------------------------------------------------------------------
// 4. Floors (the token lifetime's is the engine's: internal/token)

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
	capture, reqs := newCaptureServer(t)
	e := newE2E(t, time.Hour)
	e.setenv("DESKO_TEST_AUDIENCE", audience)
	site := func(tokenURL, audienceVar string) string {
		return fmt.Sprintf(e.base+` {
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
	_, cfg := e.adminDo("GET", "/config/")
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
	_, admin := e.adminDo("GET", "/desko_auth/status")
	lc := scrubtest.NewCheck(testClientID, testSecret, apiKey, "AUDIENCE-VALUE", audience)
	lc.AssertNone(t, "Caddy's log", string(logs))
	lc.AssertNone(t, "the admin status", admin)
	lc.AssertNone(t, "the answer", body)

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
	e.loadRaw(e.base + " {" + blocks.String() + "\n}")
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

// Issue 16, point 2, through Caddy: a token endpoint that echoes the
// request, or the secret, encoded: base64 of the whole request body (the
// secret at whatever offset the body puts it), base64 after one or two
// bytes, upper- and lower-cased, reversed, spaced out, split between
// error and error_description, hex under unpadded base64url. Neither the
// client's answer nor Caddy's log nor the admin status may hold anything
// the echo's own decoders (scrubtest's steps, not the scrubber) read
// back as 8 bytes of the secret.
func TestE2EEncodedEchoesNeverLeak(t *testing.T) {
	const secret = "Kq8vT2xW9mR4-pZ7nB3yH6cJ"
	b64 := base64.StdEncoding.EncodeToString
	echoes := []struct {
		name  string
		chain []scrubtest.Step // how the echo encodes what it shows
		echo  func(body string) (code, desc string)
	}{
		{"body_base64", []scrubtest.Step{scrubtest.B64Std}, func(body string) (string, string) {
			return "invalid_request", "could not parse request " + b64([]byte(body))
		}},
		{"x_base64", []scrubtest.Step{scrubtest.B64Std}, func(string) (string, string) { return "invalid_client", "bad " + b64([]byte("x"+secret)) }},
		{"xy_base64", []scrubtest.Step{scrubtest.B64Std}, func(string) (string, string) { return "invalid_client", "bad " + b64([]byte("xy"+secret)) }},
		{"upper", []scrubtest.Step{scrubtest.Upper}, func(string) (string, string) { return "invalid_client", "secret " + strings.ToUpper(secret) }},
		{"lower", []scrubtest.Step{scrubtest.Lower}, func(string) (string, string) { return "invalid_client", "secret " + strings.ToLower(secret) }},
		{"reversed", []scrubtest.Step{scrubtest.Reverse}, func(string) (string, string) {
			r := []rune(secret)
			for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
				r[i], r[j] = r[j], r[i]
			}
			return "invalid_client", "terces " + string(r)
		}},
		{"spaced", []scrubtest.Step{scrubtest.Spaced(" ")}, func(string) (string, string) {
			return "invalid_client", "secret " + strings.Join(strings.Split(secret, ""), " ")
		}},
		{"split", nil, func(string) (string, string) { return secret[:12], secret[12:] }},
		{"hex_base64url", []scrubtest.Step{scrubtest.Hex, scrubtest.B64URLRaw}, func(string) (string, string) {
			return "invalid_client", "bad " + base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%x", secret)))
		}},
	}
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		for _, ec := range echoes {
			if r.URL.Path == "/"+ec.name {
				code, desc := ec.echo(string(body))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
				return
			}
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(echo.Close)
	e := newE2E(t, time.Hour)
	e.setenv("DESKO_TEST_SECRET", secret)
	var site strings.Builder
	fmt.Fprintf(&site, "%s {\n", e.base)
	for _, ec := range echoes {
		fmt.Fprintf(&site, "\thandle /%s/* {\n\t\tdesko_auth {\n\t\t\tclient_id %s\n\t\t\tclient_secret {env.DESKO_TEST_SECRET}\n\t\t\ttoken_url %s/%s\n\t\t\twarm_up off\n\t\t}\n\t\trespond \"never reached\"\n\t}\n",
			ec.name, testClientID, echo.URL, ec.name)
	}
	site.WriteString("}\n")
	e.loadRaw(site.String())

	var bodies strings.Builder
	for _, ec := range echoes {
		status, _, body := e.do("GET", "/"+ec.name+"/x", "")
		if status != http.StatusBadGateway {
			t.Errorf("%s: status %d, want 502: %s", ec.name, status, body)
		}
		bodies.WriteString(body + "\n")
	}
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	_, admin := e.adminDo("GET", "/desko_auth/status")
	if !strings.Contains(string(logs), "could not parse request") || !strings.Contains(admin, "token endpoint answered 400") {
		t.Fatalf("the log or the status lacks the endpoint's answer: the test would prove nothing\n%.2000s", admin)
	}
	sample := `{"client_id":"` + testClientID + `","client_secret":"` + secret + `","grant_type":"client_credentials"}`
	for _, ec := range echoes {
		// The echo itself leaks, as its decoders read it: the check is
		// sound.
		code, desc := ec.echo(sample)
		if _, ok := scrubtest.Recover(code+" "+desc, secret, ec.chain); !ok {
			t.Fatalf("%s: the decoders cannot read the secret back from the echo itself", ec.name)
		}
		for what, text := range map[string]string{"the clients' answers": bodies.String(), "Caddy's log": string(logs), "the admin status": admin} {
			if r, ok := scrubtest.Recover(text, secret, ec.chain); ok {
				t.Errorf("%s: %s hold the secret, read back through %d steps as %.200q", ec.name, what, len(ec.chain), r)
			}
		}
	}
}
