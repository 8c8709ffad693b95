package deskoauth

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	// The reverse_proxy directive, for the adapt tests.
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func boolPtr(b bool) *bool    { return &b }
func int64Ptr(n int64) *int64 { return &n }

// parseBlock runs UnmarshalCaddyfile on `desko_auth {\n<body>\n}`.
func parseBlock(t *testing.T, body string) (Handler, error) {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("desko_auth {\n" + body + "\n}"))
	return h, err
}

// assertHandler compares the configured (JSON) fields of got and want, both
// as JSON and field by field.
func assertHandler(t *testing.T, got, want Handler) {
	t.Helper()
	gj, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("marshalling the parsed handler: %v", err)
	}
	wj, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("marshalling the expected handler: %v", err)
	}
	if string(gj) != string(wj) {
		t.Errorf("handler JSON:\n got  %s\n want %s", gj, wj)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("handler:\n got  %#v\n want %#v", got, want)
	}
}

func TestUnmarshalCaddyfileSubdirectives(t *testing.T) {
	tests := []struct {
		name string
		body string
		want Handler
	}{
		{"empty block", "", Handler{}},
		{"client_id", "client_id my-app", Handler{ClientID: "my-app"}},
		{"client_id placeholder", "client_id {env.DESKO_CLIENT_ID}", Handler{ClientID: "{env.DESKO_CLIENT_ID}"}},
		{"client_secret", "client_secret {file./run/secrets/desko}", Handler{ClientSecret: "{file./run/secrets/desko}"}},
		{"client_secret quoted with spaces", `client_secret "a b c"`, Handler{ClientSecret: "a b c"}},
		{"scope one", "scope booking.show", Handler{Scopes: []string{"booking.show"}}},
		{"scope several args", "scope a b c", Handler{Scopes: []string{"a", "b", "c"}}},
		{"scope lines accumulate", "scope a b\nscope c\nscope d e", Handler{Scopes: []string{"a", "b", "c", "d", "e"}}},
		{"scope quoted arg splits", `scope "a b" c`, Handler{Scopes: []string{"a", "b", "c"}}},
		{"scope quoted arg with extra blanks", "scope \"  a \t b  \"", Handler{Scopes: []string{"a", "b"}}},
		{"token_url", "token_url http://127.0.0.1:9999/v1.1/oauth/token", Handler{TokenURL: "http://127.0.0.1:9999/v1.1/oauth/token"}},
		{"timeout", "timeout 3s", Handler{Timeout: caddy.Duration(3 * time.Second)}},
		{"timeout with days", "timeout 1d", Handler{Timeout: caddy.Duration(24 * time.Hour)}},
		{"timeout compound", "timeout 1m30s", Handler{Timeout: caddy.Duration(90 * time.Second)}},
		{"default_ttl", "default_ttl 2m", Handler{DefaultTTL: caddy.Duration(2 * time.Minute)}},
		{"default_ttl ms", "default_ttl 1500ms", Handler{DefaultTTL: caddy.Duration(1500 * time.Millisecond)}},
		{"retry_on_unauthorized on", "retry_on_unauthorized on", Handler{RetryOnUnauthorized: boolPtr(true)}},
		{"retry_on_unauthorized off", "retry_on_unauthorized off", Handler{RetryOnUnauthorized: boolPtr(false)}},
		{"replay_body_limit 0", "replay_body_limit 0", Handler{ReplayBodyLimit: int64Ptr(0)}},
		{"replay_body_limit 4096", "replay_body_limit 4096", Handler{ReplayBodyLimit: int64Ptr(4096)}},
		{"replay_body_limit 64KiB", "replay_body_limit 64KiB", Handler{ReplayBodyLimit: int64Ptr(64 << 10)}},
		{"replay_body_limit 1MB", "replay_body_limit 1MB", Handler{ReplayBodyLimit: int64Ptr(1_000_000)}},
		{"replay_body_limit 1MiB", "replay_body_limit 1MiB", Handler{ReplayBodyLimit: int64Ptr(1 << 20)}},
		{"replay_body_limit 1TiB (the cap)", "replay_body_limit 1TiB", Handler{ReplayBodyLimit: int64Ptr(1 << 40)}},
		{"replay_body_limit cap as a number", "replay_body_limit 1099511627776", Handler{ReplayBodyLimit: int64Ptr(1 << 40)}},
		{"replay_memory 64MiB", "replay_memory 64MiB", Handler{ReplayMemory: int64Ptr(64 << 20)}},
		{"replay_memory 0", "replay_memory 0", Handler{ReplayMemory: int64Ptr(0)}},
		{"warm_up on", "warm_up on", Handler{WarmUp: boolPtr(true)}},
		{"warm_up off", "warm_up off", Handler{WarmUp: boolPtr(false)}},
		{"comments are ignored", "# a comment\nclient_id x # trailing", Handler{ClientID: "x"}},
		{
			"everything",
			`client_id     {env.DESKO_CLIENT_ID}
			 client_secret {env.DESKO_CLIENT_SECRET}
			 scope         organization.show organization.upsert
			 scope         "booking.show integration.checkin"
			 token_url     https://staging.example.com/v1.1/oauth/token
			 timeout       7s
			 default_ttl   10m
			 retry_on_unauthorized off
			 replay_body_limit 64KiB
			 warm_up       off`,
			Handler{
				ClientID:            "{env.DESKO_CLIENT_ID}",
				ClientSecret:        "{env.DESKO_CLIENT_SECRET}",
				Scopes:              []string{"organization.show", "organization.upsert", "booking.show", "integration.checkin"},
				TokenURL:            "https://staging.example.com/v1.1/oauth/token",
				Timeout:             caddy.Duration(7 * time.Second),
				DefaultTTL:          caddy.Duration(10 * time.Minute),
				RetryOnUnauthorized: boolPtr(false),
				ReplayBodyLimit:     int64Ptr(64 << 10),
				WarmUp:              boolPtr(false),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseBlock(t, tt.body)
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile: unexpected error: %v", err)
			}
			assertHandler(t, got, tt.want)
		})
	}
}

