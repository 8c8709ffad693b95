package scrubtest

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Step is one encoding a careless server may apply to text, with a
// tolerant decoder that reads back what an attacker could read from the
// encoded text after parts of it were redacted.
type Step struct {
	Name   string
	Encode func(string) string
	// Decode returns the readings of text: the decoder applied to text
	// as a whole and to every run of it that it can decode (at every
	// alignment, for base64 and hex).
	Decode func(text string) []string
	// CaseSafe: changing the case of this step's output does not change
	// what it decodes to, but for case (hex, percent-encoding, HTML
	// references, reversal, spacing, case itself). A case change may
	// follow only steps that are all case-safe.
	CaseSafe bool
}

var (
	// B64Std is padded standard base64.
	B64Std = b64Step("base64", base64.StdEncoding)
	// B64StdRaw is unpadded standard base64.
	B64StdRaw = b64Step("base64 raw", base64.RawStdEncoding)
	// B64URL is padded URL base64.
	B64URL = b64Step("base64url", base64.URLEncoding)
	// B64URLRaw is unpadded URL base64.
	B64URLRaw = b64Step("base64url raw", base64.RawURLEncoding)
	// Hex is lower-case hex.
	Hex = Step{"hex", func(s string) string { return hex.EncodeToString([]byte(s)) }, decodeHexRuns, true}
	// HexUpper is upper-case hex.
	HexUpper = Step{"HEX", func(s string) string { return strings.ToUpper(hex.EncodeToString([]byte(s))) }, decodeHexRuns, true}
	// Query is form encoding (url.QueryEscape: '+' for a space).
	Query = Step{"query escape", url.QueryEscape, func(s string) []string { return []string{unpercent(s, true)} }, true}
	// Percent is every byte percent-encoded.
	Percent = Step{"percent all", percentAll, func(s string) []string { return []string{unpercent(s, false)} }, true}
	// JSON is the content of a JSON string, as encoding/json writes it.
	JSON = Step{"JSON", jsonString, func(s string) []string { return []string{unbackslash(s)} }, false}
	// UEscape is every character as \uXXXX (surrogate pairs beyond the
	// BMP).
	UEscape = Step{`\u`, uEscapeAll, func(s string) []string { return []string{unbackslash(s)} }, false}
	// HTML is html.EscapeString.
	HTML = Step{"HTML", html.EscapeString, func(s string) []string { return []string{html.UnescapeString(s)} }, true}
	// HTMLNum is every character as a decimal HTML reference.
	HTMLNum = Step{"HTML numeric", htmlNumAll, func(s string) []string { return []string{html.UnescapeString(s)} }, true}
	// Upper is strings.ToUpper: the leak rule ignores case.
	Upper = Step{"upper", strings.ToUpper, func(s string) []string { return []string{s} }, true}
	// Lower is strings.ToLower.
	Lower = Step{"lower", strings.ToLower, func(s string) []string { return []string{s} }, true}
	// Reverse is the characters in reverse order.
	Reverse = Step{"reversed", reverseRunes, func(s string) []string { return []string{reverseRunes(s)} }, true}
)

// Spaced is the step that writes sep between every two characters.
func Spaced(sep string) Step {
	n := utf8.RuneCountInString(sep) + 1
	return Step{
		Name:   fmt.Sprintf("spaced by %q", sep),
		Encode: func(s string) string { return strings.Join(strings.Split(s, ""), sep) },
		Decode: func(s string) []string {
			out := []string{strings.ReplaceAll(s, sep, "")}
			r := []rune(s)
			for phase := range n {
				var b strings.Builder
				for i := phase; i < len(r); i += n {
					b.WriteRune(r[i])
				}
				out = append(out, b.String())
			}
			return out
		},
		CaseSafe: true,
	}
}

// Steps are all the steps, spaced out by a few separators.
var Steps = []Step{
	B64Std, B64StdRaw, B64URL, B64URLRaw, Hex, HexUpper, Query, Percent, JSON, UEscape, HTML, HTMLNum,
	Upper, Lower, Reverse, Spaced(" "), Spaced("-"), Spaced("."), Spaced(", "), Spaced("·"),
}

// Encode applies the chain's steps to s, first to last.
func Encode(s string, chain []Step) string {
	for _, st := range chain {
		s = st.Encode(s)
	}
	return s
}

// Decode returns every reading of text through the chain undone, last
// step first, and every reading on the way (text itself, and what each
// step undone leaves). Readings shorter than min bytes are dropped:
// decoding only shortens them.
func Decode(text string, chain []Step, min int) []string {
	seen := map[string]bool{text: true}
	all, layer := []string{text}, []string{text}
	for i := len(chain) - 1; i >= 0; i-- {
		var next []string
		inNext := map[string]bool{}
		for _, c := range layer {
			for _, d := range chain[i].Decode(c) {
				if len(d) < min || inNext[d] {
					continue
				}
				inNext[d] = true
				next = append(next, d)
				if !seen[d] {
					seen[d] = true
					all = append(all, d)
				}
			}
		}
		layer = next
	}
	return all
}

// Windows are the texts whose presence in any reading is a leak of
// secret: the secret whole when shorter than 12 bytes, else each of its
// 8-byte windows, in its own, upper and lower case, forwards and backwards
// (by characters and by bytes), folded by Fold.
func Windows(secret string) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range []string{secret, strings.ToUpper(secret), strings.ToLower(secret)} {
		for _, v := range []string{c, reverseRunes(c), reverseBytes(c)} {
			w := len(v)
			if w >= 12 {
				w = 8
			}
			for i := 0; i+w <= len(v); i++ {
				if f := Fold(v[i : i+w]); !seen[f] {
					seen[f] = true
					out = append(out, f)
				}
			}
		}
	}
	return out
}

// Fold maps ASCII letters to lower case and '+' (form-encoding's space)
// to ' ', byte by byte, as the leak rule compares.
func Fold(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case 'A' <= c && c <= 'Z':
			b[i] = c + 'a' - 'A'
		case c == '+':
			b[i] = ' '
		}
	}
	return string(b)
}

// Recover returns a reading of text through the chain (see Decode) that
// holds a window of secret (see Windows), if any.
func Recover(text, secret string, chain []Step) (string, bool) {
	for _, r := range Leaked(text, secret, chain) {
		return r, true
	}
	return "", false
}

// Leaked returns the windows of secret (see Windows) that readings of
// text through the chain (see Decode) hold, each with one such reading.
func Leaked(text, secret string, chain []Step) map[string]string {
	ws := Windows(secret)
	min := len(secret)
	for _, w := range ws {
		min = minInt(min, len(w))
	}
	found := map[string]string{}
	for _, r := range Decode(text, chain, min) {
		f := Fold(r)
		for _, w := range ws {
			if _, ok := found[w]; !ok && strings.Contains(f, w) {
				found[w] = r
			}
		}
	}
	return found
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func reverseRunes(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

func reverseBytes(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

func jsonString(s string) string {
	q, _ := json.Marshal(s)
	return string(q[1 : len(q)-1])
}

func uEscapeAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > 0xffff {
			r1, r2 := (r-0x10000)>>10+0xd800, (r-0x10000)&0x3ff+0xdc00
			fmt.Fprintf(&b, `\u%04x\u%04x`, r1, r2)
			continue
		}
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	return b.String()
}

func percentAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02x", s[i])
	}
	return b.String()
}

func htmlNumAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		fmt.Fprintf(&b, "&#%d;", r)
	}
	return b.String()
}
