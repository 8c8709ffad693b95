package scrub_test

// The scrubber as it was before decode views, the leak rule and the
// matcher that ignores case, kept as the baseline of BenchmarkScrub and
// to show that the attack tests fail without the change.

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"html"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

const baseRedacted = "[REDACTED]"

const baseMaxDepth = 2

const baseBudget = 1 << 23

const baseTooCostly = "[REDACTED: text too costly to scrub]"

const baseMinExtra = 4

type baseScrubber struct {
	needles [][]byte // longest first
}

func newBaseline(clientID, secret string, extra ...string) *baseScrubber {
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
		add(s, baseMinExtra)
	}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	forms = slices.Compact(forms)
	sc := &baseScrubber{}
	for _, f := range forms {
		if f != "" {
			sc.needles = append(sc.needles, []byte(f))
		}
	}
	return sc
}

type baseView struct {
	text  []byte
	start []int32
}

func (sc *baseScrubber) Scrub(s string) string {
	if sc == nil || len(sc.needles) == 0 || s == "" {
		return s
	}
	n := len(s)
	root := baseView{text: []byte(s), start: make([]int32, n)}
	for i := range root.start {
		root.start[i] = int32(i)
	}
	var spans [][2]int
	budget := baseBudget
	var walk func(v baseView, depth int)
	walk = func(v baseView, depth int) {
		spans = sc.find(v, n, spans, &budget)
		if budget < 0 {
			return
		}
		if depth == baseMaxDepth || !baseHasEscape(v.text) {
			return
		}
		for _, dec := range baseDecoders {
			if d, changed := baseDecodeView(v, dec); changed {
				walk(d, depth+1)
			}
		}
	}
	walk(root, 0)
	if budget < 0 {
		return baseTooCostly
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
		b.WriteString(baseRedacted)
		last = hi
	}
	b.WriteString(s[last:])
	return b.String()
}

func (sc *baseScrubber) find(v baseView, origLen int, spans [][2]int, budget *int) [][2]int {
	escaped := baseHasEscape(v.text)
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
				end = baseFlexMatch(v.text, nd, p, 0, budget)
			}
			if end < 0 {
				continue
			}
			spans = append(spans, [2]int{int(v.start[p]), baseOrigEnd(v, end, origLen)})
			p = end - 1
		}
	}
	return spans
}

func baseOrigEnd(v baseView, end, origLen int) int {
	last := v.start[end-1]
	for j := end; j < len(v.start); j++ {
		if v.start[j] > last {
			return int(v.start[j])
		}
	}
	return origLen
}

func baseFlexMatch(text, nd []byte, p, k int, budget *int) int {
	if k == len(nd) {
		return p
	}
	*budget--
	if p >= len(text) || *budget < 0 {
		return -1
	}
	r := -1
	if text[p] == nd[k] {
		r = baseFlexMatch(text, nd, p+1, k+1, budget)
	}
	if c := text[p]; r < 0 && (c == '\\' || c == '%' || c == '&') {
		for _, dec := range baseDecoders {
			if d, n := dec(text[p:]); n > 0 && len(d) > 0 && bytes.HasPrefix(nd[k:], d) {
				if r = baseFlexMatch(text, nd, p+n, k+len(d), budget); r >= 0 {
					break
				}
			}
		}
	}
	return r
}

func baseHasEscape(b []byte) bool { return bytes.ContainsAny(b, `\%&`) }

type baseDecoder func(b []byte) (out []byte, n int)

var baseDecoders = []baseDecoder{baseDecodeBackslash, baseDecodePercent, baseDecodeEntity}

func baseDecodeView(v baseView, dec baseDecoder) (baseView, bool) {
	out := baseView{text: make([]byte, 0, len(v.text)), start: make([]int32, 0, len(v.text))}
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

func baseUnhex(b []byte) (rune, bool) {
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

func baseDecodeBackslash(b []byte) ([]byte, int) {
	if len(b) < 2 || b[0] != '\\' {
		return nil, 0
	}
	switch c := b[1]; c {
	case 'u':
		if len(b) < 6 {
			return nil, 0
		}
		r, ok := baseUnhex(b[2:6])
		if !ok {
			return nil, 0
		}
		if utf16.IsSurrogate(r) && len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
			if r2, ok := baseUnhex(b[8:12]); ok {
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
		r, ok := baseUnhex(b[2:4])
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
		if c < 0x80 && !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return []byte{c}, 2
		}
	}
	return nil, 0
}

func baseDecodePercent(b []byte) ([]byte, int) {
	if len(b) < 3 || b[0] != '%' {
		return nil, 0
	}
	r, ok := baseUnhex(b[1:3])
	if !ok {
		return nil, 0
	}
	return []byte{byte(r)}, 3
}

func baseDecodeEntity(b []byte) ([]byte, int) {
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
