package scrub

import (
	"bytes"
	"html"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// An escape is what one escape decodes to: at most two characters.
type escape struct {
	b [8]byte
	n uint8
}

func (e *escape) bytes() []byte { return e.b[:e.n] }

func one(c byte) escape { return escape{b: [8]byte{c}, n: 1} }

func runeEscape(r rune) escape {
	var e escape
	e.n = uint8(utf8.EncodeRune(e.b[:], r))
	return e
}

// A decoder decodes one escape at the start of b, returning what it
// decodes to and how many bytes of b it took; n == 0 means no escape
// there.
type decoder func(b []byte) (e escape, n int)

// decoders are the escape layers, in the order of escapeLeads. Text that
// escapes each character its own way is undone by one layer of each kind
// (the order matters not, unless escapes make escapes).
var decoders = []decoder{decodeBackslash, decodePercent, decodeEntity}

var escapeLeads = []string{`\`, `%`, `&`}

func hasEscape(b []byte) bool { return bytes.ContainsAny(b, `\%&`) }

func isHex(c byte) bool { return hexval[c] >= 0 }

func unhex(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		h := hexval[c]
		if h < 0 {
			return 0, false
		}
		r = r<<4 | rune(h)
	}
	return r, true
}

// decodeBackslash undoes JSON and JavaScript escapes: \uXXXX (with
// surrogate pairs), \xHH, \/ and the other one-character escapes.
func decodeBackslash(b []byte) (escape, int) {
	if len(b) < 2 || b[0] != '\\' {
		return escape{}, 0
	}
	switch c := b[1]; c {
	case 'u':
		if len(b) < 6 {
			return escape{}, 0
		}
		r, ok := unhex(b[2:6])
		if !ok {
			return escape{}, 0
		}
		if utf16.IsSurrogate(r) && len(b) >= 12 && b[6] == '\\' && b[7] == 'u' {
			if r2, ok := unhex(b[8:12]); ok {
				if pr := utf16.DecodeRune(r, r2); pr != utf8.RuneError {
					return runeEscape(pr), 12
				}
			}
		}
		return runeEscape(r), 6
	case 'x':
		if len(b) < 4 {
			return escape{}, 0
		}
		r, ok := unhex(b[2:4])
		if !ok {
			return escape{}, 0
		}
		return one(byte(r)), 4
	case 'n':
		return one('\n'), 2
	case 'r':
		return one('\r'), 2
	case 't':
		return one('\t'), 2
	case 'b':
		return one('\b'), 2
	case 'f':
		return one('\f'), 2
	default:
		// \/, \", \\, \' and any other escaped punctuation.
		if c < utf8.RuneSelf && !isAlnum(c) {
			return one(c), 2
		}
	}
	return escape{}, 0
}

// decodePercent undoes %HH, in either case.
func decodePercent(b []byte) (escape, int) {
	if len(b) < 3 || b[0] != '%' {
		return escape{}, 0
	}
	r, ok := unhex(b[1:3])
	if !ok {
		return escape{}, 0
	}
	return one(byte(r)), 3
}

// decodeEntity undoes an HTML character reference ending in ';': named
// (&amp;, &AMP;), decimal (&#38;) or hexadecimal (&#x26;, either case).
func decodeEntity(b []byte) (escape, int) {
	if len(b) < 4 || b[0] != '&' {
		return escape{}, 0
	}
	end := bytes.IndexByte(b[:min(len(b), 40)], ';')
	if end < 0 {
		return escape{}, 0
	}
	if b[1] == '#' { // numeric: the code point as written (html maps a few)
		digits, base := b[2:end], 10
		if len(digits) > 0 && (digits[0] == 'x' || digits[0] == 'X') {
			digits, base = digits[1:], 16
		}
		if len(digits) == 0 || len(digits) > 8 {
			return escape{}, 0
		}
		n, err := strconv.ParseUint(string(digits), base, 32)
		if err != nil || n > unicode.MaxRune {
			return escape{}, 0
		}
		return runeEscape(rune(n)), end + 1
	}
	for _, c := range b[1:end] {
		if !isAlnum(c) {
			return escape{}, 0 // not a name: "&&#34;" is "&" then "&#34;"
		}
	}
	if e, ok := namedEntity(b[:end+1]); ok {
		return e, end + 1
	}
	return escape{}, 0
}

// entities caches what html makes of named references (n == 0: not
// one), copied on write: names are few, and a hostile text may repeat
// one a million times. It holds at most maxEntities names.
var (
	entities   atomic.Pointer[map[string]escape]
	entitiesMu sync.Mutex
)

const maxEntities = 4096

func namedEntity(ref []byte) (escape, bool) {
	if m := entities.Load(); m != nil {
		if e, ok := (*m)[string(ref)]; ok {
			return e, e.n > 0
		}
	}
	var e escape
	ent := string(ref)
	if dec := html.UnescapeString(ent); dec != ent && len(dec) <= len(e.b) {
		e.n = uint8(copy(e.b[:], dec))
	}
	entitiesMu.Lock()
	defer entitiesMu.Unlock()
	old := entities.Load()
	if old == nil || len(*old) < maxEntities {
		m := make(map[string]escape, 1+len(ptrMap(old)))
		for k, v := range ptrMap(old) {
			m[k] = v
		}
		m[ent] = e
		entities.Store(&m)
	}
	return e, e.n > 0
}

func ptrMap(m *map[string]escape) map[string]escape {
	if m == nil {
		return nil
	}
	return *m
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