// The JSON field names are the config's public API; pin them.
func TestUnmarshalCaddyfileJSONFieldNames(t *testing.T) {
	h, err := parseBlock(t, `client_id id
		client_secret sec
		scope s1 s2
		token_url https://t.example/tok
		timeout 2s
		default_ttl 1m
		retry_on_unauthorized on
		replay_body_limit 4096
		warm_up off`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"client_id":"id","client_secret":"sec","scopes":["s1","s2"],"token_url":"https://t.example/tok",` +
		`"timeout":2000000000,"default_ttl":60000000000,"retry_on_unauthorized":true,"replay_body_limit":4096,"warm_up":false}`
	if string(got) != want {
		t.Errorf("JSON:\n got  %s\n want %s", got, want)
	}
	var back Handler
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("unmarshalling back: %v", err)
	}
	assertHandler(t, back, h)
}

// A directive with a matcher reaches the unmarshaler with the matcher
// already removed (httpcaddyfile.Helper.ExtractMatcherSet); with no block at
// all it is simply empty.
func TestUnmarshalCaddyfileNoBlock(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("desko_auth")); err != nil {
		t.Fatalf("bare directive: %v", err)
	}
	assertHandler(t, h, Handler{})
	h = Handler{}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("desko_auth {\n}")); err != nil {
		t.Fatalf("empty block: %v", err)
	}
	assertHandler(t, h, Handler{})
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string // the whole directive
		want  []string
	}{
		{"argument on the directive line", "desko_auth foo {\n client_id x\n}", []string{"desko_auth", `"foo"`}},
		{"argument on a bare directive line", "desko_auth foo", []string{"desko_auth", `"foo"`}},
		{"unknown subdirective", "desko_auth {\n client_idd x\n}", []string{"client_idd", "unknown subdirective"}},
		{"unknown subdirective after valid ones", "desko_auth {\n client_id x\n bogus 1 2\n}", []string{`"bogus"`}},
		{"nested block", "desko_auth {\n client_id x {\n  y\n }\n}", []string{"unknown subdirective"}},

		{"client_id missing", "desko_auth {\n client_id\n}", []string{"client_id", "missing argument"}},
		{"client_secret missing", "desko_auth {\n client_secret\n}", []string{"client_secret", "missing argument"}},
		{"token_url missing", "desko_auth {\n token_url\n}", []string{"token_url", "missing argument"}},
		{"timeout missing", "desko_auth {\n timeout\n}", []string{"timeout", "missing argument"}},
		{"default_ttl missing", "desko_auth {\n default_ttl\n}", []string{"default_ttl", "missing argument"}},
		{"retry_on_unauthorized missing", "desko_auth {\n retry_on_unauthorized\n}", []string{"retry_on_unauthorized", "missing argument"}},
		{"replay_body_limit missing", "desko_auth {\n replay_body_limit\n}", []string{"replay_body_limit", "missing argument"}},
		{"warm_up missing", "desko_auth {\n warm_up\n}", []string{"warm_up", "missing argument"}},
		{"missing argument at end of input", "desko_auth {\n client_id", []string{"client_id", "missing argument"}},

		{"client_id too many", "desko_auth {\n client_id a b\n}", []string{"client_id", "exactly one argument"}},
		{"client_secret too many", "desko_auth {\n client_secret a b\n}", []string{"client_secret", "exactly one argument"}},
		{"token_url too many", "desko_auth {\n token_url http://a http://b\n}", []string{"token_url", "exactly one argument"}},
		{"timeout too many", "desko_auth {\n timeout 1s 2s\n}", []string{"timeout", "exactly one argument"}},
		{"default_ttl too many", "desko_auth {\n default_ttl 1m 2m\n}", []string{"default_ttl", "exactly one argument"}},
		{"retry_on_unauthorized too many", "desko_auth {\n retry_on_unauthorized on off\n}", []string{"retry_on_unauthorized", "exactly one argument"}},
		{"replay_body_limit too many", "desko_auth {\n replay_body_limit 1 2\n}", []string{"replay_body_limit", "exactly one argument"}},
		{"warm_up too many", "desko_auth {\n warm_up on on\n}", []string{"warm_up", "exactly one argument"}},

		{"scope with none", "desko_auth {\n scope\n}", []string{"scope", "at least one"}},
		{"scope with only blank quoted args", "desko_auth {\n scope \"\" \"  \"\n}", []string{"scope", "at least one"}},

		{"timeout bad duration", "desko_auth {\n timeout soon\n}", []string{"timeout", "invalid duration", `"soon"`}},
		{"timeout without unit", "desko_auth {\n timeout 10\n}", []string{"timeout", "invalid duration"}},
		{"timeout zero", "desko_auth {\n timeout 0s\n}", []string{"timeout", "must be positive"}},
		{"timeout negative", "desko_auth {\n timeout -5s\n}", []string{"timeout", "must be positive"}},
		{"default_ttl bad duration", "desko_auth {\n default_ttl 5 minutes\n}", []string{"default_ttl", "exactly one argument"}},
		{"default_ttl bad unit", "desko_auth {\n default_ttl 5mins\n}", []string{"default_ttl", "invalid duration"}},
		{"default_ttl zero", "desko_auth {\n default_ttl 0\n}", []string{"default_ttl", "must be positive"}},
		{"default_ttl negative", "desko_auth {\n default_ttl -1m\n}", []string{"default_ttl", "must be positive"}},
		{"default_ttl negative days", "desko_auth {\n default_ttl -1d\n}", []string{"default_ttl", "must be positive"}},

		{"retry_on_unauthorized bad value", "desko_auth {\n retry_on_unauthorized yes\n}", []string{"retry_on_unauthorized", "on or off", `"yes"`}},
		{"retry_on_unauthorized uppercase", "desko_auth {\n retry_on_unauthorized ON\n}", []string{"retry_on_unauthorized", "on or off"}},
		{"warm_up bad value", "desko_auth {\n warm_up true\n}", []string{"warm_up", "on or off", `"true"`}},

		{"replay_body_limit bad size", "desko_auth {\n replay_body_limit lots\n}", []string{"replay_body_limit", "invalid size", `"lots"`}},
		{"replay_memory bad size", "desko_auth {\n replay_memory lots\n}", []string{"replay_memory", "invalid size", `"lots"`}},
		{"replay_memory missing", "desko_auth {\n replay_memory\n}", []string{"replay_memory", "missing argument"}},
		{"replay_body_limit negative", "desko_auth {\n replay_body_limit -1\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit negative with unit", "desko_auth {\n replay_body_limit -1KB\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit bad unit", "desko_auth {\n replay_body_limit 10parsecs\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit huge", "desko_auth {\n replay_body_limit 99999999999999999999999999\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit huge with unit", "desko_auth {\n replay_body_limit 20000EiB\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit over 1TiB", "desko_auth {\n replay_body_limit 2TiB\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit over 1TiB as a number", "desko_auth {\n replay_body_limit 1099511627777\n}", []string{"replay_body_limit", "invalid size"}},
		{"replay_body_limit max int64", "desko_auth {\n replay_body_limit 9223372036854775807\n}", []string{"replay_body_limit", "invalid size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil {
				t.Fatalf("UnmarshalCaddyfile(%q): no error; handler %+v", tt.input, h)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// Dispenser errors carry the position.
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

// An error points at the line of the offending subdirective.
func TestUnmarshalCaddyfileErrorLine(t *testing.T) {
	_, err := parseBlock(t, "client_id a\nclient_secret b\ntimeout never")
	if err == nil {
		t.Fatal("no error")
	}
	if !strings.Contains(err.Error(), "Testfile:4") {
		t.Errorf("error %q should point at Testfile:4", err)
	}
}

func validHandler() Handler {
	return Handler{ClientID: "id", ClientSecret: "{env.DESKO_CLIENT_SECRET}"}
}

// validateCase changes a valid Handler and says what Validate must answer:
// "" for no error, else substrings of the error separated by |.
type validateCase struct {
	name   string
	modify func(*Handler)
	want   string
}

func runValidateCases(t *testing.T, tests []validateCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := validHandler()
			tt.modify(&h)
			err := h.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: no error for %+v", h)
			}
			for _, w := range strings.Split(tt.want, "|") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("error %q carries a raw CR or LF", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []validateCase{
		{"minimal", func(*Handler) {}, ""},
		{"everything set", func(h *Handler) {
			h.Scopes = []string{"a", "b.c"}
			h.TokenURL = "https://api.example.com/v1.1/oauth/token"
			h.Timeout = caddy.Duration(time.Second)
			h.DefaultTTL = caddy.Duration(time.Minute)
			h.ReplayBodyLimit = int64Ptr(0)
			h.ReplayMemory = int64Ptr(MaxReplayMemory)
			h.RetryOnUnauthorized = boolPtr(false)
			h.WarmUp = boolPtr(false)
		}, ""},
		{"http token_url", func(h *Handler) { h.TokenURL = "http://127.0.0.1:8080/token" }, ""},
		{"token_url placeholder is checked only after expansion", func(h *Handler) { h.TokenURL = "{env.DESKO_TOKEN_URL}" }, ""},
		{"zero timeout means default", func(h *Handler) { h.Timeout = 0 }, ""},
		{"replay_body_limit at the maximum", func(h *Handler) { h.ReplayBodyLimit = int64Ptr(MaxReplayBodyLimit) }, ""},

		{"missing client_id", func(h *Handler) { h.ClientID = "" }, "client_id|required"},
		{"blank client_id", func(h *Handler) { h.ClientID = "  \t" }, "client_id|required"},
		{"missing client_secret", func(h *Handler) { h.ClientSecret = "" }, "client_secret|required"},
		{"blank client_secret", func(h *Handler) { h.ClientSecret = " " }, "client_secret|required"},
		{"token_url ftp scheme", func(h *Handler) { h.TokenURL = "ftp://files.example.com/token" }, `token_url|scheme|"ftp"`},
		{"token_url without scheme", func(h *Handler) { h.TokenURL = "api.example.com/token" }, "token_url|scheme"},
		{"token_url no host", func(h *Handler) { h.TokenURL = "https:///v1.1/oauth/token" }, "token_url|no host"},
		{"token_url unparsable", func(h *Handler) { h.TokenURL = "http://[::1" }, "token_url"},
		{"token_url with user info", func(h *Handler) { h.TokenURL = "https://u:p@api.example.com/token" }, "token_url|user"},
		{"negative timeout", func(h *Handler) { h.Timeout = caddy.Duration(-time.Second) }, "timeout"},
		{"negative default_ttl", func(h *Handler) { h.DefaultTTL = caddy.Duration(-time.Second) }, "default_ttl"},
		{"negative replay_body_limit", func(h *Handler) { h.ReplayBodyLimit = int64Ptr(-1) }, "replay_body_limit|negative"},
		{"negative replay_memory", func(h *Handler) { h.ReplayMemory = int64Ptr(-1) }, "replay_memory|negative"},
		{"replay_body_limit over the maximum", func(h *Handler) { h.ReplayBodyLimit = int64Ptr(MaxReplayBodyLimit + 1) }, "replay_body_limit|maximum|64 MiB"},
		{"replay_memory over the maximum", func(h *Handler) { h.ReplayMemory = int64Ptr(MaxReplayMemory + 1) }, "replay_memory|maximum|4.0 GiB"},
		{"replay sizes at the Caddyfile's 1TiB", func(h *Handler) { h.ReplayBodyLimit = int64Ptr(1 << 40) }, "replay_body_limit|1.0 TiB|maximum"},
		{"empty scope", func(h *Handler) { h.Scopes = []string{"a", ""} }, "scope"},
		{"scope with a space (JSON config)", func(h *Handler) { h.Scopes = []string{"a b"} }, "scope"},
		{"scope with a quote", func(h *Handler) { h.Scopes = []string{`a"b`} }, "scope"},
	}
	runValidateCases(t, tests)
}

