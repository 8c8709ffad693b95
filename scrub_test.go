package deskoauth

import (
	"strings"
	"testing"
)

// leakCheck is the tests' one check that no secret leaked: it looks for
// what the production scrubber looks for (every form newScrubber lists for
// the client secret: as is, form-encoded, base64, hex, inside Basic
// credentials; and the same forms of the other secrets, such as issued
// tokens), under any escaping the scrubber undoes.
type leakCheck struct{ sc *scrubber }

// newLeakCheck checks for the client secret (with the client ID that goes
// with it into Basic credentials) and for others (tokens, param values);
// like the scrubber, it ignores others shorter than scrubMinExtra.
func newLeakCheck(clientID, secret string, others ...string) leakCheck {
	return leakCheck{newScrubber(clientID, secret, others...)}
}

// assertNone fails t when text holds a secret, and when text is empty: the
// check would then prove nothing. what names the text in the failure,
// which shows the text with the secrets redacted.
func (lc leakCheck) assertNone(t errorReporter, what, text string) {
	t.Helper()
	if text == "" {
		t.Errorf("%s is empty: the leak check would prove nothing", what)
		return
	}
	// Line by line: a log is read in its lines, and each gets the whole
	// scrubbing budget.
	for i, line := range strings.Split(text, "\n") {
		if got := lc.sc.Scrub(line); got != line {
			t.Errorf("%s holds a secret or token (line %d): %.300s", what, i+1, got)
		}
	}
}

// errorReporter is the part of testing.TB that assertNone uses.
type errorReporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder is an errorReporter that records whether it was told of an
// error.
type recorder struct{ failed bool }

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) Failed() bool          { return r.failed }

func TestLeakCheck(t *testing.T) {
	lc := newLeakCheck("id", "s3cr3t value", "tok-abcdef")
	for _, leak := range []string{
		"x s3cr3t value y", "s3cr3t+value", `{"e":"s3cr3t\u0020value"}`, "czNjcjN0IHZhbHVl", // base64
		"Basic aWQ6czNjcjN0IHZhbHVl", "bearer tok-abcdef", "line one\ntok%2Dabcdef",
	} {
		ft := &recorder{}
		lc.assertNone(ft, "text", leak)
		if !ft.Failed() {
			t.Errorf("no leak found in %q", leak)
		}
	}
	for _, clean := range []string{"", "nothing here"} {
		ft := &recorder{}
		lc.assertNone(ft, "text", clean)
		if ft.Failed() != (clean == "") {
			t.Errorf("%q: failed = %v, want %v", clean, ft.Failed(), clean == "")
		}
	}
}
