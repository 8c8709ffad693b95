package deskoauth

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	tokenpkg "github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// docs/troubleshooting.md quotes what the module prints. These tests read
// it and check every quote against the code and against what the
// end-to-end tests see, so that the page cannot drift from the binary.

const troubleshootingPage = "docs/troubleshooting.md"

// kindsHeading is the section of the page whose table has a row per kind
// of failure.
const kindsHeading = "## When no token can be had"

var (
	// backticked matches a quote in Markdown.
	backticked = regexp.MustCompile("`([^`]*)`")
	// leveled matches a log level followed by a quoted message.
	leveled = regexp.MustCompile("\\b(DEBUG|INFO|WARN|ERROR) `([^`]*)`")
)

// docSection is one section of a Markdown page: its heading, the rows of
// its tables, as cells, and its other lines.
type docSection struct {
	heading string
	rows    [][]string
	prose   string
}

// readSections splits a Markdown page at its "## " headings (the text
// before the first is a section without a heading) and reads the rows of
// the tables in each, without their header and separator lines.
func readSections(t *testing.T, path string) []docSection {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []docSection
	cur := docSection{}
	header := false
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "## "):
			out = append(out, cur)
			cur = docSection{heading: line}
		case strings.HasPrefix(line, "|---"):
			header = false
		case strings.HasPrefix(line, "|"):
			if header {
				continue
			}
			cells := strings.Split(strings.Trim(line, "|"), " | ")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			cur.rows = append(cur.rows, cells)
		default:
			// The next table line is a header.
			header = true
			cur.prose += line + "\n"
		}
	}
	return append(out, cur)
}

