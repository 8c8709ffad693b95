package scrub_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// FuzzScrubEncodedSecret hides a secret between random bytes (so that it
// falls at every alignment of a base64 or hex encoding), encodes the whole
// with a random chain of up to three steps, and puts random clean text
// around it. After scrubbing, no reading of the output through the chain
// (see scrubtest.Decode) may hold the secret or a window of it (see
// scrubtest.Windows), and the output must keep the text around the
// encoded secret: what the same input with another secret in its place
// has in common with it at either end, but for some slack at the edges
// (R+1 bytes of the text before encoding, R as in the leak rule).
func FuzzScrubEncodedSecret(f *testing.F) {
	const jsonBody = `{"client_id":"acme","client_secret":"`
	secrets := []string{scrubtest.PHPSecret, "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB", "Xq7:9mZ=p%41+t r/éÅ-oauth2-interop", "k3yV4lue9"}
	chains := [][]byte{{0}, {1}, {2, 6}, {3, 4}, {8, 0, 6}, {0, 4}, {0, 0}, {5, 14}, {14, 2}, {15, 0}, {12, 4, 14}, {9, 10}, {11, 7}, {18, 13}, {19}, {16, 17}, {0, 8, 13}}
	for i, c := range chains {
		s := secrets[i%len(secrets)]
		prefix := jsonBody[:len(jsonBody)-i%3]
		f.Add(s, prefix, `","grant_type":"client_credentials"}`, "could not parse request ", " (trace 42)", c)
	}
	f.Fuzz(func(t *testing.T, secret, innerP, innerQ, outerP, outerQ string, chainBytes []byte) {
		if len(secret) < 8 || len(secret) > 64 || !utf8.ValidString(secret) || !diverse(secret) || sharesPiece([]string{scrub.Redacted}, secret) {
			t.Skip() // (a secret like the marker would leak with it)
		}
		innerP, innerQ = clip(strings.ToValidUTF8(innerP, "")), clip(strings.ToValidUTF8(innerQ, ""))
		outerP, outerQ = clip(strings.Map(dropEscapeChars, strings.ToValidUTF8(outerP, ""))), clip(strings.Map(dropEscapeChars, strings.ToValidUTF8(outerQ, "")))
		chain := chainOf(chainBytes)
		sc := scrub.New("client", secret)
		in := outerP + scrubtest.Encode(innerP+secret+innerQ, chain) + outerQ
		out := sc.Scrub(in)
		if out == scrub.TooCostly {
			t.Fatalf("%s: %d bytes too costly to scrub", names(chain), len(in))
		}
		// The same text with another secret in its place: a window that
		// its readings hold too comes from the text around (a secret like
		// "00000000" is found in much text read every other character).
		other := otherSecret(secret)
		in2 := outerP + scrubtest.Encode(innerP+other+innerQ, chain) + outerQ
		if leaked := scrubtest.Leaked(out, secret, chain); len(leaked) > 0 {
			around := scrubtest.Leaked(in2, secret, chain)
			for w, r := range leaked {
				if _, ok := around[w]; !ok {
					t.Fatalf("%s: secret %q recoverable (%q in %q) from\n%q\nscrubbed from\n%q", names(chain), secret, w, r, out, in)
				}
			}
		}
		if out2 := sc.Scrub(in2); out2 != in2 {
			if sharesPiece(scrubtest.Decode(in2, chain, 4), secret) {
				return // the text around holds pieces of the secret
			}
			t.Fatalf("%s: clean text %q scrubbed to %q", names(chain), in2, out2)
		}
		if sharesPiece([]string{outerP + innerP, innerQ + outerQ}, secret) || gluesWindow(outerP+innerP, secret, innerQ+outerQ) {
			return // the redaction may rightly reach into the text around
		}
		// Slack: a window may take up to R-1 bytes next to the secret (an
		// escape across its edge, in a decoding, makes one byte of two),
		// and characters at the edge of a base64 run hold bits of both;
		// in the output, a byte of the text is up to expand characters.
		lcp, lcs := commonPrefix(in, in2), commonSuffix(in, in2)
		raw := innerP + secret + innerQ
		expand := (len(scrubtest.Encode(raw, chain)) + len(raw) - 1) / len(raw)
		slack := (windowOf(secret)+1)*expand + 6
		if keep := in[:max(0, lcp-slack)]; !strings.HasPrefix(out, keep) {
			t.Fatalf("%s: scrubbed %q to %q, which lost the clean start %q", names(chain), in, out, keep)
		}
		if keep := in[len(in)-max(0, lcs-slack):]; !strings.HasSuffix(out, keep) {
			t.Fatalf("%s: scrubbed %q to %q, which lost the clean end %q", names(chain), in, out, keep)
		}
	})
}

