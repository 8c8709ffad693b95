package scrub

import (
	"hash/maphash"
	"sync"
	"unicode/utf8"
)

// walker looks for leaks in a text and in its views, within a budget.
type walker struct {
	sc     *Scrubber
	finds  finds
	budget int
	// seen: the least depth at which each view (by viewKey) was walked.
	// Escape decodings commute more often than not, and decoding escapes
	// leaves most base64 runs as they were: each is walked once.
	seen map[uint64]int
	// scratch holds decodings of runs before they become views.
	scratch []byte
}

var keySeed = maphash.MakeSeed()

// walkers keeps walkers, with their map and buffers, between calls.
var walkers = sync.Pool{New: func() any { return &walker{seen: map[uint64]int{}} }}

func (w *walker) release() {
	if len(w.seen) > 1<<12 || cap(w.scratch) > 1<<16 {
		return // a large text's: let it go
	}
	clear(w.seen)
	w.sc, w.finds = nil, finds{w.finds.whole[:0], w.finds.split[:0]}
	walkers.Put(w)
}

// viewKey identifies v.text[i:j] with its spans, walked as nd says.
func viewKey(v *view, i, j int, nd node) uint64 {
	h := maphash.Bytes(keySeed, v.text[i:j])
	m := uint64(i)<<32 | uint64(j)
	if v.lo != nil {
		m = 14695981039346656037
		for k := i; k < j; k++ {
			m = (m ^ uint64(uint32(v.lo[k]))<<32 ^ uint64(uint32(v.hi[k]))) * 1099511628211
		}
	}
	f := uint64(0)
	for b, on := range []bool{nd.rev, nd.reversed, nd.legacy, nd.leaf} {
		if on {
			f |= 1 << b
		}
	}
	return h ^ (m * 0x9E3779B97F4A7C15) ^ f<<59
}

// firstVisit records that the view keyed key is walked at depth and
// reports whether it was not walked at that depth or shallower already.
func (w *walker) firstVisit(key uint64, depth int) bool {
	if d, ok := w.seen[key]; ok && d <= depth {
		return false
	}
	w.seen[key] = depth
	return true
}

// A node says how a view is walked.
type node struct {
	depth int
	// rev: a reversal was undone on the way here (undoing another one
	// would only come back).
	rev bool
	// reversed: v is a reversed view, looked into only for escapes
	// (the matcher already finds reversed secrets, and the run views read
	// runs backwards on their own).
	reversed bool
	// legacy: v is the text or an escape view of it, where the exact
	// whole forms are looked for.
	legacy bool
	// leaf: v is searched but not decoded further (binary data).
	leaf bool
}

// walk looks for leaks in v and, as nd allows, in its views.
func (w *walker) walk(v *view, nd node) {
	if w.budget < 0 || len(v.text) < w.sc.minText {
		return
	}
	if nd.depth > 0 {
		w.budget -= costScan * len(v.text)
		if !w.firstVisit(viewKey(v, 0, len(v.text), nd), nd.depth) {
			return
		}
	}
	if !nd.reversed {
		w.sc.idx.find(v, &w.finds, &w.budget)
		if nd.legacy && nd.depth <= legacyDepth {
			w.sc.legacyFind(v, &w.finds, &w.budget)
		}
	}
	if nd.depth == maxDepth || nd.leaf || w.budget < 0 || len(w.sc.idx.pats) == 0 && nd.depth == legacyDepth {
		return
	}
	child := node{depth: nd.depth + 1, rev: nd.rev}
	w.escapeViews(v, child, nd.legacy && !nd.reversed)
	if nd.reversed || len(w.sc.idx.pats) == 0 {
		return
	}
	w.runViews(v, child)
	w.spacedViews(v, child)
	if !nd.rev && hasReversedEscape(v.text) {
		r := reverseView(v)
		w.budget -= costView * len(r.text)
		child.rev, child.reversed = true, true
		w.walk(&r, child)
	}
}