// The JWT styles' settings (issue 19): what each style needs, and the key
// only as a placeholder. The key itself is read and test-signed at load
// (TestCaddyValidateClientKey).
func TestValidateJWTStyles(t *testing.T) {
	pkjwt := func(h *Handler) {
		h.AuthStyle, h.ClientSecret, h.ClientKey = "private_key_jwt", "", "{file./etc/caddy/desko.key}"
	}
	with := func(f func(*Handler)) func(*Handler) { return func(h *Handler) { pkjwt(h); f(h) } }
	literal := "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBmK3dz0eb5ijL8lJ3x1K2mQ0d9u8aT4s7cPqv3nWzYt\n-----END PRIVATE KEY-----\n"
	runValidateCases(t, []validateCase{
		{"private_key_jwt", pkjwt, ""},
		{"private_key_jwt, every setting", with(func(h *Handler) {
			h.ClientKey, h.ClientKeyID, h.ClientKeyAlg = "{env.DESKO_CLIENT_KEY}", "kid-2026", "PS256"
			h.ClientAssertionAudience = "https://idp.example.com/realms/desko"
		}), ""},
		{"client_secret_jwt", func(h *Handler) { h.AuthStyle = "client_secret_jwt" }, ""},
		{"client_secret_jwt with an audience", func(h *Handler) {
			h.AuthStyle, h.ClientAssertionAudience = "client_secret_jwt", "https://idp.example.com"
		}, ""},

		{"private_key_jwt with a secret", with(func(h *Handler) { h.ClientSecret = "{env.S}" }), "client_secret|private_key_jwt|sends no secret"},
		{"private_key_jwt without a key", with(func(h *Handler) { h.ClientKey = "" }), "client_key|private_key_jwt needs"},
		{"a literal PEM key", with(func(h *Handler) { h.ClientKey = literal }), "client_key: a literal PEM key"},
		{"a path without {file.*}", with(func(h *Handler) { h.ClientKey = "/etc/caddy/desko.key" }), "client_key|{file./path}|no placeholder"},
		{"client_key_alg ES256", with(func(h *Handler) { h.ClientKeyAlg = "ES256" }), `client_key_alg: "ES256" is not RS256 or PS256`},
		{"client_secret_jwt without a secret", func(h *Handler) { h.AuthStyle, h.ClientSecret = "client_secret_jwt", "" }, "client_secret|required"},
		{"a key with another style", func(h *Handler) { h.ClientKey = "{file./k.pem}" }, "client_key|only auth_style private_key_jwt|json"},
		{"a key with client_secret_jwt", func(h *Handler) {
			h.AuthStyle, h.ClientKey = "client_secret_jwt", "{file./k.pem}"
		}, "client_key|client_secret_jwt"},
		{"a key ID with another style", func(h *Handler) { h.AuthStyle, h.ClientKeyID = "form", "kid" }, "client_key|form"},
		{"an audience with another style", func(h *Handler) { h.ClientAssertionAudience = "https://idp.example.com" }, "client_assertion_audience|json"},
	})
	// The refusals never quote the key.
	h := validHandler()
	pkjwt(&h)
	for _, key := range []string{literal, "MC4CAQAwBQYDK2VwBCIEIBmK3dz0eb5ijL8lJ3x1K2mQ0d9u8aT4s7cPqv3nWzYt"} {
		h.ClientKey = key
		if err := h.Validate(); err == nil || strings.Contains(err.Error(), "MC4CAQ") {
			t.Errorf("Validate = %v, want an error that does not quote the key", err)
		}
	}
}

