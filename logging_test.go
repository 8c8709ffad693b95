package deskoauth

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestEngineLogsAcrossStates drives one engine, logging at DEBUG, through
// success, refresh, outage, rejection and recovery, and checks each line's
// level, message and fields, that failures are logged once per state change,
// and that no line holds the secret or a token.
func TestEngineLogsAcrossStates(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	label := "943e47a1-test-client@abcd1234"
	base := sourceLogger(zap.New(core), label, tsClientID, srv.tokenURL()+"?key=hidden")
	e := newTestEngine(t, srv.tokenURL(), clk, func(c *engineConfig) { c.Logger = base })

	mustGet(t, e) // first token
	clk.BlockUntilTimers(1)
	clk.Advance(onlyPending(t, clk)) // proactive refresh
	srv.waitArrival(2)
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(500, "application/json", `{"error":500,"message":"down"}`))
	for range 3 { // the refresh and two retries fail the same way: one line
		clk.Advance(onlyPending(t, clk))
		clk.BlockUntilTimers(1)
	}
	srv.setRespond(answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`))
	for range 2 { // a new kind of failure: one more line
		clk.Advance(onlyPending(t, clk))
		clk.BlockUntilTimers(1)
	}
	srv.setRespond(okToken(100))
	clk.Advance(onlyPending(t, clk))
	clk.BlockUntilTimers(1)
	if n := srv.count(); n != 8 {
		t.Fatalf("token requests = %d, want 8", n)
	}

	type line struct {
		level  zapcore.Level
		msg    string
		fields []string
	}
	want := []line{
		{zapcore.InfoLevel, "first token obtained", []string{"expires_in", "took"}},
		{zapcore.DebugLevel, "token refreshed", []string{"expires_in", "took"}},
		{zapcore.WarnLevel, "token refresh failed; still serving the current token", []string{"error", "kind", "attempt", "backoff", "status"}},
		{zapcore.ErrorLevel, "token endpoint rejected the credentials; check client_id, client_secret and scope", []string{"error", "kind", "attempt", "backoff", "status"}},
		{zapcore.InfoLevel, "token endpoint recovered; token obtained", []string{"expires_in", "took", "attempt"}},
	}
	got := logs.All()
	if len(got) != len(want) {
		for _, g := range got {
			t.Logf("%s %s %v", g.Level, g.Message, g.ContextMap())
		}
		t.Fatalf("%d log lines, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Level != w.level || g.Message != w.msg {
			t.Errorf("line %d = %s %q, want %s %q", i, g.Level, g.Message, w.level, w.msg)
		}
		m := g.ContextMap()
		for _, f := range append([]string{"source", "client_id", "token_url"}, w.fields...) {
			if _, ok := m[f]; !ok {
				t.Errorf("line %d (%q) lacks field %q: %v", i, g.Message, f, m)
			}
		}
		if m["source"] != label || m["client_id"] != tsClientID || m["token_url"] != srv.tokenURL() {
			t.Errorf("line %d identity fields = %v", i, m)
		}
		text := fmt.Sprint(g.Message, m)
		if leaksSecret(text) || strings.Contains(text, "tok-") || strings.Contains(text, "hidden") {
			t.Errorf("line %d leaks a secret, token or the URL's query: %s", i, text)
		}
	}
	if m := got[2].ContextMap(); m["status"] != int64(500) || m["attempt"] != int64(1) || m["backoff"] != time.Second {
		t.Errorf("outage line fields = %v", m)
	}
	if m := got[3].ContextMap(); m["status"] != int64(401) || !strings.Contains(fmt.Sprint(m["error"]), "Client authentication failed") {
		t.Errorf("rejection line fields = %v", m)
	}
}
