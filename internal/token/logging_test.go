package token

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestEngineLogsAcrossStates drives one source, logging at DEBUG, through
// success, refresh, outage, refusal and recovery, and checks each line's
// level, message and fields, that failures are logged once per state
// change, that the fields of the logger it was given (the Caddy module
// names the source there) are on every line, and that no line holds the
// secret, a token or the token URL's query.
func TestEngineLogsAcrossStates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zapcore.DebugLevel)
		srv := newTokenServer(t, okToken(100))
		tokenURL := srv.tokenURL() + "?key=hidden-key-value"
		label := "943e47a1-test-client@abcd1234"
		base := zap.New(core).With(
			zap.String("source", label),
			zap.String("client_id", tsClientID),
			zap.String("token_url", RedactURL(tokenURL)),
		)
		s := newTestSource(t, tokenURL, func(c *Config) { c.Logger = base })

		mustGet(t, s)          // first token
		settle(nextWake(t, s)) // proactive refresh
		if n := srv.count(); n != 2 {
			t.Fatalf("token requests = %d, want 2 after the refresh", n)
		}

		srv.setRespond(answer(500, "application/json", `{"error":500,"message":"down"}`))
		for range 3 { // the refresh and two retries fail the same way: one line
			settle(nextWake(t, s))
		}
		srv.setRespond(answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`))
		for range 2 { // a new kind of failure: one more line
			settle(nextWake(t, s))
		}
		srv.setRespond(okToken(100))
		settle(nextWake(t, s))
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
			{zapcore.ErrorLevel, "token endpoint refused the credentials; check client_id, client_secret and scope", []string{"error", "kind", "attempt", "backoff", "status"}},
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
			if leaksSecret(text) || strings.Contains(text, "tok-") || strings.Contains(text, "hidden-key-value") {
				t.Errorf("line %d leaks a secret, token or the URL's query: %s", i, text)
			}
		}
		if m := got[0].ContextMap(); m["expires_in"] != 100*time.Second || m["took"] != time.Duration(0) {
			t.Errorf("first token line fields = %v", m)
		}
		if m := got[2].ContextMap(); m["status"] != int64(500) || m["attempt"] != int64(1) || m["backoff"] != time.Second || m["kind"] != "transient" {
			t.Errorf("outage line fields = %v", m)
		}
		if m := got[3].ContextMap(); m["status"] != int64(401) || m["kind"] != "refused" || m["attempt"] != int64(4) ||
			m["backoff"] != 40*time.Second || !strings.Contains(fmt.Sprint(m["error"]), "Client authentication failed") {
			t.Errorf("refusal line fields = %v", m)
		}
		if m := got[4].ContextMap(); m["attempt"] != int64(6) {
			t.Errorf("recovery line fields = %v, want attempt 6", m)
		}
	})
}

// A token answer without a usable lifetime is warned about once per
// source, however many such answers come.
func TestEngineWarnsOnceAboutDefaultTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zapcore.WarnLevel)
		srv := newTokenServer(t, answer(200, "application/json", `{"access_token":"no-lifetime"}`))
		s := newTestSource(t, srv.tokenURL(), func(c *Config) {
			c.Logger = zap.New(core)
			c.DefaultTTL = time.Minute
		})
		tok := mustGet(t, s)
		if d := tok.expiry.Sub(tok.obtained); d != time.Minute {
			t.Fatalf("lifetime %v, want the default_ttl of 1m", d)
		}
		settle(10 * time.Minute) // about 12 refreshes
		if n := srv.count(); n < 10 {
			t.Fatalf("%d token requests in 10 minutes of 1-minute tokens", n)
		}
		warns := logs.FilterMessageSnippet("default_ttl").All()
		if len(warns) != 1 || warns[0].ContextMap()["default_ttl"] != time.Minute {
			t.Fatalf("%d WARNs about default_ttl (%v), want 1 with the default_ttl", len(warns), warns)
		}
	})
}
