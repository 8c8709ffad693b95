package scrub

import (
	"bytes"
	"unicode"
	"unicode/utf8"
)

// spacedViews walks the characters of every run of v that is spaced out:
// characters c0 s c1 s c2… where the separator s, repeated identically,
// is one or two characters none of which is a letter or a digit. A
// character is a UTF-8 character or, where the text is not valid UTF-8,
// a byte (so text spaced out byte by byte is read too).
func (w *walker) spacedViews(v *view, child node) {
	t := v.text
	w.budget -= 2 * costScan * len(t)
	if len(t) <= w.sc.minNeed { // need bytes and a separator at least
		return
	}
	// Regions where a separator comes back twice, one character apart,
	// with some slack around.
	const slack = 12
	for i := 0; i < len(t); i++ {
		if !spacedAt(t, i) {
			continue
		}
		j := i + 1
		for last := i; j < len(t) && j-last <= slack; j++ {
			if spacedAt(t, j) {
				last = j
			}
		}
		w.spacedRegion(v, max(0, i-slack), min(len(t), j+slack), child)
		if w.budget < 0 {
			return
		}
		i = j
	}
}

// spacedAt reports whether a separator of one or two characters starting
// at t[i] comes back one character later, and again one character later
// unless that character is 3 or 4 bytes long (a secret of 8 bytes may
// have only three characters).
func spacedAt(t []byte, i int) bool {
	// The separator's first byte comes back within a character and a
	// separator of two.
	if c := t[i]; c < utf8.RuneSelf && isAlnum(c) || bytes.IndexByte(t[i+1:min(len(t), i+13)], c) < 0 {
		return false
	}
	for units := 1; units <= 2; units++ {
		end := i
		for range units {
			_, n := utf8.DecodeRune(t[end:])
			end += n
		}
		sep, j := t[i:end], end
		for rep := 0; ; rep++ {
			_, n := utf8.DecodeRune(t[j:])
			if n == 0 || !bytes.HasPrefix(t[j+n:], sep) {
				break
			}
			if rep == 1 || n >= 3 {
				return true
			}
			j += n + len(sep)
		}
	}
	return false
}

// spacedRegion walks the spaced-out runs of v.text[from:to].
func (w *walker) spacedRegion(v *view, from, to int, child node) {
	t := v.text
	// u[k] is where character k starts; u[len(u)-1] == to.
	u := make([]int32, 0, to-from+1)
	for i := from; i < to; {
		u = append(u, int32(i))
		_, size := utf8.DecodeRune(t[i:to])
		i += size
	}
	u = append(u, int32(to))
	w.budget -= costView * (to - from)
	m := len(u) - 1
	unit := func(k int) []byte { return t[u[k]:u[k+1]] }
	// At each period and phase, slot i is the separator after character
	// phase+i*period; a run is a stretch of identical slots.
	for period := 2; period <= 3; period++ {
		for phase := 0; phase < period; phase++ {
			i0, sep := -1, []byte(nil)
			for i := 0; phase+i*period < m; i++ {
				c := phase + i*period
				ok := c+period < m
				var s []byte
				if ok {
					s = t[u[c+1]:u[c+period]]
					for k := c + 1; k < c+period && ok; k++ {
						ok = isSeparator(unit(k))
					}
				}
				if i0 >= 0 && (!ok || !bytes.Equal(s, sep)) {
					w.spacedRun(v, u, phase+i0*period, c, period, child)
					i0 = -1
				}
				if ok && i0 < 0 {
					i0, sep = i, s
				}
				if w.budget < 0 {
					return
				}
			}
		}
	}
}

// spacedRun walks the characters first, first+period… last of v.text
// (character k at v.text[u[k]:u[k+1]]) when they may hold a leak.
func (w *walker) spacedRun(v *view, u []int32, first, last, period int, child node) {
	need := w.sc.minNeed
	if 4*((last-first)/period+1) < need { // a character has up to 4 bytes
		return
	}
	d := newView((last-first)/period + 1)
	for ch := first; ch <= last; ch += period {
		lo, hi := v.span(int(u[ch]), int(u[ch+1]))
		for _, b := range v.text[u[ch]:u[ch+1]] {
			d.push(b, lo, hi)
		}
	}
	w.budget -= costView * len(d.text)
	if len(d.text) >= need {
		w.walk(&d, child)
	}
}

// isSeparator reports whether the character c may space out a secret:
// neither a letter nor a digit, nor a stray byte.
func isSeparator(c []byte) bool {
	if len(c) == 1 {
		return c[0] < utf8.RuneSelf && !isAlnum(c[0])
	}
	r, _ := utf8.DecodeRune(c)
	return r != utf8.RuneError && !unicode.IsLetter(r) && !unicode.IsDigit(r)
}
