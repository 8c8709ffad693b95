// Package scrub removes secrets from text that came from elsewhere (a token
// endpoint's error answer, a storage error), whatever common escaping or
// encoding that text put them in. It has no dependencies outside the
// standard library.
//
// # What counts as a leak
//
// For each secret of L bytes matched by the leak rule (the client secret,
// the forms of a private key), the needed length is R = L when L < 12 (the
// whole secret) and R = 8 otherwise (any window of it: a quarter of a
// 32-byte secret is worth redacting, while 8 bytes of a random secret
// never turn up in ordinary text by chance). The scrubber redacts, in the
// text and in every view of it described below:
//
//  1. any R consecutive bytes of the secret;
//  2. for secrets of at least 8 bytes, R consecutive bytes of the secret
//     written in two or three pieces separated by gaps (a secret split
//     between the "error" and "message" fields, joined by ": "): one piece
//     of at least R/2 bytes, and pieces continuing it on either side, each
//     shorter than R, past a gap of 1 to 16 bytes, or of 1 or 2 bytes for
//     a piece of 1 to 3 bytes, which counts only when needed to make R;
//     the pieces and gaps overlap no match of rule 1 (in any view). The
//     gaps are redacted with the pieces.
//
// Extra secrets (of at least MinExtra bytes: param and header values, a
// token URL's query), which may be ordinary text too, are matched only
// whole (R = L, no pieces), in every view.
//
// Bytes match when equal after mapping ASCII letters to lower case and
// '+' (form encoding's space) to ' '. The secret is also matched read
// backwards (by bytes and by characters) and in its Unicode upper- and
// lower-case forms. Every piece of text rule 1 or 2 matches is redacted, so
// the output holds at most R-1 consecutive bytes of a secret where the
// views see them (pieces of up to 2 bytes may stay next to a redaction).
//
// The secret is also matched whole (bytes compared as above) with each
// character possibly escaped its own way, where an escape may decode to
// the same characters as the secret's own ("a\u0041b" escaped character by
// character). A client secret shorter than MinExtra bytes is matched only
// so, in the text and its escape views, with its base64, hex and Basic
// credentials forms, as the scrubber always did: looser matching of so
// few bytes, or in decodings of the text, would redact noise.
//
// # Views
//
// A view is a decoding of the text, each byte of which maps back to the
// span of original text it came from. Besides the text itself, the
// scrubber looks into views up to three layers deep, one layer being one
// of: JSON/JavaScript backslash escapes, percent-encoding, HTML character
// references (one kind at a time: text that escapes each character its
// own way takes a layer of each); base64 (standard and URL alphabets,
// padded or not, from each of the first four characters of a run, read
// forwards or backwards) or hex (either case, both alignments, either
// direction) of every run of such characters long enough to hold R bytes;
// the characters of a run spaced out by a separator of one or two
// characters that are not letters or digits, repeated identically
// ("s e c", "s-e-c", "s, e, c"); and the text read backwards, for
// escapes. A decoded run that is not mostly (three quarters of its first
// 256 bytes) valid UTF-8 is searched whole but decoded further only in its
// stretches of valid UTF-8 of R bytes or more: it is binary data or noise
// of a wrong alignment, and every layer of encoding writes text. A leak
// found in a view redacts the original span it came from: at the edges of
// a base64 or hex run, whole characters that hold bits of the secret and
// of its neighbours.
//
// Views that are the same text with the same spans (escape decodings that
// commute, base64 runs an escape decoding left as they were) are looked
// into once.
//
// Scrubbing fails closed: text that would take more work than a fixed
// budget (some 25 million units of about a nanosecond each: a few tens of
// milliseconds) is replaced whole by TooCostly. Error texts, even a 64 KiB
// HTML error page or JSON answer, take far less; a megabyte of text full
// of escapes and encoded runs takes more.
package scrub

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/url"
	"slices"
	"strings"
)

// Redacted replaces every secret found.
const Redacted = "[REDACTED]"

// TooCostly replaces text whose scrubbing ran out of budget.
const TooCostly = "[REDACTED: text too costly to scrub]"

// MinExtra is the shortest extra secret (a param or token_header value,
// a token URL key) that is scrubbed: shorter values would redact ordinary
// words and prove nothing.
const MinExtra = 4

