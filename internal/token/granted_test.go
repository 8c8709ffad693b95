package token

import (
	"encoding/base64"
	"testing"
	"time"
)

func TestGrantedScopes(t *testing.T) {
	jwt := func(claims string) string {
		enc := base64.RawURLEncoding
		return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + enc.EncodeToString([]byte(claims)) + ".c2ln"
	}
	for _, tc := range []struct{ answer, tok, want string }{
		{"booking.show  organization.show", "opaque", "booking.show organization.show"},
		{"", jwt(`{"scope":"a b"}`), "a b"},
		{"", jwt(`{"scp":["a","b"]}`), "a b"},
		{"", jwt(`{"scp":"c"}`), "c"},
		{"from-answer", jwt(`{"scope":"from-jwt"}`), "from-answer"},
		{"", jwt(`{"scope":42}`), ""},
		{"", "opaque", ""},
	} {
		if got := grantedScopes(tc.answer, tc.tok); got != tc.want {
			t.Errorf("grantedScopes(%q, %q) = %q, want %q", tc.answer, tc.tok, got, tc.want)
		}
	}
	// Through the parser, in both answer styles.
	for ct, body := range map[string]string{
		"application/json":                  `{"access_token":"abc","expires_in":60,"scope":"x y"}`,
		"application/x-www-form-urlencoded": `access_token=abc&expires_in=60&scope=x+y`,
	} {
		p, err := parseAnswer(ct, []byte(body), time.Now(), 0, time.Minute)
		if err != nil || p.Granted() != "x y" {
			t.Errorf("%s: Granted() = %q, %v; want \"x y\"", ct, p.Granted(), err)
		}
	}
}
