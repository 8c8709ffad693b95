package scrub

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// The leak rule (see the package documentation) in numbers.
const (
	// windowMin is the shortest secret matched by windows: shorter ones
	// are matched whole.
	windowMin = 12
	// windowLen is how many consecutive bytes of a secret of at least
	// windowMin bytes are a leak.
	windowLen = 8
	// splitMin is the shortest secret also matched in pieces.
	splitMin = 8
	// maxGap is the longest gap between the pieces of a split secret;
	// pieces shorter than shortPiece, shortGap.
	maxGap, shortPiece, shortGap = 16, 4, 2
)

// fold maps a byte to the byte matching compares: ASCII letters to lower
// case, '+' (form-encoding's space) to ' '.
var fold [256]byte

func init() {
	for i := range fold {
		fold[i] = byte(i)
	}
	for c := 'A'; c <= 'Z'; c++ {
		fold[c] = byte(c) + 'a' - 'A'
	}
	fold['+'] = ' '
}

// A pattern is one way a secret can be written: forwards or backwards, in
// one of its cases, folded.
type pattern struct {
	b     []byte
	need  int  // how many consecutive bytes of b are a leak
	split bool // whether need bytes may come in pieces
}

// An entry says that a key starts at b[off] of pattern pat.
type entry struct{ pat, off int32 }

// index finds the pieces of every pattern in a text through the keys
// (kl-byte substrings) of the patterns.
type index struct {
	pats    []pattern
	kl      int // key length: min(4, shortest need)
	keys    map[uint32][]entry
	filter  [1 << 10]uint64 // one bit per hashed key
	minNeed int             // shortest need
}

func foldString(s string) []byte {
	b := []byte(s)
	for i, c := range b {
		b[i] = fold[c]
	}
	return b
}

func reverseBytes(s string) string {
	b := []byte(s)
	slices.Reverse(b)
	return string(b)
}

func reverseRunes(s string) string {
	r := []rune(s)
	if !utf8.ValidString(s) {
		return reverseBytes(s)
	}
	slices.Reverse(r)
	return string(r)
}

// need is the leak rule's R for a secret of n bytes.
func need(n int) int {
	if n < windowMin {
		return n
	}
	return windowLen
}

// newIndex indexes the secrets: those of windows matched by their windows
// and pieces (the leak rule), the others only whole.
func newIndex(windows, whole []string) *index {
	x := &index{keys: map[uint32][]entry{}, minNeed: 1 << 30}
	seen := map[string]int{}
	secrets := append(slices.Clip(windows), whole...)
	for si, s := range secrets {
		windowed := si < len(windows)
		for _, cased := range []string{s, strings.ToUpper(s), strings.ToLower(s)} {
			for _, v := range []string{cased, reverseBytes(cased), reverseRunes(cased)} {
				p := pattern{b: foldString(v), need: len(v)}
				if windowed {
					p.need, p.split = need(len(v)), len(v) >= splitMin
				}
				if i, ok := seen[string(p.b)]; ok {
					x.pats[i].need = min(x.pats[i].need, p.need)
					x.pats[i].split = x.pats[i].split || p.split
					continue
				}
				seen[string(p.b)] = len(x.pats)
				x.pats = append(x.pats, p)
				x.minNeed = min(x.minNeed, p.need)
			}
		}
	}
	x.kl = min(4, x.minNeed) // secrets are at least MinExtra bytes
	for pi, p := range x.pats {
		for off := 0; off+x.kl <= len(p.b); off++ {
			var k uint32
			for _, c := range p.b[off : off+x.kl] {
				k = k<<8 | uint32(c)
			}
			x.keys[k] = append(x.keys[k], entry{int32(pi), int32(off)})
			h := hashKey(k)
			x.filter[h>>6] |= 1 << (h & 63)
		}
	}
	return x
}

func hashKey(k uint32) uint32 { return (k * 0x9E3779B1) >> 16 }

// mayMatch reports whether t holds a key of a pattern: whether find may
// find a leak in it.
func (x *index) mayMatch(t []byte) bool {
	mask := uint32(1)<<(8*x.kl) - 1
	var key uint32
	for p, c := range t {
		key = key<<8 | uint32(fold[c])
		if p < x.kl-1 {
			continue
		}
		k := key & mask
		if h := hashKey(k); x.filter[h>>6]&(1<<(h&63)) != 0 && len(x.keys[k]) > 0 {
			return true
		}
	}
	return false
}

// find adds the leaks in v to f, in original spans.
func (x *index) find(v *view, f *finds, budget *int) {
	t := v.text
	if len(t) < x.minNeed {
		return
	}
	*budget -= costMatch * len(t)
	mask := uint32(1)<<(8*x.kl) - 1
	var key uint32
	for p, c := range t {
		key = key<<8 | uint32(fold[c])
		if p < x.kl-1 {
			continue
		}
		k := key & mask
		if h := hashKey(k); x.filter[h>>6]&(1<<(h&63)) == 0 {
			continue
		}
		es := x.keys[k]
		*budget -= len(es) // many in a secret like "0000…0000"
		for _, e := range es {
			x.piece(v, p+1-x.kl, e, f, budget)
		}
		if *budget < 0 {
			return
		}
	}
}