// windowOf is the leak rule's R for secret.
func windowOf(secret string) int {
	if len(secret) < 12 {
		return len(secret)
	}
	return 8
}

// diverse reports whether every window of secret (see scrubtest.Windows)
// has at least 4 distinct bytes, as a random secret has. Text read every
// other character, backwards, as hex… turns up "00000000" now and then:
// for such secrets the leak rule redacts noise, and the test's readings
// find windows in noise that the scrubber's views do not see.
func diverse(secret string) bool {
	w := windowOf(secret)
	for i := 0; i+w <= len(secret); i++ {
		seen := map[byte]bool{}
		for _, c := range []byte(scrubtest.Fold(secret[i : i+w])) {
			seen[c] = true
		}
		if len(seen) < 4 {
			return false
		}
	}
	return true
}

// chainOf reads up to three steps from b; a case change is left out where
// a step before it is not case-safe.
func chainOf(b []byte) []scrubtest.Step {
	var chain []scrubtest.Step
	caseSafe := true
	for _, c := range b[:min(3, len(b))] {
		st := scrubtest.Steps[int(c)%len(scrubtest.Steps)]
		if (st.Name == scrubtest.Upper.Name || st.Name == scrubtest.Lower.Name) && !caseSafe {
			continue
		}
		caseSafe = caseSafe && st.CaseSafe
		chain = append(chain, st)
	}
	return chain
}

func names(chain []scrubtest.Step) string {
	var n []string
	for _, st := range chain {
		n = append(n, st.Name)
	}
	return "[" + strings.Join(n, ", ") + "]"
}

func clip(s string) string {
	r := []rune(s)
	return string(r[:min(len(r), 48)])
}

// otherSecret is secret with every character replaced by another of the
// same UTF-8 length, every byte different (but the first of some four-byte
// characters).
func otherSecret(secret string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z':
			return 'a' + (r-'a'+13)%26
		case 'A' <= r && r <= 'Z':
			return 'A' + (r-'A'+13)%26
		case '0' <= r && r <= '9':
			return '0' + (r-'0'+5)%10
		case r < utf8.RuneSelf:
			return 'q'
		case utf8.RuneLen(r) == 2:
			return pick(r, 'ж', 'ы')
		case utf8.RuneLen(r) == 3:
			return pick(r, '€', '中')
		}
		return pick(r, '😀', '𝄞')
	}, secret)
}

func pick(r, a, b rune) rune {
	if r == a {
		return b
	}
	return a
}

// sharesPiece reports whether a text holds 4 consecutive bytes of secret
// (folded, forwards or backwards, in any case): enough for the split rule
// to join them to a piece nearby.
func sharesPiece(texts []string, secret string) bool {
	for _, w := range pieces(secret, 4) {
		for _, t := range texts {
			if strings.Contains(scrubtest.Fold(t), w) {
				return true
			}
		}
	}
	return false
}

func pieces(secret string, n int) []string {
	var out []string
	for _, c := range []string{secret, strings.ToUpper(secret), strings.ToLower(secret)} {
		for _, v := range []string{c, reverse(c), reverseB(c)} {
			f := scrubtest.Fold(v)
			for i := 0; i+n <= len(f); i++ {
				out = append(out, f[i:i+n])
			}
		}
	}
	return out
}

func reverseB(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// gluesWindow reports whether a window of secret occurs in before+secret+
// after other than inside the secret.
func gluesWindow(before, secret, after string) bool {
	all := scrubtest.Fold(before + secret + after)
	for _, w := range scrubtest.Windows(secret) {
		for i := 0; ; {
			j := strings.Index(all[i:], w)
			if j < 0 {
				break
			}
			if i+j < len(before) || i+j+len(w) > len(before)+len(secret) {
				return true
			}
			i += j + 1
		}
	}
	return false
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func commonSuffix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[len(a)-1-n] == b[len(b)-1-n] {
		n++
	}
	return n
}