// escapeViews walks every escape decoding of v that changes it, one kind
// of escape at a time.
func (w *walker) escapeViews(v *view, child node, legacy bool) {
	if !hasEscape(v.text) {
		return
	}
	child.legacy = legacy
	for k := range decoders {
		first := firstEscape(v.text, k)
		if first < 0 {
			continue
		}
		d := decodeView(v, k, first)
		w.budget -= costView * len(v.text)
		w.walk(&d, child)
		if w.budget < 0 {
			return
		}
	}
}

// b64val and hexval are the values of base64 (either alphabet) and hex
// digits, -1 for other bytes.
var b64val, hexval [256]int8

func init() {
	for i := range b64val {
		b64val[i], hexval[i] = -1, -1
	}
	const std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range len(std) {
		b64val[std[i]] = int8(i)
	}
	b64val['-'], b64val['_'] = 62, 63
	for i := range 16 {
		hexval["0123456789abcdef"[i]] = int8(i)
		hexval["0123456789ABCDEF"[i]] = int8(i)
	}
}

// runKey marks the keys of runs, whose decodings are walked.
const runKey = 0x5bd1e9955bd1e995

// runViews walks the base64 and hex decodings of every run of v long
// enough to hold a leak: at every alignment, read forwards and backwards.
func (w *walker) runViews(v *view, child node) {
	t := v.text
	minB64 := (4*w.sc.minNeed + 2) / 3
	for i := 0; i < len(t); {
		if b64val[t[i]] < 0 {
			i++
			continue
		}
		j := i + 1
		for j < len(t) && b64val[t[j]] >= 0 {
			j++
		}
		w.budget -= costScan * (j - i)
		if j-i >= minB64 && w.firstVisit(viewKey(v, i, j, child)^runKey, child.depth) {
			w.decodeRun(v, i, j, child, minB64, 4, b64Codec)
			for h := i; h < j; {
				if hexval[t[h]] < 0 {
					h++
					continue
				}
				e := h + 1
				for e < j && hexval[t[e]] >= 0 {
					e++
				}
				if e-h >= 2*w.sc.minNeed {
					w.decodeRun(v, h, e, child, 2*w.sc.minNeed, 2, hexCodec)
				}
				h = e
			}
		}
		if w.budget < 0 {
			return
		}
		i = j
	}
}

// decodeRun walks the decodings of v.text[i:j] at each alignment (from
// each of the first align characters), forwards and, unless a reversal
// was undone already, backwards. Most are noise (a wrong alignment, or
// not base64 at all): a decoding becomes a view only when it is text,
// to be decoded further, or may hold a leak.
func (w *walker) decodeRun(v *view, i, j int, child node, minLen, align int, c codec) {
	idx := make([]int32, j-i)
	for rev := range 2 {
		if rev == 1 && child.rev {
			break
		}
		for k := range idx {
			if rev == 0 {
				idx[k] = int32(i + k)
			} else {
				idx[k] = int32(j - 1 - k)
			}
		}
		for a := 0; a < align && len(idx)-a >= minLen; a++ {
			w.scratch = c.text(v.text, idx[a:], w.scratch[:0])
			w.budget -= costDecode * (len(idx) - a)
			n := child
			n.rev = child.rev || rev == 1
			if mostlyUTF8(w.scratch) {
				d := c.view(v, idx[a:])
				w.budget -= costView * len(d.text)
				w.walk(&d, n)
				continue
			}
			// Binary, or noise: searched whole, decoded further only in
			// its stretches of text (base64 glued to other hex digits
			// decodes after a few stray bytes).
			if w.sc.idx.mayMatch(w.scratch) {
				d := c.view(v, idx[a:])
				w.budget -= costView * len(d.text)
				leaf := n
				leaf.leaf = true
				w.walk(&d, leaf)
			}
			w.budget -= costScan * len(w.scratch)
			for _, s := range utf8Stretches(w.scratch, w.sc.minNeed) {
				from, to := c.chars(s[0], s[1], len(idx)-a)
				d := c.view(v, idx[a+from:a+to])
				w.budget -= costView * len(d.text)
				w.walk(&d, n)
			}
			if w.budget < 0 {
				return
			}
		}
	}
}