// quotes returns the backticked strings of a cell.
func quotes(cell string) []string {
	var out []string
	for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

// quotePattern is a quote as a regular expression: "…" stands for any
// text.
func quotePattern(q string) *regexp.Regexp {
	parts := strings.Split(q, "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile("^(?s)" + strings.Join(parts, ".*") + "$")
}

// The table of the kinds of failure: a row per kind, in which the status,
// client message and log lines are the ones the code gives that kind, and
// every quoted error is one the end-to-end scenarios of that kind logged.
func TestTroubleshootingQuotesTheFailureKinds(t *testing.T) {
	var rows [][]string
	for _, s := range readSections(t, troubleshootingPage) {
		if s.heading == kindsHeading {
			rows = s.rows
		}
	}
	if len(rows) == 0 {
		t.Fatalf("%s has no table under %q", troubleshootingPage, kindsHeading)
	}
	obs := runFailureScenarios(t)
	byKind := map[string][]observation{}
	for _, o := range obs {
		byKind[o.logKind] = append(byKind[o.logKind], o)
	}
	var labels []string
	for _, k := range tokenpkg.Kinds {
		labels = append(labels, k.String())
	}

	seen := map[string]bool{}
	for _, row := range rows {
		if len(row) != 5 {
			t.Errorf("row %q: %d cells, want 5", row, len(row))
			continue
		}
		q := quotes(row[0])
		if len(q) != 1 || !slices.Contains(labels, q[0]) || seen[q[0]] {
			t.Errorf("row %q: first cell quotes %q, want one kind of %q, once", row[0], q, labels)
			continue
		}
		label := q[0]
		seen[label] = true
		kind := tokenpkg.Kinds[slices.Index(labels, label)]
		if len(byKind[label]) == 0 {
			t.Errorf("%s: no end-to-end scenario of this kind", label)
		}

		// The client's answer.
		status, msg := answerFor(kind)
		if got, want := quotes(row[1]), []string{strconv.Itoa(status), msg}; !slices.Equal(got, want) {
			t.Errorf("%s: the page says the client gets %q, the code %q", label, got, want)
		}
		for _, o := range byKind[label] {
			if o.status != status || o.message != msg {
				t.Errorf("%s: a request got %d %q, the code says %d %q", label, o.status, o.message, status, msg)
			}
		}

		// The log lines: with no valid token and while one is served.
		want := map[string]bool{}
		for _, serving := range []bool{false, true} {
			level, msg := tokenpkg.FailureLog(kind, serving)
			want[strings.ToUpper(level.String())+" "+msg] = true
		}
		got := map[string]bool{}
		for _, m := range leveled.FindAllStringSubmatch(row[2], -1) {
			got[m[1]+" "+m[2]] = true
		}
		if q := quotes(row[2]); len(got) == 0 && len(q) == 1 && slices.Contains(labels, q[0]) {
			// "as for `transient`": that kind's lines.
			other := tokenpkg.Kinds[slices.Index(labels, q[0])]
			for _, serving := range []bool{false, true} {
				level, msg := tokenpkg.FailureLog(other, serving)
				got[strings.ToUpper(level.String())+" "+msg] = true
			}
		}
		if !mapsEqual(got, want) {
			t.Errorf("%s: the page quotes the log lines %v, the code logs %v", label, keys(got), keys(want))
		}
		for _, o := range byKind[label] {
			if !want[o.level+" "+o.msg] {
				t.Errorf("%s: a scenario logged %s %q, which is not the kind's line", label, o.level, o.msg)
			}
		}

		// The error fields: each quote is one a scenario of this kind
		// logged.
		errs := quotes(row[3])
		if len(errs) == 0 {
			t.Errorf("%s: no error quoted", label)
		}
		for _, e := range errs {
			re := quotePattern(e)
			found := false
			for _, o := range byKind[label] {
				found = found || re.MatchString(o.logError)
			}
			if !found {
				var logged []string
				for _, o := range byKind[label] {
					logged = append(logged, o.logError)
				}
				t.Errorf("%s: the page quotes the error %q; the scenarios of that kind logged %q", label, e, logged)
			}
		}
	}
	for _, l := range labels {
		if !seen[l] {
			t.Errorf("%s: no row for this kind", l)
		}
	}
}

// The rest of the page: every message quoted in a table's first column,
// or after a log level, is made of text the module's sources (or
// certmagic's, for the storage's errors) print, "…" standing for any text.
// So are the log lines docs/failures.md, docs/logs.md and docs/tenants.md
// quote.
func TestTroubleshootingQuotesRealMessages(t *testing.T) {
	var msgs []string
	for _, s := range readSections(t, troubleshootingPage) {
		for _, m := range leveled.FindAllStringSubmatch(s.prose, -1) {
			msgs = append(msgs, m[2])
		}
		if s.heading == kindsHeading {
			continue // TestTroubleshootingQuotesTheFailureKinds
		}
		for _, row := range s.rows {
			for _, q := range quotes(row[0]) {
				if strings.Contains(q, " ") { // a message, not a name or a status
					msgs = append(msgs, q)
				}
			}
			for _, cell := range row {
				for _, m := range leveled.FindAllStringSubmatch(cell, -1) {
					msgs = append(msgs, m[2])
				}
			}
		}
	}
	if len(msgs) < 15 {
		t.Fatalf("%d messages quoted in %s: the check would prove little", len(msgs), troubleshootingPage)
	}
	lits := sourceLiterals(t)
	// The lines and answers the code composes from several strings.
	for _, k := range tokenpkg.Kinds {
		for _, serving := range []bool{false, true} {
			_, msg := tokenpkg.FailureLog(k, serving)
			lits = append(lits, newLiteral(msg))
		}
		_, msg := answerFor(k)
		lits = append(lits, newLiteral(msg))
	}
	checkQuotes(t, troubleshootingPage, msgs, lits)

	// The log lines other pages quote after their level.
	for _, page := range []string{"docs/failures.md", "docs/logs.md", "docs/tenants.md"} {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []string
		for _, m := range leveled.FindAllStringSubmatch(string(b), -1) {
			msgs = append(msgs, strings.Join(strings.Fields(m[2]), " "))
		}
		if len(msgs) < 5 {
			t.Fatalf("%d log lines quoted in %s: the check would prove little", len(msgs), page)
		}
		checkQuotes(t, page, msgs, lits)
	}
}

// checkQuotes checks that every "…"-separated part of every message
// quoted on the page is printed by one of the literals.
func checkQuotes(t *testing.T, page string, msgs []string, lits []literal) {
	t.Helper()
	printed := func(f string) bool { return slices.ContainsFunc(lits, func(l literal) bool { return l.prints(f) }) }
	for _, m := range msgs {
		parts := strings.Split(m, "…")
		for i, f := range parts {
			// A ": " at a cut is often where an error wraps another.
			f = strings.Trim(f, " :")
			if len(strings.Trim(f, ` "':,.;`)) < 3 || printed(f) {
				continue
			}
			// Right after a "…", the first word may end what a verb
			// printed, and the rest be another string's text (an error
			// wrapped in a message): "client_key: {file.…} holds no PEM
			// block".
			if _, rest, ok := strings.Cut(f, " "); ok && i > 0 && printed(rest) {
				continue
			}
			t.Errorf("%s quotes %q: no string in the sources prints %q", page, m, f)
		}
	}
}

// literal is a string of the sources, cut at its fmt verbs: pieces[i] and
// pieces[i+1] have a verb, any text, between them.
type literal struct{ pieces []string }

// fmtVerb matches a verb of package fmt (not %%).
var fmtVerb = regexp.MustCompile(`%[-+# 0]*(?:\[\d+\])?[0-9*]*(?:\.[0-9*]+)?[vTtbcdoOqxXUeEfFgGspw]`)

func newLiteral(s string) literal {
	pieces := fmtVerb.Split(s, -1)
	for i := range pieces {
		pieces[i] = strings.ReplaceAll(pieces[i], "%%", "%")
	}
	return literal{pieces}
}

// prints reports whether f is part of some text the literal can print,
// a verb printing a word (any text without a space: a name, a number, a
// URL; the page writes "…" for longer texts): the end of a piece, then
// what the verbs and pieces that follow print, up to the start of a later
// piece; or a part of one piece.
func (l literal) prints(f string) bool {
	p := l.pieces
	for i := range p {
		if strings.Contains(p[i], f) {
			return true
		}
		if i+1 == len(p) {
			break // no verb after the last piece
		}
		for k := 0; k <= min(len(f), len(p[i])); k++ {
			if f[:k] == p[i][len(p[i])-k:] && l.printsFrom(f[k:], i+1) {
				return true
			}
		}
	}
	return false
}

// printsFrom reports whether rest is what the verb before piece j, then
// that piece, and so on, can print (rest may end anywhere).
func (l literal) printsFrom(rest string, j int) bool {
	for v := 0; v <= len(rest); v++ {
		if v > 0 && rest[v-1] == ' ' {
			return false // a verb prints a word
		}
		r := rest[v:]
		switch {
		case r == "" || strings.HasPrefix(l.pieces[j], r):
			return true
		case strings.HasPrefix(r, l.pieces[j]) && j+1 < len(l.pieces) && l.printsFrom(r[len(l.pieces[j]):], j+1):
			return true
		}
	}
	return false
}

// sourceLiterals are the string literals (and sums of literals) of the
// module's Go files, tests excluded, and of certmagic's.
func sourceLiterals(t *testing.T) []literal {
	t.Helper()
	dirs := []string{"."}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to find certmagic's sources")
	}
	out, err := exec.Command(goCmd, "list", "-m", "-f", "{{.Dir}}", "github.com/caddyserver/certmagic").Output()
	if err != nil {
		t.Fatalf("go list certmagic: %v", err)
	}
	dirs = append(dirs, strings.TrimSpace(string(out)))
	var lits []literal
	fset := token.NewFileSet()
	for i, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && path != dir && (i > 0 || d.Name() == "testdata" || d.Name() == "bench" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if s, ok := stringValue(n); ok {
					lits = append(lits, newLiteral(s))
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(lits) < 500 {
		t.Fatalf("%d string literals in %v: the check would prove little", len(lits), dirs)
	}
	return lits
}

// stringValue is the value of a string literal, or of a sum of them.
func stringValue(n ast.Node) (string, bool) {
	switch n := n.(type) {
	case *ast.BasicLit:
		if n.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(n.Value)
		return s, err == nil
	case *ast.BinaryExpr:
		if n.Op != token.ADD {
			return "", false
		}
		a, ok := stringValue(n.X)
		if !ok {
			return "", false
		}
		b, ok := stringValue(n.Y)
		return a + b, ok
	case *ast.ParenExpr:
		return stringValue(n.X)
	}
	return "", false
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// The pages that list the kinds' labels (the metric's results, the
// placeholder's values, the events' results) list every one.
func TestDocsListEveryKind(t *testing.T) {
	for _, c := range []struct{ page, line string }{
		{"docs/metrics.md", "| `desko_auth_token_fetches_total` |"},
		{"docs/caddy-integration.md", "| `{http.desko_auth.error}` |"},
		{"docs/failures.md", "A failure to obtain a token has a **kind**"},
	} {
		b, err := os.ReadFile(c.page)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		i := strings.Index(text, c.line)
		if i < 0 {
			t.Errorf("%s has no %q", c.page, c.line)
			continue
		}
		// The line, or the paragraph it starts.
		end := strings.Index(text[i:], "\n\n")
		if strings.HasPrefix(c.line, "|") {
			end = strings.Index(text[i:], "\n")
		}
		para := text[i : i+end]
		for _, k := range tokenpkg.Kinds {
			if !strings.Contains(para, "`"+k.String()+"`") {
				t.Errorf("%s: %q does not list the kind %s", c.page, c.line, k)
			}
		}
	}
	b, err := os.ReadFile("docs/caddy-integration.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{EventTokenObtained, EventRefreshFailed, EventCredentialsRefused} {
		if !strings.Contains(string(b), "| `"+name+"` |") {
			t.Errorf("docs/caddy-integration.md has no row for the event %s", name)
		}
	}
}

// The outcomes of desko_auth_requests_total: docs/metrics.md's row and the
// metric's help list every one the code counts.
func TestDocsListEveryOutcome(t *testing.T) {
	b, err := os.ReadFile("docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	const row = "| `desko_auth_requests_total` |"
	text := string(b)
	i := strings.Index(text, row)
	if i < 0 {
		t.Fatalf("docs/metrics.md has no %q", row)
	}
	line, _, _ := strings.Cut(text[i:], "\n")
	ch := make(chan *prometheus.Desc, 1)
	metrics.requests.Describe(ch)
	desc := (<-ch).String()
	for o := range numOutcomes {
		if !strings.Contains(line, "`"+o.String()+"`") {
			t.Errorf("docs/metrics.md's %s row does not list the outcome %s", row, o)
		}
		if !strings.Contains(desc, o.String()) {
			t.Errorf("the help of desko_auth_requests_total does not list the outcome %s: %s", o, desc)
		}
	}
}
