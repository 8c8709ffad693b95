package scrub_test

import (
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// The scrubber, one escaping at a time, as text around the secret.
func TestScrubEscapings(t *testing.T) {
	for _, secret := range []string{scrubtest.PHPSecret, "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop", "a\\u0041b&amp;c", "x&y%41\"z"} {
		sc := scrub.New("client-id", secret)
		for name, form := range scrubtest.Escapings(secret) {
			in := `{"echo":"before ` + form + ` after"}`
			out := sc.Scrub(in)
			if strings.Contains(out, form) || !strings.Contains(out, scrub.Redacted) {
				t.Errorf("secret %q, %s: Scrub(%q) = %q", secret, name, in, out)
			}
			if !strings.Contains(out, "before ") || !strings.Contains(out, " after") {
				t.Errorf("secret %q, %s: Scrub removed more than the secret: %q", secret, name, out)
			}
		}
	}
	// Basic credentials, and a Basic header echoed in JSON with '\/'.
	sc := scrub.New("id:x", scrubtest.PHPSecret)
	basic := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape("id:x") + ":" + url.QueryEscape(scrubtest.PHPSecret)))
	for _, in := range []string{"Basic " + basic, `"Basic ` + strings.ReplaceAll(basic, "/", `\/`) + `"`} {
		if out := sc.Scrub(in); strings.Contains(out, basic) || !strings.Contains(out, scrub.Redacted) {
			t.Errorf("Scrub(%q) = %q", in, out)
		}
	}
	// Extra secrets (expanded params and headers, token URL keys); too
	// short ones are not scrubbed.
	sc = scrub.New("id", "secret-1", append(scrub.URLSecrets("https://h/t?api_key=QUERYKEY-abc123"), "param-key-value", "ab")...)
	if out := sc.Scrub(`key QUERYKEY-abc123 param param-key-value ab`); out != `key [REDACTED] param [REDACTED] ab` {
		t.Errorf("Scrub = %q", out)
	}
	if out := sc.Scrub("nothing to see"); out != "nothing to see" {
		t.Errorf("Scrub changed clean text: %q", out)
	}
}

// FuzzScrubEscapedSecret embeds a secret, escaped at random, in random
// text: the scrubber must redact it. The seeds run under plain go test.
func FuzzScrubEscapedSecret(f *testing.F) {
	for i, s := range []string{scrubtest.PHPSecret, "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop", "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB", `q"u\o<t>e&`} {
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
		form := scrubtest.EscapeRandomly(secret, seed)
		in := prefix + form + suffix
		out := scrub.New("client", secret).Scrub(in)
		if strings.Contains(out, form) {
			t.Fatalf("secret %q escaped as %q survives in %q", secret, form, out)
		}
		if out != scrub.TooCostly && !strings.Contains(out, scrub.Redacted) {
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

func TestLeakCheck(t *testing.T) {
	lc := scrubtest.NewCheck("id", "s3cr3t value", "tok-abcdef")
	for _, leak := range []string{
		"x s3cr3t value y", "s3cr3t+value", `{"e":"s3cr3t\u0020value"}`, "czNjcjN0IHZhbHVl", // base64
		"Basic aWQ6czNjcjN0IHZhbHVl", "bearer tok-abcdef", "line one\ntok%2Dabcdef",
	} {
		ft := &recorder{}
		lc.AssertNone(ft, "text", leak)
		if !ft.failed {
			t.Errorf("no leak found in %q", leak)
		}
	}
	for _, clean := range []string{"", "nothing here"} {
		ft := &recorder{}
		lc.AssertNone(ft, "text", clean)
		if ft.failed != (clean == "") {
			t.Errorf("%q: failed = %v, want %v", clean, ft.failed, clean == "")
		}
	}
}

// recorder is a scrubtest.Reporter that records whether it was told of an
// error.
type recorder struct{ failed bool }

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }
