// Package scrubtest holds what tests need to prove that no secret leaks:
// the ways a careless server may write a secret back, and a leak check
// built on the production scrubber.
package scrubtest

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
)

// PHPSecret is the secret of the review that found the first echo leak: a
// '/' that PHP writes as "\/", and characters that HTML and Go's JSON
// escape.
const PHPSecret = "Sup3r/Secret-Valu3&<x>"

// Escapings are the ways a careless server may write s back, by name.
func Escapings(s string) map[string]string {
	goJSON, _ := json.Marshal(s)
	uAll := func(upper bool) string {
		var b strings.Builder
		for _, r := range s {
			f := "\\u%04x"
			if upper {
				f = "\\u%04X"
			}
			writeU(&b, f, r)
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
		"base64 after 1 byte":  base64.StdEncoding.EncodeToString([]byte("{" + s)),
		"base64 after 2 bytes": base64.RawURLEncoding.EncodeToString([]byte(`:"` + s)),
		"hex":                  hex.EncodeToString([]byte(s)),
		"upper":                strings.ToUpper(s),
		"lower":                strings.ToLower(s),
		"reversed":             reverseRunes(s),
		"spaced":               strings.Join(strings.Split(s, ""), " "),
	}
}

// EscapeRandomly writes s with every character escaped one of the ways a
// server might, chosen by the bits of seed, and the whole possibly wrapped
// in another layer.
func EscapeRandomly(s string, seed uint64) string {
	next := func(n uint64) uint64 {
		seed = seed*6364136223846793005 + 1442695040888963407
		return (seed >> 33) % n
	}
	var b strings.Builder
	for _, r := range s {
		switch next(9) {
		case 0:
			writeU(&b, "\\u%04x", r)
		case 1:
			writeU(&b, "\\u%04X", r)
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

// writeU writes r as \uXXXX in format f, as a surrogate pair beyond the
// Basic Multilingual Plane.
func writeU(b *strings.Builder, f string, r rune) {
	if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
		fmt.Fprintf(b, f+f, r1, r2)
		return
	}
	fmt.Fprintf(b, f, r)
}

// Reporter is the part of testing.TB that a Check uses.
type Reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// Check is the tests' one check that no secret leaked: it looks for what
// the production scrubber looks for, a leak as the scrub package
// documentation defines it: enough consecutive bytes of the client secret
// or of another secret, such as an issued token, in any case, forwards or
// backwards, spaced out or split, in every view the scrubber reads
// (escapes undone, base64 and hex decoded at every alignment: the secret
// as is, form-encoded, in base64 or hex, inside Basic credentials, inside
// an encoded request body…).
type Check struct{ sc *scrub.Scrubber }

// NewCheck checks for the client secret (with the client ID that goes with
// it into Basic credentials) and for others (tokens, param values); like
// the scrubber, it ignores others shorter than scrub.MinExtra.
func NewCheck(clientID, secret string, others ...string) Check {
	return Check{scrub.New(clientID, secret, others...)}
}

// Leaks reports whether text holds a secret.
func (c Check) Leaks(text string) bool { return c.sc.Scrub(text) != text }

// AssertNone fails t when text holds a secret, and when text is empty: the
// check would then prove nothing. what names the text in the failure,
// which shows the text with the secrets redacted.
func (c Check) AssertNone(t Reporter, what, text string) {
	t.Helper()
	if text == "" {
		t.Errorf("%s is empty: the leak check would prove nothing", what)
		return
	}
	// Line by line: a log is read in its lines, and each gets the whole
	// scrubbing budget. The lines are independent, so every CPU takes a
	// share (a test's DEBUG log runs to megabytes); the failures are
	// reported in line order.
	lines := strings.Split(text, "\n")
	scrubbed := make([]string, len(lines))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(lines)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(lines); i = int(next.Add(1) - 1) {
				scrubbed[i] = c.sc.Scrub(lines[i])
			}
		})
	}
	wg.Wait()
	for i, line := range lines {
		if got := scrubbed[i]; got != line {
			t.Errorf("%s holds a secret or token (line %d): %.300s", what, i+1, got)
		}
	}
}

// AssertNoEscaping fails t if text holds secret in any of its Escapings.
func AssertNoEscaping(t Reporter, what, text, secret string) {
	t.Helper()
	for name, form := range Escapings(secret) {
		if strings.Contains(text, form) {
			t.Errorf("%s holds the secret (%s): %.400s", what, name, text)
		}
	}
}
