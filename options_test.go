package deskoauth

import (
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
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The token-endpoint and header options: auth_style, param, token_header,
// header, prefix, tls_ca, tls_client_cert, insecure_http.

func strPtr(s string) *string { return &s }

func TestOptionSubdirectivesParse(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Handler
	}{
		{"auth_style json", "auth_style json", Handler{AuthStyle: "json"}},
		{"auth_style form", "auth_style form", Handler{AuthStyle: "form"}},
		{"auth_style basic", "auth_style basic", Handler{AuthStyle: "basic"}},
		{"param", "param audience https://api.example", Handler{Params: map[string]string{"audience": "https://api.example"}}},
		{"params accumulate", "param audience https://api.example\nparam resource urn:x", Handler{Params: map[string]string{"audience": "https://api.example", "resource": "urn:x"}}},
		{"param quoted value", `param audience "a b"`, Handler{Params: map[string]string{"audience": "a b"}}},
		{"param empty value", `param audience ""`, Handler{Params: map[string]string{"audience": ""}}},
		{"token_header", "token_header X-Tenant acme", Handler{TokenHeaders: map[string]string{"X-Tenant": "acme"}}},
		{"token_headers accumulate", "token_header X-Tenant acme\ntoken_header X-Region eu", Handler{TokenHeaders: map[string]string{"X-Tenant": "acme", "X-Region": "eu"}}},
		{"same name as param and token_header", "param x 1\ntoken_header x 2", Handler{Params: map[string]string{"x": "1"}, TokenHeaders: map[string]string{"x": "2"}}},
		{"header", "header X-Desko-Token", Handler{Header: "X-Desko-Token"}},
		{"prefix empty", `prefix ""`, Handler{Prefix: strPtr("")}},
		{"prefix with a space", `prefix "Token "`, Handler{Prefix: strPtr("Token ")}},
		{"tls_ca", "tls_ca /etc/caddy/ca.pem", Handler{TLSCA: "/etc/caddy/ca.pem"}},
		{"tls_client_cert", "tls_client_cert /etc/caddy/client.pem /etc/caddy/client-key.pem", Handler{TLSClientCert: []string{"/etc/caddy/client.pem", "/etc/caddy/client-key.pem"}}},
		{"insecure_http", "insecure_http", Handler{InsecureHTTP: true}},
		{"everything", "auth_style basic\nparam audience https://api.example\ntoken_header X-Tenant acme\nheader X-Desko-Token\nprefix \"\"\ntls_ca /ca.pem\ntls_client_cert /c.pem /k.pem\ninsecure_http",
			Handler{
				AuthStyle:     "basic",
				Params:        map[string]string{"audience": "https://api.example"},
				TokenHeaders:  map[string]string{"X-Tenant": "acme"},
				Header:        "X-Desko-Token",
				Prefix:        strPtr(""),
				TLSCA:         "/ca.pem",
				TLSClientCert: []string{"/c.pem", "/k.pem"},
				InsecureHTTP:  true,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseBlock(t, tt.body)
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			assertHandler(t, h, tt.want)
		})
	}
}

