package deskoauth

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"html"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is the scrubber: it removes secrets (the client secret, keys in
// the token URL, secret param and token_header values) from text that came
// from elsewhere, whatever common escaping that text put them in.
//
// A server that echoes a request may escape each character its own way:
// JSON with or without "\/", "\uXXXX" for any character (in either case),
// HTML entities, percent-encoding (in either case), or layers of these. The
// scrubber looks for each secret form in the text as it is and in every
// decoding of it up to scrubMaxDepth layers deep (one kind of escape undone
// per layer: a server that escapes a whole string), and in each of these
// matches every character of the secret either as itself or as any escape
// of it (a server that escapes some characters and not others). It redacts
// the original span of every match.

// redacted replaces every secret found.
const redacted = "[REDACTED]"

// scrubMaxDepth is how many whole layers of escaping are undone; the
// character-by-character match undoes one more.
const scrubMaxDepth = 2

// scrubBudget bounds the work of one Scrub call (steps of the
// character-by-character match). Text that would take more, which only a
// hostile or broken server sends, is replaced whole: scrubbing fails closed.
const scrubBudget = 1 << 23

// tooCostly replaces text whose scrubbing ran out of budget.
const tooCostly = "[REDACTED: text too costly to scrub]"

// scrubMinExtra is the shortest extra secret (a param or token_header value,
// a token URL key) that is scrubbed: shorter values would redact ordinary
// words and prove nothing.
const scrubMinExtra = 4

// scrubber redacts a fixed set of secrets.
type scrubber struct {
	needles [][]byte // longest first
}

// newScrubber returns a scrubber for the client secret (in every form a
// token request carries it: raw, form-encoded, inside Basic credentials)
// and for extra secrets.
func newScrubber(clientID, secret string, extra ...string) *scrubber {
	var forms []string
	add := func(s string, min int) {
		if len(s) < min {
			return
		}
		forms = append(forms,
			s,
			strings.ReplaceAll(s, " ", "+"), // form-encoding's space
			base64.StdEncoding.EncodeToString([]byte(s)),
			base64.RawURLEncoding.EncodeToString([]byte(s)),
			hex.EncodeToString([]byte(s)),
			strings.ToUpper(hex.EncodeToString([]byte(s))),
		)
	}
	if secret != "" {
		add(secret, 1)
		forms = append(forms,
			base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(clientID)+":"+url.QueryEscape(secret))),
			base64.StdEncoding.EncodeToString([]byte(clientID+":"+secret)),
		)
	}
	for _, s := range extra {
		add(s, scrubMinExtra)
	}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	forms = slices.Compact(forms)
	sc := &scrubber{}
	for _, f := range forms {
		if f != "" {
			sc.needles = append(sc.needles, []byte(f))
		}
	}
	return sc
}

// urlSecrets are the parts of a token URL that may hold keys: its query
// (whole, and each value) and its user information.
func urlSecrets(raw string) []string {
	u, err := url.Parse(raw)
	if err != nil {
		return nil
	}
	var out []string
	if p, ok := u.User.Password(); ok {
		out = append(out, p)
	}
	if u.User != nil {
		out = append(out, u.User.Username())
	}
	for _, vs := range u.Query() {
		out = append(out, vs...)
	}
	if u.RawQuery != "" {
		out = append(out, u.RawQuery)
	}
	return out
}

// view is a decoding of the original text: text[i] came from the original
// bytes starting at start[i] (non-decreasing).
type view struct {
	text  []byte
	start []int32
}

// Scrub returns s with every secret redacted.
func (sc *scrubber) Scrub(s string) string {
	if sc == nil || len(sc.needles) == 0 || s == "" {
		return s
	}
	n := len(s)
	root := view{text: []byte(s), start: make([]int32, n)}
	for i := range root.start {
		root.start[i] = int32(i)
	}
	var spans [][2]int
	budget := scrubBudget
	var walk func(v view, depth int)
	walk = func(v view, depth int) {
		spans = sc.find(v, n, spans, &budget)
		if budget < 0 {
			return
		}
		if depth == scrubMaxDepth || !hasEscape(v.text) {
			return
		}
		for _, dec := range decoders {
			if d, changed := decodeView(v, dec); changed {
				walk(d, depth+1)
			}
		}
	}
	walk(root, 0)
	if budget < 0 {
		return tooCostly
	}
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b [2]int) int { return a[0] - b[0] })
	var b strings.Builder
	last := 0
	for i := 0; i < len(spans); {
		lo, hi := spans[i][0], spans[i][1]
		for i++; i < len(spans) && spans[i][0] <= hi; i++ {
			hi = max(hi, spans[i][1])
		}
		b.WriteString(s[last:lo])
		b.WriteString(redacted)
		last = hi
	}
	b.WriteString(s[last:])
	return b.String()
}

// find adds the original spans of every needle found in v.
func (sc *scrubber) find(v view, origLen int, spans [][2]int, budget *int) [][2]int {
	escaped := hasEscape(v.text)
	for _, nd := range sc.needles {
		for p := 0; p < len(v.text) && *budget >= 0; p++ {
			end := -1
			if !escaped {
				i := bytes.Index(v.text[p:], nd)
				if i < 0 {
					break
				}
				p += i
				end = p + len(nd)
			} else if c := v.text[p]; c == nd[0] || c == '\\' || c == '%' || c == '&' {
				end = flexMatch(v.text, nd, p, 0, budget)
			}
			if end < 0 {
				continue
			}
			spans = append(spans, [2]int{int(v.start[p]), origEnd(v, end, origLen)})
			p = end - 1
		}
	}
	return spans
}