// What the Caddyfile produces passes Validate, and what Validate rejects in
// a Caddyfile block is reported under the subdirective's name.
func TestUnmarshalCaddyfileThenValidate(t *testing.T) {
	h, err := parseBlock(t, "client_id id\nclient_secret {env.S}\nscope a \"b c\"\ntoken_url ftp://x/y")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "token_url") {
		t.Errorf("Validate = %v, want a token_url error", err)
	}
	h, err = parseBlock(t, "client_id id")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "client_secret") {
		t.Errorf("Validate = %v, want a client_secret error", err)
	}
}

func TestExpand(t *testing.T) {
	const secret = "s3cr3t-VALUE-do-not-print"
	t.Setenv("DESKO_TEST_SECRET", secret)
	t.Setenv("DESKO_TEST_ID", "my-client")
	t.Setenv("DESKO_TEST_EMPTY", "")
	dir := t.TempDir()
	withNL := filepath.Join(dir, "secret-nl.txt")
	withCRLF := filepath.Join(dir, "secret-crlf.txt")
	onlyNL := filepath.Join(dir, "only-newline.txt")
	twoNL := filepath.Join(dir, "two-newlines.txt")
	for path, content := range map[string]string{
		withNL:   secret + "\n",
		withCRLF: secret + "\r\n",
		onlyNL:   "\n",
		twoNL:    "x\n\n",
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(dir, "does-not-exist.txt")

	t.Run("ok", func(t *testing.T) {
		for _, tt := range []struct{ raw, want string }{
			{"literal", "literal"},
			{"{env.DESKO_TEST_ID}", "my-client"},
			{"{env.DESKO_TEST_SECRET}", secret},
			{"prefix-{env.DESKO_TEST_ID}-suffix", "prefix-my-client-suffix"},
			{"{env.DESKO_TEST_ID}:{env.DESKO_TEST_SECRET}", "my-client:" + secret},
			{"{file." + withNL + "}", secret},
			{"{file." + withCRLF + "}", secret},
			{"{file." + twoNL + "}", "x\n"}, // only one trailing newline goes
			{`a\{b\}`, "a{b}"},              // escaped braces are literal
		} {
			got, err := expand("client_secret", tt.raw)
			if err != nil {
				t.Errorf("expand(%q): %v", tt.raw, err)
				continue
			}
			if got != tt.want {
				t.Errorf("expand(%q) = %q, want %q", tt.raw, got, tt.want)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tt := range []struct {
			field, raw string
			want       []string
			notWant    []string
		}{
			{"client_secret", "{env.DESKO_TEST_UNSET_X}", []string{"client_secret", "{env.DESKO_TEST_UNSET_X}", "empty"}, nil},
			{"client_id", "{env.DESKO_TEST_EMPTY}", []string{"client_id", "{env.DESKO_TEST_EMPTY}"}, nil},
			// Only the placeholder that is empty is blamed.
			{"client_secret", "{env.DESKO_TEST_SECRET}{env.DESKO_TEST_UNSET_X}", []string{"client_secret", "{env.DESKO_TEST_UNSET_X}"}, []string{"{env.DESKO_TEST_SECRET}"}},
			{"client_secret", "{file." + missing + "}", []string{"client_secret", "{file." + missing + "}"}, nil},
			{"token_url", "{file." + missing + "}", []string{"token_url", "{file." + missing + "}"}, nil},
			{"client_secret", "{file." + onlyNL + "}", []string{"client_secret", "{file." + onlyNL + "}"}, nil},
			{"client_secret", "{file." + withNL + "}{file." + missing + "}", []string{"client_secret", "{file." + missing + "}"}, []string{withNL}},
			{"client_id", "", []string{"client_id", "is empty"}, nil},
			// A literal with braces is not "empty", and the error does not
			// quote the braced part, which is a piece of the secret.
			{"client_secret", "abc{" + secret + "}", []string{"client_secret", "other than {env.*} and {file.*}"}, []string{"is empty"}},
			{"client_secret", "{env.DESKO_TEST_ID}{nope}", []string{"client_secret", "other than"}, []string{"{env.DESKO_TEST_ID}", "{nope}"}},
		} {
			got, err := expand(tt.field, tt.raw)
			if err == nil {
				t.Errorf("expand(%q, %q) = %q, want an error", tt.field, tt.raw, got)
				continue
			}
			if got != "" {
				t.Errorf("expand(%q, %q) returned %q with its error", tt.field, tt.raw, got)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("expand(%q, %q): error %q does not contain %q", tt.field, tt.raw, err, w)
				}
			}
			for _, nw := range tt.notWant {
				if strings.Contains(err.Error(), nw) {
					t.Errorf("expand(%q, %q): error %q should not contain %q", tt.field, tt.raw, err, nw)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("expand(%q, %q): error %q shows the secret", tt.field, tt.raw, err)
			}
			if strings.Contains(err.Error(), "my-client") {
				t.Errorf("expand(%q, %q): error %q shows a variable's value", tt.field, tt.raw, err)
			}
		}
	})
}

// adapt runs the Caddyfile adapter, as `caddy adapt` does.
func adapt(t *testing.T, caddyfileText string) ([]byte, []caddyconfig.Warning, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("the caddyfile adapter is not registered")
	}
	return adapter.Adapt([]byte(caddyfileText), map[string]any{"filename": "Caddyfile"})
}

// handlerNames returns the "handler" values of the adapted config's HTTP
// servers, depth first, in route and handler order.
func handlerNames(t *testing.T, cfg []byte) []string {
	t.Helper()
	var names []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			if n, ok := v["handler"].(string); ok {
				names = append(names, n)
			}
			// Only "handle" and "routes" (of a subroute) hold handlers.
			for _, k := range []string{"handle", "routes"} {
				if c, ok := v[k]; ok {
					walk(c)
				}
			}
		}
	}
	// servers is a map of names; walk each server.
	var root struct {
		Apps struct {
			HTTP struct {
				Servers map[string]json.RawMessage `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &root); err != nil {
		t.Fatalf("adapted config is not JSON: %v\n%s", err, cfg)
	}
	for _, raw := range root.Apps.HTTP.Servers {
		var srv any
		if err := json.Unmarshal(raw, &srv); err != nil {
			t.Fatal(err)
		}
		walk(srv)
	}
	return names
}

func indexOf(list []string, s string) int {
	for i, e := range list {
		if e == s {
			return i
		}
	}
	return -1
}

func TestAdaptCaddyfileOrdersBeforeReverseProxy(t *testing.T) {
	// reverse_proxy comes first in the file, and there is no `order`
	// line: the registered directive order must still put desko_auth first.
	const input = `
:8080 {
	reverse_proxy https://api.desko.com.br {
		header_up Host {upstream_hostport}
	}
	desko_auth {
		client_id     {env.DESKO_CLIENT_ID}
		client_secret {env.DESKO_CLIENT_SECRET}
		scope         organization.show "booking.show integration.checkin"
		timeout       5s
		replay_body_limit 64KiB
		warm_up       off
	}
}
`
	cfg, warnings, err := adapt(t, input)
	if err != nil {
		t.Fatalf("Adapt: %v", err)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w)
	}
	names := handlerNames(t, cfg)
	da, rp := indexOf(names, "desko_auth"), indexOf(names, "reverse_proxy")
	if da < 0 || rp < 0 {
		t.Fatalf("handlers %v: want both desko_auth and reverse_proxy\n%s", names, cfg)
	}
	if da > rp {
		t.Errorf("handlers in order %v: desko_auth must come before reverse_proxy\n%s", names, cfg)
	}
	// Raw-text check as well: Caddy marshals routes in order.
	if i, j := strings.Index(string(cfg), `"handler":"desko_auth"`), strings.Index(string(cfg), `"handler":"reverse_proxy"`); i < 0 || j < 0 || i > j {
		t.Errorf("desko_auth at %d, reverse_proxy at %d in\n%s", i, j, cfg)
	}

	// The handler's JSON is exactly what the block says; placeholders stay
	// unexpanded (they are read at Provision, not at adapt time).
	var root struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &root); err != nil {
		t.Fatal(err)
	}
	var found *Handler
	var find func(raws []json.RawMessage)
	find = func(raws []json.RawMessage) {
		for _, raw := range raws {
			var probe struct {
				Handler string `json:"handler"`
				Routes  []struct {
					Handle []json.RawMessage `json:"handle"`
				} `json:"routes"`
			}
			if err := json.Unmarshal(raw, &probe); err != nil {
				t.Fatal(err)
			}
			if probe.Handler == "desko_auth" {
				found = new(Handler)
				if err := json.Unmarshal(raw, found); err != nil {
					t.Fatal(err)
				}
				return
			}
			for _, r := range probe.Routes {
				find(r.Handle)
			}
		}
	}
	for _, srv := range root.Apps.HTTP.Servers {
		for _, r := range srv.Routes {
			find(r.Handle)
		}
	}
	if found == nil {
		t.Fatalf("no desko_auth handler in\n%s", cfg)
	}
	assertHandler(t, *found, Handler{
		ClientID:        "{env.DESKO_CLIENT_ID}",
		ClientSecret:    "{env.DESKO_CLIENT_SECRET}",
		Scopes:          []string{"organization.show", "booking.show", "integration.checkin"},
		Timeout:         caddy.Duration(5 * time.Second),
		ReplayBodyLimit: int64Ptr(64 << 10),
		WarmUp:          boolPtr(false),
	})
}

// Also with a path matcher, and after the other middleware it is ordered
// against (request_header before it, handle/route after).
func TestAdaptCaddyfileWithMatcher(t *testing.T) {
	const input = `
http://localhost:8080 {
	route {
		respond "inner" 200
	}
	desko_auth /v1.1/* {
		client_id a
		client_secret {env.S}
	}
	request_header X-From caddy
}
`
	cfg, _, err := adapt(t, input)
	if err != nil {
		t.Fatalf("Adapt: %v", err)
	}
	names := handlerNames(t, cfg)
	rh, da, sr := indexOf(names, "headers"), indexOf(names, "desko_auth"), indexOf(names, "subroute")
	if rh < 0 || da < 0 || sr < 0 {
		t.Fatalf("handlers %v: want headers, desko_auth and a subroute\n%s", names, cfg)
	}
	if !(rh < da) {
		t.Errorf("handlers %v: request_header must come before desko_auth", names)
	}
	// The route directive is the last subroute in document order; check
	// via the raw JSON that desko_auth precedes the "inner" response.
	if i, j := strings.Index(string(cfg), `"handler":"desko_auth"`), strings.Index(string(cfg), `"body":"inner"`); i < 0 || j < 0 || i > j {
		t.Errorf("desko_auth (at %d) must come before the route block (at %d)\n%s", i, j, cfg)
	}
	if !strings.Contains(string(cfg), `"/v1.1/*"`) {
		t.Errorf("the path matcher is missing from\n%s", cfg)
	}
}

func TestAdaptCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name  string
		block string
		want  []string
	}{
		{"unknown subdirective", "desko_auth {\n\t\tclient_id a\n\t\tclient_sekret b\n\t}", []string{"client_sekret", "Caddyfile:"}},
		{"bad duration", "desko_auth {\n\t\ttimeout soon\n\t}", []string{"timeout", "soon"}},
		{"bad size", "desko_auth {\n\t\treplay_body_limit huge\n\t}", []string{"replay_body_limit"}},
		{"argument on directive line", "desko_auth foo {\n\t\tclient_id a\n\t}", []string{"desko_auth", "foo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			input := ":8080 {\n\t" + tt.block + "\n\treverse_proxy localhost:9000\n}\n"
			cfg, _, err := adapt(t, input)
			if err == nil {
				t.Fatalf("Adapt: no error; config\n%s", cfg)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestUnmarshalSharedCache(t *testing.T) {
	h, err := parseBlock(t, "client_id a\nclient_secret b\nshared_cache")
	if err != nil {
		t.Fatal(err)
	}
	if h.SharedCache == nil || h.SharedCache.StorageRaw != nil {
		t.Fatalf("bare shared_cache: %+v, want on with the config's storage", h.SharedCache)
	}

	h, err = parseBlock(t, "client_id a\nclient_secret b\nshared_cache {\n storage file_system /mnt/tokens\n}")
	if err != nil {
		t.Fatal(err)
	}
	var storage map[string]any
	if h.SharedCache == nil || json.Unmarshal(h.SharedCache.StorageRaw, &storage) != nil ||
		storage["module"] != "file_system" || storage["root"] != "/mnt/tokens" {
		t.Fatalf("shared_cache with storage: %s", h.SharedCache.StorageRaw)
	}

	for block, want := range map[string]string{
		"shared_cache on":                                                     "shared_cache: takes no arguments",
		"shared_cache\nshared_cache":                                          "shared_cache: given twice",
		"shared_cache {\n store file_system /x\n}":                            `shared_cache: unknown subdirective "store"`,
		"shared_cache {\n storage\n}":                                         "shared_cache: storage: missing module name",
		"shared_cache {\n storage nosuchstorage\n}":                           "shared_cache: storage nosuchstorage",
		"shared_cache {\n storage file_system /x\n storage file_system /y\n}": "shared_cache: storage given twice",
	} {
		if _, err := parseBlock(t, block); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", block, err, want)
		}
	}
}
