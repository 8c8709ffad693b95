package token

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Reading token answers: expires_in, the JWT exp claim, token types, and
// the one parser behind every auth style.

// makeJWT builds an unsigned JWT-shaped token around a claims payload.
func makeJWT(claims string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." +
		enc.EncodeToString([]byte(claims)) + "." +
		enc.EncodeToString([]byte("not-a-real-signature"))
}

func TestParseTokenResponse(t *testing.T) {
	// now has a whole number of seconds (so that a JWT exp, which has
	// second resolution, gives an exact lifetime) and keeps its monotonic
	// reading, like the source's clock readings (real clock: a bubble's
	// times have none).
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

		// OAuth errors in a 2xx answer
		{name: "OAuth error, no token", body: `{"error":"invalid_client"}`, wantErr: errOAuthErrorAnswer.Error()},
		{name: "OAuth error null is no error", body: `{"error":null}`, wantErr: "no access_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseAnswer("application/json", []byte(tt.body), now, 0, def)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parseAnswer(%q) = token %q expiring in %v, want an error containing %q",
						tt.body, p.Value, p.expiry.Sub(now), tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseAnswer(%q): %v", tt.body, err)
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
			// The expiry the source compares against must keep the
			// monotonic reading; the wall expiry must not (it is shown to
			// operators and metrics).
			if !hasMonotonic(p.expiry) {
				t.Errorf("expiry %v lost the monotonic reading", p.expiry)
			}
			if hasMonotonic(p.wallExpiry) || !p.wallExpiry.Equal(now.Add(tt.wantTTL)) || !p.Expiry().Equal(p.wallExpiry) {
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
				t.Fatalf("jwtExpiry(%q) ok = %v, want %v", tt.tok, ok, tt.wantOK)
			}
			if ok && got.Unix() != tt.want {
				t.Fatalf("jwtExpiry(%q) = %d, want %d", tt.tok, got.Unix(), tt.want)
			}
		})
	}
}

func TestValidValue(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"abc.DEF-123_~+/=", true},
		{"!\"#$%&'()*,:;<>?@[\\]^`{|}", true},
		{"", true}, // nothing to inject; parseAnswer refuses an empty token itself
		{"a b", false},
		{"a\tb", false},
		{"a\r\nX: y", false},
		{"a\x00", false},
		{"a\x7f", false},
		{"tokén", false},
	} {
		if got := ValidValue(tc.s); got != tc.want {
			t.Errorf("ValidValue(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

// quirkyAnswer has what the review found: a second access_token key in
// another case, a token_type with a trailing space, a fractional expires_in.
const quirkyAnswer = `{"access_token":"good-token","ACCESS_TOKEN":"evil-token","token_type":"Bearer ","expires_in":3600.7}`

// Every auth style's answer goes through the one parser, through a source.
func TestAnswerParserEveryStyle(t *testing.T) {
	for _, tc := range []struct {
		name, contentType, body string
		wantToken               string
		wantTTL                 time.Duration
		wantKind                Kind
		wantErr                 string
	}{
		{name: "quirky JSON", contentType: "application/json", body: quirkyAnswer, wantToken: "good-token", wantTTL: 3600 * time.Second},
		{name: "upper-case keys only", contentType: "application/json", body: `{"ACCESS_TOKEN":"evil","Token_Type":"mac"}`,
			wantKind: KindInvalidAnswer, wantErr: "answer has no access_token"},
		{name: "access_token twice", contentType: "application/json", body: `{"access_token":"a","access_token":"b"}`,
			wantKind: KindInvalidAnswer, wantErr: "answer has access_token more than once"},
		{name: "token_type mac", contentType: "application/json", body: `{"access_token":"a","token_type":" mac "}`,
			wantKind: KindInvalidAnswer, wantErr: `token_type is " mac "; only Bearer tokens are supported`},
		{name: "token_type not a string", contentType: "application/json", body: `{"access_token":"a","token_type":7}`,
			wantKind: KindInvalidAnswer, wantErr: "token_type is not a string"},
		{name: "form-encoded answer", contentType: "application/x-www-form-urlencoded",
			body: "access_token=form-token&token_type=bearer+&expires_in=60.5&ACCESS_TOKEN=evil", wantToken: "form-token", wantTTL: 60 * time.Second},
		{name: "form-encoded access_token twice", contentType: "application/x-www-form-urlencoded", body: "access_token=a&access_token=b",
			wantKind: KindInvalidAnswer, wantErr: "answer has access_token more than once"},
		{name: "JSON sent as text/plain", contentType: "text/plain", body: quirkyAnswer, wantToken: "good-token", wantTTL: 3600 * time.Second},
		{name: "form sent as text/plain", contentType: "text/plain; charset=utf-8", body: "access_token=plain-token&expires_in=90",
			wantToken: "plain-token", wantTTL: 90 * time.Second},
		{name: "plain text page", contentType: "text/plain; charset=utf-8", body: "Service Unavailable",
			wantKind: KindInvalidAnswer, wantErr: "answer is neither a JSON object nor a form-encoded token"},
		{name: "OAuth error with 200", contentType: "application/json", body: `{"error":"invalid_client","error_description":"nope"}`,
			wantKind: KindRefused, wantErr: "token endpoint answered 200: invalid_client: nope"},
		{name: "form-encoded OAuth error with 200", contentType: "application/x-www-form-urlencoded", body: "error=invalid_client",
			wantKind: KindRefused, wantErr: "token endpoint answered 200"},
	} {
		for _, style := range []AuthStyle{AuthJSON, AuthForm, AuthBasic} {
			inBubble(t, tc.name+"/"+style.String(), func(t *testing.T) {
				srv := newTokenServer(t, answer(200, tc.contentType, tc.body))
				s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Auth = style })
				if tc.wantToken == "" {
					te := mustGetErr(t, s)
					if te.Kind != tc.wantKind || !strings.Contains(te.Error(), tc.wantErr) {
						t.Fatalf("error %v (%v), want %v containing %q", te, te.Kind, tc.wantKind, tc.wantErr)
					}
					return
				}
				tok := mustGet(t, s)
				if tok.Value != tc.wantToken {
					t.Fatalf("token %q, want %q", tok.Value, tc.wantToken)
				}
				if ttl := tok.expiry.Sub(time.Now()); ttl != tc.wantTTL {
					t.Errorf("lifetime %v, want %v", ttl, tc.wantTTL)
				}
			})
		}
	}
}
