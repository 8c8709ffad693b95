package scrubtest

import (
	"encoding/base64"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// The tolerant decoders of the steps: an attacker reads what decodes and
// skips what does not.

func b64Step(name string, enc *base64.Encoding) Step {
	return Step{
		Name:   name,
		Encode: func(s string) string { return enc.EncodeToString([]byte(s)) },
		Decode: func(s string) []string {
			return decodeRuns(s, isB64, 4, decodeB64)
		},
	}
}

func isB64(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("+/-_", c) >= 0
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func decodeHexRuns(s string) []string { return decodeRuns(s, isHexDigit, 2, decodeHex) }

// decodeRuns decodes s with every byte outside the alphabet dropped, and
// every maximal run of the alphabet in s from each of its first align
// bytes.
func decodeRuns(s string, in func(byte) bool, align int, dec func(string) string) []string {
	var all strings.Builder
	var out []string
	for i := 0; i < len(s); {
		if !in(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && in(s[j]) {
			j++
		}
		all.WriteString(s[i:j])
		for a := 0; a < align && i+a < j; a++ {
			out = append(out, dec(s[i+a:j]))
		}
		i = j
	}
	return append(out, dec(all.String()))
}

// decodeB64 decodes s in either alphabet, as far as it goes.
func decodeB64(s string) string {
	val := func(c byte) uint32 {
		switch {
		case 'A' <= c && c <= 'Z':
			return uint32(c - 'A')
		case 'a' <= c && c <= 'z':
			return uint32(c-'a') + 26
		case '0' <= c && c <= '9':
			return uint32(c-'0') + 52
		case c == '+' || c == '-':
			return 62
		}
		return 63
	}
	var out []byte
	for i := 0; i+1 < len(s); i += 4 {
		g := s[i:min(i+4, len(s))]
		var acc uint32
		for k := range 4 {
			acc <<= 6
			if k < len(g) {
				acc |= val(g[k])
			}
		}
		group := []byte{byte(acc >> 16), byte(acc >> 8), byte(acc)}
		out = append(out, group[:len(g)-1]...)
	}
	return string(out)
}

func decodeHex(s string) string {
	out := make([]byte, len(s)/2)
	for i := range out {
		v, _ := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		out[i] = byte(v)
	}
	return string(out)
}

// unpercent undoes every %HH of s, and '+' when plus.
func unpercent(s string, plus bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHexDigit(s[i+1]) && isHexDigit(s[i+2]) {
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		if plus && s[i] == '+' {
			b.WriteByte(' ')
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unbackslash undoes the JSON string escapes of s that are well formed.
func unbackslash(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch c := s[i+1]; c {
		case '"', '\\', '/':
			b.WriteByte(c)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, ok := hex4(s[i+2:])
			if !ok {
				b.WriteByte('\\')
				continue
			}
			if utf16.IsSurrogate(r) && len(s) >= i+12 && s[i+6:i+8] == `\u` {
				if r2, ok := hex4(s[i+8:]); ok {
					if pr := utf16.DecodeRune(r, r2); pr != utf8.RuneError {
						b.WriteRune(pr)
						i += 11
						continue
					}
				}
			}
			b.WriteRune(r)
			i += 5
			continue
		default:
			b.WriteByte('\\')
			continue
		}
		i++
	}
	return b.String()
}

func hex4(s string) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	for i := range 4 {
		if !isHexDigit(s[i]) {
			return 0, false
		}
	}
	v, _ := strconv.ParseUint(s[:4], 16, 32)
	return rune(v), true
}
