package scrub_test

import (
	"encoding/base64"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

const benchSecret = "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB"

// benchTexts are the texts of BenchmarkScrub, by name; big adds texts of
// up to 1 MiB.
func benchTexts(big bool) map[string]string {
	body := `{"client_id":"acme","client_secret":"` + benchSecret + `","grant_type":"client_credentials"}`
	clean := `{"error":"invalid_client","error_description":"Client authentication failed (unknown client, no client authentication included, or unsupported authentication method).","error_uri":"https://auth.example.com/docs/errors#invalid_client"}`
	rng := rand.New(rand.NewPCG(1, 2))
	var hostile strings.Builder
	for hostile.Len() < 64<<10 {
		raw := make([]byte, 48)
		for i := range raw {
			raw[i] = byte(rng.Uint32())
		}
		hostile.WriteString(base64.StdEncoding.EncodeToString(raw))
		hostile.WriteString(`%2F\u0041&amp;\/ s e c r e t `)
		hostile.WriteString(strings.Repeat("ab", 8))
	}
	var page strings.Builder
	page.WriteString(`<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>body{width:100%;margin:0 auto}</style></head><body><img src="data:image/png;base64,`)
	img := make([]byte, 6000)
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	page.WriteString(base64.StdEncoding.EncodeToString(img) + `">`)
	for page.Len() < 64<<10 {
		page.WriteString(`<p>The server encountered an internal error and was unable to complete your request. Please contact the server administrator at webmaster@example.com &amp; inform them of the time this error occurred &lt;id 3f2a7c1e-3b4d-4e5f-9a6b-7c8d9e0f1a2b&gt;.</p>` + "\n" + `<script>var msg = "Caf\u00e9 \"closed\"";</script>`)
	}
	var list strings.Builder
	list.WriteString(`{"errors":[`)
	for list.Len() < 64<<10 {
		list.WriteString(`{"code":"invalid_request","message":"The request is missing a required parameter, includes an invalid parameter value, or is otherwise malformed.","path":"\/oauth2\/v1\/token","trace":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},`)
	}
	texts := map[string]string{
		"clean 200 B":        clean[:200],
		"echoed secret":      "could not parse request " + base64.StdEncoding.EncodeToString([]byte(body)),
		"hostile 64 KiB":     hostile.String(),
		"HTML page 64 KiB":   page.String(),
		"JSON errors 64 KiB": list.String() + "]}",
	}
	if !big {
		return texts
	}
	for name, text := range map[string]string{
		"hostile 1 MiB":         strings.Repeat(hostile.String(), 16),
		"base64 1 MiB":          base64.StdEncoding.EncodeToString([]byte(strings.Repeat(hostile.String(), 12))),
		"escapes 1 MiB":         strings.Repeat(`%5Cu0041&#x25;32\\u&amp;`, 1<<20/24),
		"spaced 1 MiB":          strings.Repeat("a b c d e f g h i j ", 1<<20/20),
		"letters 1 MiB":         strings.Repeat("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 1<<20/52),
		"hex 1 MiB":             strings.Repeat("0123456789abcdef", 1<<16),
		"secret pieces 256 KiB": strings.Repeat(benchSecret[:5]+": "+benchSecret[5:8]+" ", 1<<18/12),
	} {
		texts[name] = text
	}
	return texts
}

// BenchmarkScrub measures the scrubber against the one it replaced
// (baseline), on the same texts, with the same secret.
func BenchmarkScrub(b *testing.B) {
	texts := benchTexts(true)
	for _, name := range []string{"clean 200 B", "echoed secret", "hostile 64 KiB", "HTML page 64 KiB", "JSON errors 64 KiB", "hostile 1 MiB", "base64 1 MiB", "escapes 1 MiB", "spaced 1 MiB", "letters 1 MiB", "hex 1 MiB", "secret pieces 256 KiB"} {
		text := texts[name]
		scrubbers := map[string]func(string) string{
			"baseline": newBaseline("acme", benchSecret).Scrub,
			"new":      scrub.New("acme", benchSecret).Scrub,
		}
		for _, impl := range []string{"baseline", "new"} {
			b.Run(name+"/"+impl, func(b *testing.B) {
				f := scrubbers[impl]
				b.SetBytes(int64(len(text)))
				var out string
				for b.Loop() {
					out = f(text)
				}
				if out == scrub.TooCostly {
					b.ReportMetric(1, "too-costly")
				}
			})
		}
	}
}

// The baseline misses what the attack found; the scrubber does not.
func TestBaselineMissesAttack(t *testing.T) {
	body := `{"client_id":"acme","client_secret":"` + benchSecret + `","grant_type":"client_credentials"}`
	b64 := []scrubtest.Step{scrubtest.B64Std}
	for _, c := range []struct {
		echo  string
		chain []scrubtest.Step
	}{
		{base64.StdEncoding.EncodeToString([]byte(body)), b64},
		{base64.StdEncoding.EncodeToString([]byte("x" + benchSecret)), b64},
		{base64.StdEncoding.EncodeToString([]byte("xy" + benchSecret)), b64},
		{strings.ToUpper(benchSecret), nil},
		{reverse(benchSecret), []scrubtest.Step{scrubtest.Reverse}},
		{strings.Join(strings.Split(benchSecret, ""), " "), []scrubtest.Step{scrubtest.Spaced(" ")}},
		{benchSecret[:7] + ": " + benchSecret[7:14], []scrubtest.Step{scrubtest.Spaced(": ")}},
	} {
		in := "could not parse request " + c.echo + " (trace 42)"
		if _, ok := scrubtest.Recover(newBaseline("acme", benchSecret).Scrub(in), benchSecret, c.chain); !ok {
			t.Errorf("the baseline redacts %q", in)
		}
		out := scrub.New("acme", benchSecret).Scrub(in)
		if w, ok := scrubtest.Recover(out, benchSecret, c.chain); ok || !strings.HasPrefix(out, "could not parse request ") || !strings.HasSuffix(out, " (trace 42)") {
			t.Errorf("Scrub(%q) = %q (%q)", in, out, w)
		}
	}
}
