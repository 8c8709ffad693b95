package deskoauth

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// What operators see of an engine.

func TestEngineStatus(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)

	checkClean := func(st engineStatus, tok *accessToken) {
		t.Helper()
		b, _ := json.Marshal(st)
		for _, s := range []string{st.LastError, string(b)} {
			if leaksSecret(s) {
				t.Errorf("Status leaks the secret: %s", s)
			}
			if tok != nil && strings.Contains(s, tok.Value) {
				t.Errorf("Status leaks the token: %s", s)
			}
		}
	}

	st := e.Status()
	if st.State != stateEmpty || st.Fetches != 0 || st.LastError != "" || !st.ExpiresAt.IsZero() || !st.LastFetchAt.IsZero() {
		t.Fatalf("new engine Status = %+v, want empty", st)
	}

	tok := mustGet(t, e)
	clk.BlockUntilTimers(1)
	st = e.Status()
	if st.State != stateFresh || st.Fetches != 1 || st.LastError != "" || st.LastFetchAt.IsZero() {
		t.Fatalf("Status after a token = %+v, want fresh", st)
	}
	if want := tok.wallExpiry; !st.ExpiresAt.Equal(want) || st.ExpiresAt.Sub(clk.Now()) != time.Hour {
		t.Errorf("ExpiresAt = %v, want %v (one hour after the fetch)", st.ExpiresAt, want)
	}
	checkClean(st, tok)

	// A failing refresh: backing off, still holding the token. The server
	// echoes the secret.
	srv.setRespond(echoSecret(500, "application/json", func(s string) string {
		return `{"error":500,"message":"database down while checking ` + s + `"}`
	}))
	if _, err := e.Refresh(testCtx(t)); err == nil {
		t.Fatal("Refresh against a failing server succeeded")
	}
	st = e.Status()
	if st.State != stateBackingOff || st.ExpiresAt.IsZero() || st.NextRetryAt.IsZero() || st.Fetches != 2 {
		t.Fatalf("Status after a failed refresh = %+v, want backing_off with the token still held", st)
	}
	if !strings.Contains(st.LastError, "500") {
		t.Errorf("LastError = %q, want the status", st.LastError)
	}
	if hasMonotonic(st.NextRetryAt) || st.NextRetryAt.Sub(clk.Now()) != time.Second {
		t.Errorf("NextRetryAt = %v, want a wall time 1s from now", st.NextRetryAt)
	}
	checkClean(st, tok)

	// An answer whose token is unusable: its value must not leak either.
	srv.setRespond(answer(200, "application/json", `{"access_token":"leaky-token-value\r\n","token_type":"mac"}`))
	e.Refresh(testCtx(t))
	st = e.Status()
	if st.State != stateBackingOff || strings.Contains(st.LastError, "leaky-token-value") {
		t.Errorf("Status after an unusable answer = %+v", st)
	}

	// Refused credentials.
	srv.setRespond(echoSecret(401, "application/json", func(s string) string {
		return `{"error":401,"id":"oauth_server","message":"Client authentication failed: ` + s + `"}`
	}))
	if _, err := e.Refresh(testCtx(t)); err == nil {
		t.Fatal("Refresh against a refusing server succeeded")
	}
	st = e.Status()
	if st.State != stateRejected || !strings.Contains(st.LastError, "Client authentication failed") {
		t.Fatalf("Status after a refusal = %+v, want rejected", st)
	}
	checkClean(st, tok)

	// Recovery.
	srv.setRespond(okToken(3600))
	tok2, err := e.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	st = e.Status()
	if st.State != stateFresh || st.LastError != "" || st.Fetches != 5 {
		t.Fatalf("Status after recovery = %+v", st)
	}
	checkClean(st, tok2)
}
