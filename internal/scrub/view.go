package scrub

import (
	"bytes"
	"unicode/utf8"
)

// view is a decoding of the original text: text[i] came from the original
// bytes [lo[i], hi[i]). The root view has nil lo and hi: its text is the
// original.
type view struct {
	text   []byte
	lo, hi []int32
}

// span is the original span that text[i:j] came from (i < j).
func (v *view) span(i, j int) (int32, int32) {
	if v.lo == nil {
		return int32(i), int32(j)
	}
	lo, hi := v.lo[i], v.hi[i]
	for k := i + 1; k < j; k++ {
		lo, hi = min(lo, v.lo[k]), max(hi, v.hi[k])
	}
	return lo, hi
}

// newView returns an empty view with room for n bytes.
func newView(n int) view {
	return view{text: make([]byte, 0, n), lo: make([]int32, 0, n), hi: make([]int32, 0, n)}
}

func (v *view) push(c byte, lo, hi int32) {
	v.text = append(v.text, c)
	v.lo = append(v.lo, lo)
	v.hi = append(v.hi, hi)
}

// copyFrom appends src.text[i:j] with its spans.
func (v *view) copyFrom(src *view, i, j int) {
	v.text = append(v.text, src.text[i:j]...)
	if src.lo == nil {
		for k := i; k < j; k++ {
			v.lo = append(v.lo, int32(k))
			v.hi = append(v.hi, int32(k+1))
		}
		return
	}
	v.lo = append(v.lo, src.lo[i:j]...)
	v.hi = append(v.hi, src.hi[i:j]...)
}

// firstEscape is the index of the first escape in t that decoders[k]
// undoes, or -1.
func firstEscape(t []byte, k int) int {
	leads := escapeLeads[k]
	for i := 0; i < len(t); {
		j := bytes.IndexAny(t[i:], leads)
		if j < 0 {
			return -1
		}
		i += j
		if _, n := decoders[k](t[i:]); n > 0 {
			return i
		}
		i++
	}
	return -1
}

// decodeView applies decoders[k] once over v, from first (its first
// escape) on.
func decodeView(v *view, k, first int) view {
	dec, leads := decoders[k], escapeLeads[k]
	out := newView(len(v.text))
	out.copyFrom(v, 0, first)
	t := v.text
	for i := first; i < len(t); {
		d, n := dec(t[i:])
		if n == 0 {
			j := bytes.IndexAny(t[i+1:], leads)
			if j < 0 {
				j = len(t)
			} else {
				j += i + 1
			}
			out.copyFrom(v, i, j)
			i = j
			continue
		}
		lo, hi := v.span(i, i+n)
		for _, c := range d.bytes() {
			out.push(c, lo, hi)
		}
		i += n
	}
	return out
}

// reverseView is v read backwards, character by character (a byte that is
// not part of a valid UTF-8 character counts as one): it undoes a
// reversal by characters and, for the most part, one by bytes.
func reverseView(v *view) view {
	t := v.text
	out := newView(len(t))
	for i := len(t); i > 0; {
		_, size := utf8.DecodeLastRune(t[:i])
		out.copyFrom(v, i-size, i)
		i -= size
	}
	return out
}

// hasReversedEscape reports whether t read backwards holds an escape.
func hasReversedEscape(t []byte) bool {
	var buf [40]byte
	for i := 0; i < len(t); i++ {
		j := bytes.IndexAny(t[i:], `\\%&`)
		if j < 0 {
			return false
		}
		i += j
		// The escape, read backwards, would end with t[i].
		r := buf[:0]
		for k := i; k >= max(0, i-len(buf)+1); k-- {
			r = append(r, t[k])
		}
		for _, dec := range decoders {
			if _, n := dec(r); n > 0 {
				return true
			}
		}
	}
	return false
}
