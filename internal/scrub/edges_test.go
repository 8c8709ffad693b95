package scrub_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

func TestScrubNothingToRedact(t *testing.T) {
	for _, sc := range []*scrub.Scrubber{nil, {}, scrub.New("id", ""), scrub.New("id", "", "abc")} {
		if out := sc.Scrub("anything at all"); out != "anything at all" {
			t.Errorf("Scrub = %q", out)
		}
		err := errors.New("some error")
		if sc.Error(err) != err || sc.Error(nil) != nil {
			t.Errorf("Error changed an error with nothing to redact")
		}
	}
}

// A client secret shorter than MinExtra is matched in its exact forms
// only, as it always was.
func TestScrubShortSecret(t *testing.T) {
	sc := scrub.New("id", "ab")
	for in, want := range map[string]string{
		"ab":              scrub.Redacted,
		"x ab y":          "x " + scrub.Redacted + " y",
		`x \u0061b y`:     "x " + scrub.Redacted + " y",
		`x %5Cu0061b y`:   "x " + scrub.Redacted + " y",
		"AB ba a b YWI=":  "AB ba a b " + scrub.Redacted,
		"the cab is here": "the c" + scrub.Redacted + " is here",
	} {
		if out := sc.Scrub(in); out != want {
			t.Errorf("Scrub(%q) = %q, want %q", in, out, want)
		}
	}
}

// Extra secrets, which may be ordinary text too (an audience URL, a
// query), are matched whole, in every form and view, but not by their
// windows: the text around them survives.
func TestScrubExtras(t *testing.T) {
	sc := scrub.New("id", "", append(scrub.URLSecrets("https://u:pa55w0rd-XYZ@h/t?api_key=QUERYKEY-abc123"), "param-value-1234", "https://aud.example/AUDIENCE")...)
	for _, in := range []string{"pa55w0rd-XYZ", "PA55W0RD-XYZ", "querykey-ABC123", "321cba-YEKYREUQ", "p a r a m - v a l u e - 1 2 3 4", "aHR0cHM6Ly9hdWQuZXhhbXBsZS9BVURJRU5DRQ"} {
		if out := sc.Scrub("x " + in + " y"); out != "x "+scrub.Redacted+" y" {
			t.Errorf("Scrub(%q) = %q", in, out)
		}
	}
	for _, clean := range []string{"api_key missing", "QUERYKEY-abc", "https://other.example/path", "audience is required"} {
		if out := sc.Scrub(clean); out != clean {
			t.Errorf("Scrub(%q) = %q, want it unchanged", clean, out)
		}
	}
}

// Text too costly to scrub is replaced whole; error texts of ordinary
// sizes never are, nor large pages and answers of the usual kinds.
func TestScrubFailsClosed(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector slows scrubbing too much to measure the budget")
	}
	sc := scrub.New("id", "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB")
	hostile := strings.Repeat(`%255Cu0041&#x25;32\\u&amp;`+strings.Repeat("QUJD", 3)+" ", 1<<18/40)
	if out := sc.Scrub(hostile); out != scrub.TooCostly {
		t.Errorf("Scrub of %d hostile bytes = %.100q…", len(hostile), out)
	}
	// A secret that a run of dots matches at hundreds of alignments, as
	// the fuzzer found it (it made matching quadratic).
	dots := "0000000000000000" + strings.Repeat(".", 600) + "000"
	if out := scrub.New("id", dots).Scrub("01;00" + scrubtest.EscapeRandomly(dots, 15939) + "F"); out != scrub.TooCostly && strings.Contains(out, dots) {
		t.Errorf("Scrub = %.100q…", out)
	}
	texts := benchTexts(false)
	for _, name := range []string{"clean 200 B", "echoed secret", "HTML page 64 KiB", "JSON errors 64 KiB"} {
		if out := sc.Scrub(texts[name]); out == scrub.TooCostly {
			t.Errorf("%s: too costly", name)
		}
	}
}

// Secrets with few distinct bytes, as the fuzzer found them: the leak
// rule still redacts the secret and no more of the text around it.
func TestScrubDegenerateSecret(t *testing.T) {
	sc := scrub.New("client", "00000000")
	// 11, the secret, \x01 JSON-encoded, \u-escaped and JSON-encoded
	// again: the secret's pieces must not join the 0s around it.
	in := `0\\u0031\\u0031` + strings.Repeat(`\\u0030`, 8) + `\\u005c\\u0075\\u0030\\u0030\\u0030\\u00310`
	want := `0\\u0031\\u0031` + scrub.Redacted + `\\u005c\\u0075\\u0030\\u0030\\u0030\\u00310`
	if out := sc.Scrub(in); out != want {
		t.Errorf("Scrub(%q) = %q, want %q", in, out, want)
	}
	// The split rule does not join a piece inside a whole match to a
	// byte nearby.
	for in, want := range map[string]string{
		"0 11 00000000 1":  "0 11 " + scrub.Redacted + " 1",
		"000000000 1 0":    scrub.Redacted + " 1 0",
		"0000000: 0 is ok": scrub.Redacted + " is ok",
	} {
		if out := sc.Scrub(in); out != want {
			t.Errorf("Scrub(%q) = %q, want %q", in, out, want)
		}
	}
}

// One scrubber serves many goroutines at once.
func TestScrubConcurrent(t *testing.T) {
	sc := scrub.New("acme", benchSecret)
	texts := benchTexts(false)
	in := texts["echoed secret"] + " &eacute;&amp;%41\\u0042"
	want := sc.Scrub(in)
	done := make(chan string)
	for range 8 {
		go func() {
			out := ""
			for range 20 {
				out = sc.Scrub(in)
			}
			done <- out
		}()
	}
	for range 8 {
		if out := <-done; out != want {
			t.Errorf("Scrub = %q, want %q", out, want)
		}
	}
}

// Secrets with characters of different widths, spaced out, as the fuzzer
// found them.
func TestScrubSpacedMixedWidths(t *testing.T) {
	for secret, in := range map[string]string{
		"0é0éÅ":                 "00 é 0 é Å0",
		"0000éÅ":                "00   0   0   0   é   Å0",
		"0\U0004ad13\U00064d13": "00 \U0004ad13 \U00064d130", // three characters, 9 bytes
	} {
		if out := scrub.New("c", secret).Scrub(in); out != "0"+scrub.Redacted+"0" {
			t.Errorf("Scrub(%q) = %q", in, out)
		}
	}
}
