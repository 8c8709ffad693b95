package scrub_test

import (
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// The attack that found the defect: a token endpoint answers 400 with
// "could not parse request <base64 of the request body>", where the secret
// sits at byte 37 of the JSON body, shifted against the base64 of the
// bare secret.
func TestScrubEchoedRequestBody(t *testing.T) {
	const secret = "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB"
	// Client IDs of 4, 5 and 6 bytes put the secret at bytes 37, 38 and
	// 39 of the body: every alignment against base64's groups of three.
	for _, clientID := range []string{"acme", "acme2", "acme-3"} {
		sc := scrub.New(clientID, secret)
		body := `{"client_id":"` + clientID + `","client_secret":"` + secret + `","grant_type":"client_credentials"}`
		form := url.Values{"client_id": {clientID}, "client_secret": {secret}, "grant_type": {"client_credentials"}}.Encode()
		b64 := func(e *base64.Encoding, s string) string { return e.EncodeToString([]byte(s)) }
		for name, echo := range map[string]string{
			"base64 JSON":                b64(base64.StdEncoding, body),
			"base64url raw JSON":         b64(base64.RawURLEncoding, body),
			"base64 x+secret":            b64(base64.StdEncoding, "x"+secret),
			"base64 xy+secret":           b64(base64.StdEncoding, "xy"+secret),
			"base64 form":                b64(base64.StdEncoding, form),
			"base64 JSON percent":        url.QueryEscape(b64(base64.StdEncoding, body)),
			"hex of base64":              hex.EncodeToString([]byte(b64(base64.StdEncoding, body))),
			"base64 of base64":           b64(base64.StdEncoding, b64(base64.StdEncoding, "xy"+secret+"z")),
			"HEX of JSON":                strings.ToUpper(hex.EncodeToString([]byte(body))),
			"base64 JSON in JSON string": strings.ReplaceAll(b64(base64.StdEncoding, body), "/", `\/`),
			"base64 glued to a word":     "body" + b64(base64.StdEncoding, body),
			"base64 reversed":            reverse(b64(base64.StdEncoding, body)),
			"base64 spaced":              strings.Join(strings.Split(b64(base64.StdEncoding, "x"+secret), ""), " "),
		} {
			in := "could not parse request " + echo + " (trace 42)"
			out := sc.Scrub(in)
			if !strings.HasPrefix(out, "could not parse request ") || !strings.HasSuffix(out, " (trace 42)") || !strings.Contains(out, scrub.Redacted) {
				t.Errorf("%s, %s: Scrub(%q) = %q", clientID, name, in, out)
			}
			for _, chain := range [][]scrubtest.Step{nil, {scrubtest.B64Std}, {scrubtest.B64Std, scrubtest.Query}, {scrubtest.B64Std, scrubtest.Hex}, {scrubtest.B64Std, scrubtest.B64Std}, {scrubtest.B64Std, scrubtest.Reverse}} {
				if w, ok := scrubtest.Recover(out, secret, chain); ok {
					t.Errorf("%s, %s: %q still holds %q", clientID, name, out, w)
				}
			}
		}
	}
}

func reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

// The other forms the attack found passing: case, reversal, spacing out,
// a split between the error and message fields.
func TestScrubRewrittenSecret(t *testing.T) {
	const secret = "Sup3r/Secret-Valu3&<x>"
	sc := scrub.New("id", secret)
	for name, form := range map[string]string{
		"upper":         strings.ToUpper(secret),
		"lower":         strings.ToLower(secret),
		"reversed":      reverse(secret),
		"spaced":        strings.Join(strings.Split(secret, ""), " "),
		"dashed":        strings.Join(strings.Split(secret, ""), "-"),
		"dotted upper":  strings.ToUpper(strings.Join(strings.Split(secret, ""), ".")),
		"comma-spaced":  strings.Join(strings.Split(secret, ""), ", "),
		"split":         secret[:6] + ": " + secret[6:13],
		"split 3":       secret[:5] + ": " + secret[5:10] + " / " + secret[10:14],
		"window":        secret[5:13],
		"form-encoded":  url.QueryEscape(secret),
		"reversed JSON": reverse(strings.ReplaceAll(secret, "/", `\/`)),
	} {
		in := "invalid_client: " + form + " is wrong"
		out := sc.Scrub(in)
		if out != "invalid_client: "+scrub.Redacted+" is wrong" {
			t.Errorf("%s: Scrub(%q) = %q", name, in, out)
		}
	}
	// Pieces of 8 bytes or more are redacted each on its own.
	for _, in := range []string{secret[:11] + ": " + secret[11:], secret[:7] + ": " + secret[7:14] + " / " + secret[14:]} {
		out := sc.Scrub("invalid_client: " + in + " is wrong")
		if w, ok := scrubtest.Recover(out, secret, nil); ok || !strings.HasPrefix(out, "invalid_client: [") || !strings.HasSuffix(out, "] is wrong") {
			t.Errorf("Scrub(%q) = %q (%q)", in, out, w)
		}
	}
	// A short secret is matched whole, split too.
	sc = scrub.New("id", "k3yV4lue9")
	for _, in := range []string{"k3yV4: lue9", "K3YV4LUE9", "9eul4Vy3k"} {
		if out := sc.Scrub("x " + in + " y"); out != "x "+scrub.Redacted+" y" {
			t.Errorf("Scrub(%q) = %q", in, out)
		}
	}
	// Pieces shorter than the rule's window are not leaks.
	sc = scrub.New("id", "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB")
	for _, clean := range []string{"7gWtVs9", "s3cr3t", "the client 7gWt and PEyj", "invalid_client: Client authentication failed"} {
		if out := sc.Scrub(clean); out != clean {
			t.Errorf("Scrub(%q) = %q", clean, out)
		}
	}
}
