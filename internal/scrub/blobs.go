package scrub

import "strings"

// RedactedBlob replaces each run of text that Blobs takes for encoded
// data.
const RedactedBlob = "[REDACTED: encoded data]"

const (
	// blobMin is the shortest run Blobs redacts: base64 of 15 bytes, hex
	// of 10.
	blobMin = 20
	// A run of letters and digits looks encoded when at least
	// blobChanges of its pairs of adjacent letters and digits (of which it
	// has at least blobPairs) change between lower case, upper case and
	// digit.
	blobChanges = 0.4
	blobPairs   = 12
)

// Blobs returns text with every run that looks like encoded data replaced
// by RedactedBlob, whatever it decodes to: a second line of defence for
// the free text of a token endpoint's answer, where an echo of the request
// (base64 of its body, a token, a hash) may hold a secret the scrubber was
// not told about. Apply it after Scrub.
//
// A run is a maximal sequence of the characters A-Z a-z 0-9 and
// + / _ - = . % ~ \ (base64 in either alphabet, hex, JWTs, percent-encoded
// values). A run of at least 20 bytes is redacted whole when it is
//
//   - hex digits only, at least one of them a letter and one a digit
//     (a hash, a hex-encoded key); or
//   - at least 12 pairs of adjacent letters and digits, at least 40% of
//     which change between lower case, upper case and digit: about two
//     pairs in three do in base64 or a random token, far fewer in words,
//     identifiers and paths ("invalid_client",
//     "ClientAuthenticationFailedException", "/oauth2/v1/token").
//
// Canonical UUIDs (8-4-4-4-12 hex digits) are kept, and the rest of a run
// around one judged without it: they name requests, traces and clients
// and are what an operator needs to ask the server's owner about an
// error; a secret shaped like a UUID is one the scrubber must be told
// about. Other request IDs that look random are redacted. Words, numbers,
// error codes and sentences, in any language, are kept.
func Blobs(text string) string {
	var b strings.Builder
	last := 0
	redact := func(i, j int) {
		if looksEncoded(text[i:j]) {
			b.WriteString(text[last:i])
			b.WriteString(RedactedBlob)
			last = j
		}
	}
	for i := 0; i < len(text); {
		if !blobChar(text[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(text) && blobChar(text[j]) {
			j++
		}
		seg := i
		for k := i; k+36 <= j; k++ {
			if (k == i || !isAlnum(text[k-1])) && (k+36 == j || !isAlnum(text[k+36])) && isUUID(text[k:k+36]) {
				redact(seg, k)
				seg = k + 36
				k += 35
			}
		}
		redact(seg, j)
		i = j
	}
	if last == 0 {
		return text
	}
	b.WriteString(text[last:])
	return b.String()
}

func blobChar(c byte) bool {
	return isAlnum(c) || strings.IndexByte(`+/_-=.%~\`, c) >= 0
}

func isUUID(s string) bool {
	for i := range len(s) {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if s[i] != '-' {
				return false
			}
		} else if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// looksEncoded reports whether the run s looks like encoded data (see
// Blobs).
func looksEncoded(s string) bool {
	if len(s) < blobMin {
		return false
	}
	hexOnly, letter, digit := true, false, false
	pairs, changes := 0, 0
	for i := range len(s) {
		c := s[i]
		hexOnly = hexOnly && isHex(c)
		letter = letter || isAlnum(c) && c > '9'
		digit = digit || '0' <= c && c <= '9'
		if i > 0 && isAlnum(c) && isAlnum(s[i-1]) {
			pairs++
			if charClass(c) != charClass(s[i-1]) {
				changes++
			}
		}
	}
	if hexOnly {
		return letter && digit
	}
	return pairs >= blobPairs && float64(changes) >= blobChanges*float64(pairs)
}

func charClass(c byte) int {
	switch {
	case 'a' <= c && c <= 'z':
		return 0
	case 'A' <= c && c <= 'Z':
		return 1
	}
	return 2
}