// The JSON field names of the options, as documented.
func TestOptionJSONFieldNames(t *testing.T) {
	h, err := parseBlock(t, "auth_style form\nparam a b\ntoken_header X-T v\nheader X-H\nprefix \"\"\ntls_ca /ca.pem\ntls_client_cert /c.pem /k.pem\ninsecure_http")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"auth_style":"form","params":{"a":"b"},"token_headers":{"X-T":"v"},"header":"X-H","prefix":"","tls_ca":"/ca.pem","tls_client_cert":["/c.pem","/k.pem"],"insecure_http":true}`
	if string(b) != want {
		t.Errorf("JSON:\n got  %s\n want %s", b, want)
	}
}

func TestOptionSubdirectiveErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []string
	}{
		{"auth_style missing", "auth_style", []string{"auth_style", "missing argument"}},
		{"auth_style too many", "auth_style form basic", []string{"auth_style", "exactly one argument"}},
		{"param no args", "param", []string{"param", "a name and a value"}},
		{"param one arg", "param audience", []string{"param", "a name and a value"}},
		{"param three args", "param audience a b", []string{"param", "a name and a value"}},
		{"param duplicate", "param audience a\nparam audience b", []string{"param", "audience", "twice"}},
		{"token_header no args", "token_header", []string{"token_header", "a name and a value"}},
		{"token_header one arg", "token_header X-Tenant", []string{"token_header", "a name and a value"}},
		{"token_header three args", "token_header X-Tenant a b", []string{"token_header", "a name and a value"}},
		{"token_header duplicate", "token_header X-Tenant a\ntoken_header X-Tenant b", []string{"token_header", "X-Tenant", "twice"}},
		{"header missing", "header", []string{"header", "missing argument"}},
		{"header too many", "header X-A X-B", []string{"header", "exactly one argument"}},
		{"prefix missing", "prefix", []string{"prefix", "missing argument"}},
		{"prefix too many", "prefix Bearer x", []string{"prefix", "exactly one argument"}},
		{"tls_ca missing", "tls_ca", []string{"tls_ca", "missing argument"}},
		{"tls_ca too many", "tls_ca /a.pem /b.pem", []string{"tls_ca", "exactly one argument"}},
		{"tls_client_cert no args", "tls_client_cert", []string{"tls_client_cert", "a certificate file and a key file"}},
		{"tls_client_cert one arg", "tls_client_cert /c.pem", []string{"tls_client_cert", "a certificate file and a key file"}},
		{"tls_client_cert three args", "tls_client_cert /c.pem /k.pem /x.pem", []string{"tls_client_cert", "a certificate file and a key file"}},
		{"insecure_http with an arg", "insecure_http on", []string{"insecure_http", "no arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("desko_auth {\n" + tt.body + "\n}"))
			if err == nil {
				t.Fatalf("no error; handler %+v", h)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

func TestOptionValidate(t *testing.T) {
	tests := []validateCase{
		{"all options", func(h *Handler) {
			h.AuthStyle = "basic"
			h.Params = map[string]string{"audience": "https://api.example", "resource": ""}
			h.TokenHeaders = map[string]string{"X-Tenant": "acme"}
			h.Header = "X-Desko-Token"
			h.Prefix = strPtr("")
			h.TLSCA = "/does/not/matter/here.pem"
			h.TLSClientCert = []string{"/c.pem", "/k.pem"}
			h.InsecureHTTP = true
		}, ""},
		{"auth_style empty is json", func(h *Handler) { h.AuthStyle = "" }, ""},
		{"prefix with a tab", func(h *Handler) { h.Prefix = strPtr("Token\t") }, ""},
		{"lower-case header name", func(h *Handler) { h.Header = "x-api-token" }, ""},

		{"auth_style bad (JSON config)", func(h *Handler) { h.AuthStyle = "xml" }, `auth_style|"xml"`},
		{"header with a space", func(h *Handler) { h.Header = "X Token" }, `header|"X Token"|not a valid header name`},
		{"header with a colon", func(h *Handler) { h.Header = "X-Token:" }, "header|not a valid header name"},
		{"header with CRLF", func(h *Handler) { h.Header = "X-Token\r\nX-Evil" }, "header|not a valid header name"},
		{"header non-ASCII", func(h *Handler) { h.Header = "X-Tökén" }, "header|not a valid header name"},
		{"prefix with CRLF", func(h *Handler) { h.Prefix = strPtr("Bearer\r\nX-Evil: 1\r\n") }, "prefix|control characters"},
		{"prefix with LF", func(h *Handler) { h.Prefix = strPtr("a\nb") }, "prefix|control characters"},
		{"prefix with CR", func(h *Handler) { h.Prefix = strPtr("a\rb") }, "prefix|control characters"},
		{"prefix with NUL", func(h *Handler) { h.Prefix = strPtr("a\x00") }, "prefix|control characters"},
		{"param client_secret", func(h *Handler) { h.Params = map[string]string{"client_secret": "x"} }, "param|client_secret|set by the module"},
		{"param client_id", func(h *Handler) { h.Params = map[string]string{"client_id": "x"} }, "param|client_id"},
		{"param grant_type", func(h *Handler) { h.Params = map[string]string{"grant_type": "password"} }, "param|grant_type"},
		{"param scope", func(h *Handler) { h.Params = map[string]string{"scope": "a"} }, "param|scope"},
		{"param empty name", func(h *Handler) { h.Params = map[string]string{"": "x"} }, "param|empty name"},
		{"token_header bad name", func(h *Handler) { h.TokenHeaders = map[string]string{"X Tenant": "acme"} }, `token_header|"X Tenant"`},
		{"token_header value with CRLF", func(h *Handler) { h.TokenHeaders = map[string]string{"X-Tenant": "acme\r\nX-Evil: 1"} }, "token_header X-Tenant|control characters"},
		{"token_header names differing only in case", func(h *Handler) {
			h.TokenHeaders = map[string]string{"X-Tenant": "acme", "x-tenant": "other"}
		}, "token_header|X-Tenant|twice"},
		{"token_header Authorization", func(h *Handler) { h.TokenHeaders = map[string]string{"authorization": "Basic x"} }, "token_header|authorization|set by the module"},
		{"token_header Content-Type", func(h *Handler) { h.TokenHeaders = map[string]string{"Content-Type": "text/plain"} }, "token_header|Content-Type"},
		{"tls_client_cert one file (JSON config)", func(h *Handler) { h.TLSClientCert = []string{"/c.pem"} }, "tls_client_cert|certificate file and a key file"},
		{"tls_client_cert three files (JSON config)", func(h *Handler) { h.TLSClientCert = []string{"/c.pem", "/k.pem", "/x.pem"} }, "tls_client_cert"},
	}
	runValidateCases(t, tests)
}

// What the Caddyfile accepts, Validate checks: a header name or prefix the
// parser takes as a token is still refused.
func TestOptionCaddyfileThenValidate(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"header \"X Token\"", "header"},
		{"prefix \"Bearer\nX-Evil: 1\"", "prefix"},
		{"param client_secret x", "param"},
		{"token_header X-Tenant a\ntoken_header x-tenant b", "token_header"},
		// Values are Validate's to check: the parser only reads them.
		{"auth_style xml", `auth_style: unknown auth style "xml" (want json, form, basic, private_key_jwt or client_secret_jwt)`},
		{"auth_style FORM", `auth_style: unknown auth style "FORM"`},
		{"errors json", `errors: expected desko or caddy, got "json"`},
	} {
		h, err := parseBlock(t, "client_id id\nclient_secret {env.S}\n"+tc.body)
		if err != nil {
			t.Fatalf("%q: parse: %v", tc.body, err)
		}
		if err := h.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: Validate = %v, want an error starting with %q", tc.body, err, tc.want)
		}
	}
}

func TestOptionInsecureHTTPLoopbackHosts(t *testing.T) {
	for raw, want := range map[string]bool{
		"http://localhost/token":         true,
		"http://LocalHost:8080/token":    true,
		"http://127.0.0.1/token":         true,
		"http://127.8.9.10:1/token":      true,
		"http://[::1]:8080/token":        true,
		"http://192.0.2.1/token":         false,
		"http://10.0.0.1/token":          false,
		"http://0.0.0.0/token":           false,
		"http://example.com/token":       false,
		"http://localhost.example/token": false,
		"http://127.0.0.1.nip.io/token":  false,
		"http://[::ffff:192.0.2.1]/t":    false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := isLoopbackHost(u); got != want {
			t.Errorf("isLoopbackHost(%s) = %v, want %v", raw, got, want)
		}
	}
}

// ---------------------------------------------------------------------------
// Through Caddy

// headerRecorder is an upstream that records every request's headers.
type headerRecorder struct {
	*httptest.Server
	mu   sync.Mutex
	seen []http.Header
}

func newHeaderRecorder(t *testing.T) *headerRecorder {
	t.Helper()
	h := &headerRecorder{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.seen = append(h.seen, r.Header.Clone())
		h.mu.Unlock()
		io.WriteString(w, "ok")
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *headerRecorder) requests() []http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]http.Header(nil), h.seen...)
}

// header X-Desko-Token with prefix "": the upstream gets the bare token in
// that header, and whatever the client sent in it is replaced. A second
// block shows prefix alone changing the Authorization scheme.
func TestOptionE2EHeaderAndPrefix(t *testing.T) {
	tokens := newTokenServer(t, okToken(3600))
	up := newHeaderRecorder(t)
	e := newE2E(t, time.Hour)
	e.loadRaw(fmt.Sprintf(e.base+` {
	handle /custom/* {
		desko_auth {
			client_id     %[1]s
			client_secret {env.DESKO_TEST_SECRET}
			token_url     %[2]s
			header        X-Desko-Token
			prefix        ""
			warm_up       off
		}
		reverse_proxy %[3]s
	}
	handle /prefixed/* {
		desko_auth {
			client_id     %[1]s
			client_secret {env.DESKO_TEST_SECRET}
			token_url     %[2]s
			prefix        "Token "
			warm_up       off
		}
		reverse_proxy %[3]s
	}
}`, testClientID, tokens.tokenURL(), up.Listener.Addr()))

	req, err := http.NewRequest("GET", e.base+"/custom/a", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Add("X-Desko-Token", "forged-by-the-client")
	req.Header.Add("x-desko-token", "and-another-one")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if s, _, b := e.do("GET", "/prefixed/b", "", "Authorization", "Token forged"); s != 200 {
		t.Fatalf("prefixed: status %d, body %s", s, b)
	}

	seen := up.requests()
	if len(seen) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(seen))
	}
	if got := seen[0].Values("X-Desko-Token"); !reflect.DeepEqual(got, []string{"tok-1"}) {
		t.Errorf("X-Desko-Token at the upstream = %q, want exactly [tok-1]", got)
	}
	if got := seen[1].Values("Authorization"); !reflect.DeepEqual(got, []string{"Token tok-1"}) {
		t.Errorf("Authorization at the upstream = %q, want [Token tok-1]", got)
	}
	if n := tokens.count(); n != 1 {
		t.Errorf("%d token requests, want 1 (both blocks share the credentials)", n)
	}
}

// An http:// token URL to a host that is not loopback is refused unless
// insecure_http is set. 192.0.2.1 (TEST-NET-1) is never contacted: the
// refused config starts no engine, and the accepted one has warm_up off
// and gets no request.
func TestOptionE2EInsecureHTTP(t *testing.T) {
	e := newE2E(t, time.Hour)
	site := func(extra string) string {
		return fmt.Sprintf(e.base+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     http://192.0.2.1/token
		warm_up       off
		%s
	}
	respond "never requested"
}`, testClientID, extra)
	}
	globals := `{
	skip_install_trust
	admin localhost:2999
	http_port ` + httpPort + `
	https_port ` + httpsPort + `
}
`
	assertLoadError(t, globals+site(""), "token_url: http:// to 192.0.2.1", "insecure_http")

	e.loadRaw(site("insecure_http"))
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logs), "insecure_http") || !strings.Contains(string(logs), "clear text") {
		t.Errorf("no insecure_http warning in Caddy's log")
	}
	if strings.Contains(string(logs), testSecret) {
		t.Errorf("the secret is in Caddy's log")
	}
}
