package token

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzJWT builds a JWT-shaped token around a claims payload.
func fuzzJWT(claims string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + enc.EncodeToString([]byte(claims)) + ".c2ln"
}

// FuzzParseTokenResponse checks that any JSON answer body either fails or
// yields a token that is safe to put in a header and not already expired.
// More seeds live in testdata/fuzz/FuzzParseTokenResponse.
func FuzzParseTokenResponse(f *testing.F) {
	future := time.Now().Add(time.Hour).Unix()
	for _, s := range []string{
		`{"token_type":"Bearer","expires_in":3600,"access_token":"eyJ.abc.def"}`,
		`{"access_token":"abc","expires_in":"3600"}`,
		`{"access_token":"abc","expires_in":1e400}`,
		`{"access_token":"abc","expires_in":-1}`,
		`{"access_token":"abc","expires_in":0.999}`,
		`{"access_token":"abc\r\nX: y","expires_in":60}`,
		`{"access_token":"abc","token_type":"mac"}`,
		`{"access_token":"abc"}}`,
		`{"access_token":"abc","nested":{"a":[1,{"b":[[[]]]}]}}`,
		`{"access_token":"` + fuzzJWT(`{"exp":`+strconv.FormatInt(future, 10)+`}`) + `"}`,
		`{"access_token":"` + fuzzJWT(`{"exp":1}`) + `","expires_in":60}`,
		`{"access_token":"` + fuzzJWT(`{"exp":1e300}`) + `"}`,
		`{"error":401,"id":"oauth_server","message":"Client authentication failed"}`,
		`null`,
		``,
	} {
		f.Add([]byte(s))
	}
	const def = 5 * time.Minute
	f.Fuzz(func(t *testing.T, body []byte) {
		now := time.Now()
		p, err := parseAnswer("application/json", body, now, 0, def)
		if err != nil {
			if p.Token != nil {
				t.Fatalf("an error (%v) and a token for %q", err, body)
			}
			return
		}
		if p.Token == nil || p.Value == "" {
			t.Fatalf("no error but no token for %q", body)
		}
		for i := 0; i < len(p.Value); i++ {
			if c := p.Value[i]; c < 0x21 || c > 0x7e {
				t.Fatalf("token %q holds byte %#x", p.Value, c)
			}
		}
		if !p.expiry.After(now) {
			t.Fatalf("token expires at %v, not after now %v", p.expiry, now)
		}
		if life := p.expiry.Sub(now); life < minTokenLifetime || life > max(maxExpiresIn, def) {
			t.Fatalf("token lifetime %v is absurd", life)
		}
		if !p.wallExpiry.After(now.Round(0)) {
			t.Fatalf("wall expiry %v is not after now %v", p.wallExpiry, now)
		}
		if !hasMonotonic(p.expiry) {
			t.Fatalf("expiry %v has no monotonic reading", p.expiry)
		}
	})
}

// FuzzJWTExpiry checks that jwtExpiry never panics and only reports
// plausible expiries. More seeds live in testdata/fuzz/FuzzJWTExpiry.
func FuzzJWTExpiry(f *testing.F) {
	for _, s := range []string{
		fuzzJWT(`{"exp":1700000000}`),
		fuzzJWT(`{"exp":1700000000.5}`),
		fuzzJWT(`{"exp":"1700000000"}`),
		fuzzJWT(`{"exp":1e400}`),
		fuzzJWT(`{"exp":-1}`),
		fuzzJWT(`{"exp":{"nested":[1,2,{"exp":3}]}}`),
		fuzzJWT(`[[[[[[[[[[]]]]]]]]]]`),
		"a.b.c",
		"..",
		"a.=====.c",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, tok []byte) {
		exp, ok := jwtExpiry(string(tok))
		if !ok {
			if !exp.IsZero() {
				t.Fatalf("not ok but expiry %v", exp)
			}
			return
		}
		// exp is taken as whole seconds in (0, 1e11]: a fraction of a
		// second after the epoch (found by the fuzzer, kept as the seed
		// 393fa78426d80c05) is a legitimate, long past, time.Unix(0, 0).
		if u := exp.Unix(); u < 0 || u > 1e11 {
			t.Fatalf("implausible expiry %d", u)
		}
		if exp.Nanosecond() != 0 {
			t.Fatalf("expiry %v is not a whole second", exp)
		}
	})
}

// sanitizeWhole is sanitize as it was: the whole text mapped, split into
// fields, joined and then cut. sanitize must give the same, reading only
// as far as the cut.
func sanitizeWhole(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > excerptLen {
		s = string(r[:excerptLen]) + "…"
	}
	return s
}

func FuzzSanitize(f *testing.F) {
	for _, s := range []string{
		"", " ", "a", " a ", "a  b", "\t\na\x00b\x7f", "\xff\xfeé", "a\u2028b\u00a0c",
		strings.Repeat("x", excerptLen), strings.Repeat("x", excerptLen) + " ", strings.Repeat("x", excerptLen) + " y",
		strings.Repeat("x", excerptLen-1) + " y", strings.Repeat("ab ", excerptLen), strings.Repeat(" \x01", 500) + "z",
		strings.Repeat("é", excerptLen+1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := sanitize(s), sanitizeWhole(s); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", s, got, want)
		}
	})
}