// spans returns the spans of f's whole pieces and of its splits that
// overlap none: a split is for a secret whose pieces are all too short to
// be leaks on their own. Where one is part of a whole piece, the rest is
// a coincidence: in a secret like "00000000", "0000000" and a "0" nearby;
// a decoding of escapes that are part of the secret leaves the rest of it
// as a piece, which a stray byte nearby would complete; four bytes of the
// secret nearby, written backwards, complete the secret's own first four.
func (f *finds) spans() [][2]int {
	spans := f.whole
	if len(f.split) == 0 {
		return spans
	}
	whole := slices.Clone(f.whole)
	slices.SortFunc(whole, func(a, b [2]int) int { return a[0] - b[0] })
	reach := make([]int, len(whole)) // reach[k]: max end of whole[:k+1]
	for k, r := range whole {
		reach[k] = r[1]
		if k > 0 {
			reach[k] = max(r[1], reach[k-1])
		}
	}
	for _, s := range f.split {
		k, _ := slices.BinarySearchFunc(whole, s[3], func(r [2]int, end int) int { return r[0] - end })
		if k == 0 || reach[k-1] <= s[2] {
			spans = append(spans, [2]int{s[2], s[3]})
		}
	}
	return spans
}

// finds are the leaks found, in original spans: whole pieces and whole
// forms (start, end) and splits (anchor start, anchor end, start, end of
// the pieces and gaps).
type finds struct {
	whole [][2]int
	split [][4]int
}

func (f *finds) addWhole(v *view, i, j int) {
	a, z := v.span(i, j)
	if n := len(f.whole); n > 0 && f.whole[n-1][0] <= int(a) && int(z) <= f.whole[n-1][1] {
		return // within the last one (the same piece at another offset)
	}
	f.whole = append(f.whole, [2]int{int(a), int(z)})
}

// piece extends the key found at t[p:] as entry e into the longest piece
// of its pattern starting there and, for a split pattern, pieces of the
// same pattern across a gap on either side; it adds the piece, or the
// pieces and their gaps, when they hold enough consecutive bytes of the
// pattern.
func (x *index) piece(v *view, p int, e entry, f *finds, budget *int) {
	t, pt := v.text, &x.pats[e.pat]
	b, i := pt.b, int(e.off)
	if p > 0 && i > 0 && fold[t[p-1]] == b[i-1] {
		return // not the start of the piece: found from there
	}
	q, j := p+x.kl, i+x.kl
	for q < len(t) && j < len(b) && fold[t[q]] == b[j] {
		q, j = q+1, j+1
	}
	*budget -= j - i
	got := j - i
	if got >= pt.need {
		f.addWhole(v, p, q)
		return
	}
	if !pt.split || 2*got < pt.need {
		return
	}
	// Pieces of need bytes or more are leaks of their own, found from
	// where they start.
	gr, nr := extend(t, q, b, j, 1, budget)
	gl, nl := extend(t, p-1, b, i-1, -1, budget)
	if nr >= pt.need {
		nr = 0
	}
	if nl >= pt.need {
		nl = 0
	}
	// A short piece counts only when it is needed.
	if nr < shortPiece && got+nl >= pt.need {
		nr = 0
	}
	if nl < shortPiece && got+nr >= pt.need {
		nl = 0
	}
	lo, hi := p, q
	if nr > 0 {
		hi, got = q+gr+nr, got+nr
	}
	if nl > 0 {
		lo, got = p-gl-nl, got+nl
	}
	if got >= pt.need {
		a, z := v.span(p, q)
		l, h := v.span(lo, hi)
		s := [4]int{int(a), int(z), int(l), int(h)}
		if n := len(f.split); n == 0 || f.split[n-1] != s {
			f.split = append(f.split, s)
		}
	}
}

// extend finds, past a gap of 1 to maxGap bytes after t[q] (before it when
// dir is -1), the longest run of the pattern continuing at b[j] (going the
// same way); it returns the gap and the run's length. A run shorter than
// shortPiece bytes counts only past a gap of at most shortGap bytes: a
// byte or three match by chance somewhere in 16 too often.
func extend(t []byte, q int, b []byte, j, dir int, budget *int) (gap, n int) {
	if j < 0 || j >= len(b) {
		return 0, 0
	}
	for g := 1; g <= maxGap; g++ {
		s := q + dir*g
		if s < 0 || s >= len(t) {
			break
		}
		m := 0
		for k, l := s, j; k >= 0 && k < len(t) && l >= 0 && l < len(b) && fold[t[k]] == b[l]; k, l = k+dir, l+dir {
			m++
		}
		*budget -= m + 1
		if m > n && (m >= shortPiece || g <= shortGap) {
			gap, n = g, m
		}
	}
	return gap, n
}
