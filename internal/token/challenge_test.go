package token

import (
	"net/http"
	"testing"
)

func TestSignalOf(t *testing.T) {
	for _, tc := range []struct {
		fields []string
		want   Signal
	}{
		{nil, SaidNothing},
		{[]string{`Bearer`}, SaidNothing},
		{[]string{`Bearer realm="api"`}, SaidNothing},
		{[]string{`Bearer error="invalid_token"`}, SaidInvalidToken},
		{[]string{`bearer realm="example", error="invalid_token", error_description="The access token expired"`}, SaidInvalidToken},
		{[]string{`Bearer error=invalid_token`}, SaidInvalidToken},
		{[]string{`Bearer realm="a, b", error="insufficient_scope", scope="x y"`}, SaidOther},
		{[]string{`Bearer error="invalid_request"`}, SaidOther},
		{[]string{`Basic realm="x", Bearer error="invalid_token"`}, SaidInvalidToken},
		{[]string{`Basic realm="x"`, `Bearer error="invalid_token"`}, SaidInvalidToken},
		{[]string{`Bearer error="insufficient_scope"`, `Bearer error="invalid_token"`}, SaidInvalidToken},
		{[]string{`Basic realm="x", error="invalid_token"`}, SaidNothing}, // Basic's param, not Bearer's
		{[]string{`Negotiate a87421000492aa874209af8bc028==, Bearer error="insufficient_scope"`}, SaidOther},
		{[]string{`Bearer realm="quote \" and comma, inside", error="invalid_token"`}, SaidInvalidToken},
		{[]string{`Bearer error="invalid_tokenX"`}, SaidOther},
		{[]string{`,,, Bearer ,, error = "invalid_token" ,`}, SaidInvalidToken},
		{[]string{`"garbage`}, SaidNothing},
	} {
		h := http.Header{}
		for _, f := range tc.fields {
			h.Add("WWW-Authenticate", f)
		}
		if got := SignalOf(h); got != tc.want {
			t.Errorf("SignalOf(%q) = %d, want %d", tc.fields, got, tc.want)
		}
	}
}

func FuzzSignalOf(f *testing.F) {
	f.Add(`Bearer realm="a, b", error="invalid_token"`)
	f.Add(`Basic realm="x", Bearer error=insufficient_scope`)
	f.Fuzz(func(t *testing.T, v string) {
		SignalOf(http.Header{"Www-Authenticate": {v}}) // must not panic
	})
}