const (
	// maxDepth is how many layers of views are undone.
	maxDepth = 3
	// legacyDepth is how deep the exact whole forms are looked for in
	// escape views (the character-by-character match undoes one more).
	legacyDepth = 2
	// scrubBudget bounds the work of one Scrub call, in units of about a
	// nanosecond: a byte scanned costs costScan, matched costMatch, decoded
	// costDecode, written to a view costView; a step of the character by
	// character match costs costFlex.
	scrubBudget                                         = 24 << 20
	costScan, costMatch, costDecode, costView, costFlex = 1, 3, 4, 8, 20
)

// Scrubber redacts a fixed set of secrets. Its zero value and nil redact
// nothing. It is safe for concurrent use.
type Scrubber struct {
	idx     *index   // the leak rule's matcher; nil redacts nothing
	legacy  [][]byte // exact whole forms for flexMatch, longest first
	minNeed int      // fewest bytes a decoding must hold to contain a leak
	minText int      // fewest bytes a text must hold to contain a leak
}

// New returns a scrubber for the client secret (in every form a token
// request carries it: raw, form-encoded, inside Basic credentials) and for
// extra secrets of at least MinExtra bytes. The client secret is matched
// by the leak rule (any window of it, and pieces); the extras — values
// that may also be ordinary text, such as a param value or a token URL's
// query — only whole, though in every view.
func New(clientID, secret string, extra ...string) *Scrubber {
	return NewWith(clientID, []string{secret}, extra...)
}

// NewWith is New for several secrets matched by the leak rule (a client
// secret and the forms of a private key, say); the first is the client
// secret, which also goes into Basic credentials with clientID.
func NewWith(clientID string, secrets []string, extra ...string) *Scrubber {
	var forms, windows, whole []string
	for i, secret := range secrets {
		switch {
		case len(secret) >= MinExtra:
			windows = append(windows, secret)
			forms = append(forms, secret)
		case secret != "" && i == 0:
			// Only the exact forms: base64, hex and Basic credentials too,
			// which the views do not decode for so short a secret.
			forms = append(forms,
				secret,
				strings.ReplaceAll(secret, " ", "+"),
				base64.StdEncoding.EncodeToString([]byte(secret)),
				base64.RawURLEncoding.EncodeToString([]byte(secret)),
				hex.EncodeToString([]byte(secret)),
				strings.ToUpper(hex.EncodeToString([]byte(secret))),
				base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(clientID)+":"+url.QueryEscape(secret))),
				base64.StdEncoding.EncodeToString([]byte(clientID+":"+secret)),
			)
		}
	}
	for _, s := range extra {
		if len(s) >= MinExtra {
			whole = append(whole, s)
			forms = append(forms, s)
		}
	}
	if len(forms) == 0 {
		return &Scrubber{}
	}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	forms = slices.Compact(forms)
	sc := &Scrubber{idx: newIndex(windows, whole)}
	sc.minNeed = sc.idx.minNeed
	for _, f := range forms {
		sc.legacy = append(sc.legacy, []byte(f))
	}
	sc.minText = min(sc.minNeed, len(forms[len(forms)-1]))
	return sc
}

// URLSecrets are the parts of a token URL that may hold keys: its query
// (whole, and each value) and its user information.
func URLSecrets(raw string) []string {
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

// Scrub returns s with every secret redacted (see the package
// documentation for what counts), or TooCostly when s would take too much
// work to scrub.
func (sc *Scrubber) Scrub(s string) string {
	if sc == nil || sc.idx == nil || s == "" {
		return s
	}
	w := walkers.Get().(*walker)
	defer w.release()
	w.sc, w.budget = sc, scrubBudget
	root := view{text: []byte(s)}
	w.walk(&root, node{legacy: true})
	if w.budget < 0 {
		return TooCostly
	}
	spans := w.finds.spans()
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
		b.WriteString(Redacted)
		last = hi
	}
	b.WriteString(s[last:])
	return b.String()
}

// Error returns err with every secret redacted from its text: err itself
// when nothing was redacted, else a new error with the scrubbed text.
func (sc *Scrubber) Error(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if scrubbed := sc.Scrub(msg); scrubbed != msg {
		return errors.New(scrubbed)
	}
	return err
}