// origEnd is the end, in the original text, of a match that ends before
// v.text[end].
func origEnd(v view, end, origLen int) int {
	last := v.start[end-1]
	for j := end; j < len(v.start); j++ {
		if v.start[j] > last {
			return int(v.start[j])
		}
	}
	return origLen
}

// flexMatch returns where a match of nd[k:] starting at text[p] ends, or -1:
// each byte of nd matches either itself or, with the ones after it, any
// escape that decodes to them. Each call costs one step of budget; out of
// budget, it fails.
func flexMatch(text, nd []byte, p, k int, budget *int) int {
	if k == len(nd) {
		return p
	}
	*budget--
	if p >= len(text) || *budget < 0 {
		return -1
	}
	r := -1
	if text[p] == nd[k] {
		r = flexMatch(text, nd, p+1, k+1, budget)
	}
	if c := text[p]; r < 0 && (c == '\\' || c == '%' || c == '&') {
		for _, dec := range decoders {
			if d, n := dec(text[p:]); n > 0 && len(d) > 0 && bytes.HasPrefix(nd[k:], d) {
				if r = flexMatch(text, nd, p+n, k+len(d), budget); r >= 0 {
					break
				}
			}
		}
	}
	return r
}

func hasEscape(b []byte) bool { return bytes.ContainsAny(b, `\%&`) }

// A decoder decodes one escape at the start of b, returning the decoded
// bytes and how many bytes of b it took; n == 0 means no escape there.
type decoder func(b []byte) (out []byte, n int)

var decoders = []decoder{decodeBackslash, decodePercent, decodeEntity}

// decodeView applies dec once over v.
func decodeView(v view, dec decoder) (view, bool) {
	out := view{text: make([]byte, 0, len(v.text)), start: make([]int32, 0, len(v.text))}
	changed := false
	for i := 0; i < len(v.text); {
		d, n := dec(v.text[i:])
		if n == 0 {
			out.text = append(out.text, v.text[i])
			out.start = append(out.start, v.start[i])
			i++
			continue
		}
		changed = true
		for range d {
			out.start = append(out.start, v.start[i])
		}
		out.text = append(out.text, d...)
		i += n
	}
	return out, changed
}

func unhex(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// decodeBackslash undoes JSON and JavaScript escapes: \uXXXX (with
// surrogate pairs), \xHH, \/ and the other one-character escapes.
func decodeBackslash(b []byte) ([]byte, int) {
	if len(b) < 2 || b[0] != '\\' {
		return nil, 0
	}
	switch c := b[1]; c {
	case 'u':
		if len(b) < 6 {
			return nil, 0
		}
		r, ok := unhex(b[2:6])
		if !ok {
			return nil, 0
		}
		if utf16.IsSurrogate(r) && len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
			if r2, ok := unhex(b[8:12]); ok {
				if pr := utf16.DecodeRune(r, r2); pr != utf8.RuneError {
					return utf8.AppendRune(nil, pr), 12
				}
			}
		}
		return utf8.AppendRune(nil, r), 6
	case 'x':
		if len(b) < 4 {
			return nil, 0
		}
		r, ok := unhex(b[2:4])
		if !ok {
			return nil, 0
		}
		return []byte{byte(r)}, 4
	case 'n':
		return []byte{'\n'}, 2
	case 'r':
		return []byte{'\r'}, 2
	case 't':
		return []byte{'\t'}, 2
	case 'b':
		return []byte{'\b'}, 2
	case 'f':
		return []byte{'\f'}, 2
	default:
		// \/, \", \\, \' and any other escaped punctuation.
		if c < 0x80 && !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return []byte{c}, 2
		}
	}
	return nil, 0
}

// decodePercent undoes %HH, in either case.
func decodePercent(b []byte) ([]byte, int) {
	if len(b) < 3 || b[0] != '%' {
		return nil, 0
	}
	r, ok := unhex(b[1:3])
	if !ok {
		return nil, 0
	}
	return []byte{byte(r)}, 3
}

// decodeEntity undoes an HTML character reference ending in ';': named
// (&amp;), decimal (&#38;) or hexadecimal (&#x26;, either case).
func decodeEntity(b []byte) ([]byte, int) {
	if len(b) < 4 || b[0] != '&' {
		return nil, 0
	}
	end := bytes.IndexByte(b[:min(len(b), 40)], ';')
	if end < 0 {
		return nil, 0
	}
	if b[1] == '#' { // numeric: the code point as written (html maps a few)
		digits, base := b[2:end], 10
		if len(digits) > 0 && (digits[0] == 'x' || digits[0] == 'X') {
			digits, base = digits[1:], 16
		}
		if len(digits) == 0 || len(digits) > 8 {
			return nil, 0
		}
		n, err := strconv.ParseUint(string(digits), base, 32)
		if err != nil || n > unicode.MaxRune {
			return nil, 0
		}
		return utf8.AppendRune(nil, rune(n)), end + 1
	}
	ent := string(b[:end+1])
	dec := html.UnescapeString(ent)
	if dec == ent {
		return nil, 0
	}
	return []byte(dec), end + 1
}

// scrub removes the secrets from text that came from elsewhere, in any
// common escaping (see scrub.go).
func (e *tokenEngine) scrub(s string) string { return e.secretScrub.Scrub(s) }

func (e *tokenEngine) scrubErr(err error) error {
	msg := err.Error()
	if scrubbed := e.scrub(msg); scrubbed != msg {
		return errors.New(scrubbed)
	}
	return err
}