// utf8Stretches returns the stretches of t, [start, end), that are UTF-8
// (as far as lead and continuation bytes go) and at least min bytes long.
func utf8Stretches(t []byte, min int) [][2]int {
	var out [][2]int
	start := 0
	for i := 0; i <= len(t); {
		size := 1
		if i < len(t) && t[i] >= utf8.RuneSelf {
			size = seqLen(t[i:])
		}
		if i == len(t) || size == 0 {
			if i-start >= min {
				out = append(out, [2]int{start, i})
			}
			start, size = i+1, 1
		}
		i += size
	}
	return out
}

// seqLen is the length of the UTF-8 sequence that b starts with (lead
// byte and continuation bytes), 0 if none.
func seqLen(b []byte) int {
	n := 0
	switch c := b[0]; {
	case 0xC2 <= c && c <= 0xDF:
		n = 2
	case 0xE0 <= c && c <= 0xEF:
		n = 3
	case 0xF0 <= c && c <= 0xF4:
		n = 4
	default:
		return 0
	}
	if len(b) < n {
		return 0
	}
	for _, c := range b[1:n] {
		if c&0xC0 != 0x80 {
			return 0
		}
	}
	return n
}

// A codec decodes base64 or hex characters v.text[idx[0]],
// v.text[idx[1]]…: to text alone, or to a view; chars says which of n
// characters decode to (at least) bytes [from, to).
type codec struct {
	text  func(t []byte, idx []int32, out []byte) []byte
	view  func(v *view, idx []int32) view
	chars func(from, to, n int) (int, int)
}

var (
	b64Codec = codec{decodeB64Text, decodeB64, func(from, to, n int) (int, int) {
		return 4 * (from / 3), min(n, 4*((to+2)/3))
	}}
	hexCodec = codec{decodeHexText, decodeHex, func(from, to, n int) (int, int) {
		return 2 * from, min(n, 2*to)
	}}
)

// decodeB64Text decodes as base64, a partial group at the end as far as
// it goes.
func decodeB64Text(t []byte, idx []int32, out []byte) []byte {
	var acc uint32
	for k, x := range idx {
		acc = acc<<6 | uint32(b64val[t[x]])
		if k%4 != 0 {
			out = append(out, byte(acc>>(2*(3-k%4))))
		}
	}
	return out
}

func decodeHexText(t []byte, idx []int32, out []byte) []byte {
	for k := 1; k < len(idx); k += 2 {
		out = append(out, byte(hexval[t[idx[k-1]]])<<4|byte(hexval[t[idx[k]]]))
	}
	return out
}

// decodeB64 decodes as base64 to a view.
func decodeB64(v *view, idx []int32) view {
	out := newView(len(idx) * 3 / 4)
	var acc uint32
	for k, x := range idx {
		acc = acc<<6 | uint32(b64val[v.text[x]])
		if k%4 == 0 {
			continue
		}
		// A byte ends at every character but the first of a group.
		lo1, hi1 := v.span(int(idx[k-1]), int(idx[k-1])+1)
		lo2, hi2 := v.span(int(x), int(x)+1)
		out.push(byte(acc>>(2*(3-k%4))), min(lo1, lo2), max(hi1, hi2))
	}
	return out
}

// decodeHex decodes as hex digits to a view.
func decodeHex(v *view, idx []int32) view {
	out := newView(len(idx) / 2)
	for k := 1; k < len(idx); k += 2 {
		a, b := idx[k-1], idx[k]
		lo1, hi1 := v.span(int(a), int(a)+1)
		lo2, hi2 := v.span(int(b), int(b)+1)
		out.push(byte(hexval[v.text[a]])<<4|byte(hexval[v.text[b]]), min(lo1, lo2), max(hi1, hi2))
	}
	return out
}

// mostlyUTF8 reports whether at least three quarters of t (of its first
// 256 bytes) are valid UTF-8: text, as every layer of encoding writes,
// rather than binary data or the noise of a decoding at the wrong
// alignment.
func mostlyUTF8(t []byte) bool {
	t = t[:min(len(t), 256)]
	bad, limit := 0, len(t)/4
	for i := 0; i < len(t); {
		if t[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRune(t[i:])
		if r == utf8.RuneError && size == 1 {
			if bad++; bad > limit {
				return false
			}
		}
		i += size
	}
	return true
}
