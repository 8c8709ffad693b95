package scrub

import "bytes"

// The exact whole forms (the secret as written, form-encoded, base64 of
// the secret alone, hex, Basic credentials) are looked for in the text and
// its escape views as the scrubber always did: each character of a form
// matches either itself or, with the ones after it, any escape that
// decodes to them (a server that escapes some characters and not others,
// each its own way). This is what reads a secret that itself looks like
// escapes ("a\u0041b") escaped character by character.

// legacyFind adds every whole form found in v to f.
func (sc *Scrubber) legacyFind(v *view, f *finds, budget *int) {
	escaped := hasEscape(v.text)
	if escaped {
		*budget -= costScan * len(v.text) * len(sc.legacy)
	}
	for _, nd := range sc.legacy {
		for p := 0; p < len(v.text) && *budget >= 0; p++ {
			end := -1
			if !escaped {
				i := bytes.Index(v.text[p:], nd)
				if i < 0 {
					break
				}
				p += i
				end = p + len(nd)
			} else if c := v.text[p]; fold[c] == fold[nd[0]] || c == '\\' || c == '%' || c == '&' {
				end = flexMatch(v.text, nd, p, 0, budget)
			}
			if end < 0 {
				continue
			}
			f.addWhole(v, p, end)
			p = end - 1
		}
	}
	*budget -= costScan * len(v.text)
}

// flexMatch returns where a match of nd[k:] starting at text[p] ends, or -1:
// each byte of nd matches either itself or, with the ones after it, any
// escape that decodes to them, bytes comparing as the leak rule compares
// them (see fold). Each call costs costFlex; out of budget, it fails.
func flexMatch(text, nd []byte, p, k int, budget *int) int {
	if k == len(nd) {
		return p
	}
	*budget -= costFlex
	if p >= len(text) || *budget < 0 {
		return -1
	}
	r := -1
	if fold[text[p]] == fold[nd[k]] {
		r = flexMatch(text, nd, p+1, k+1, budget)
	}
	if c := text[p]; r < 0 && (c == '\\' || c == '%' || c == '&') {
		for _, dec := range decoders {
			if d, n := dec(text[p:]); n > 0 && d.n > 0 && foldPrefix(nd[k:], d.bytes()) {
				if r = flexMatch(text, nd, p+n, k+int(d.n), budget); r >= 0 {
					break
				}
			}
		}
	}
	return r
}

// foldPrefix reports whether b begins with p, bytes compared folded.
func foldPrefix(b, p []byte) bool {
	if len(p) > len(b) {
		return false
	}
	for i, c := range p {
		if fold[c] != fold[b[i]] {
			return false
		}
	}
	return true
}
