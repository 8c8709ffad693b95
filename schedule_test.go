package deskoauth

import (
	"net/http"
	"testing"
	"time"
)

// The schedule on the fake clock: proactive refresh, backoff, Retry-After.

// onlyPending returns the single armed timer's remaining time.
func onlyPending(t testing.TB, clk *fakeClock) time.Duration {
	t.Helper()
	p := clk.Pending()
	if len(p) != 1 {
		t.Fatalf("armed timers fire in %v, want exactly one timer", p)
	}
	return p[0]
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	tests := []struct {
		name           string
		status         int
		retryAfter     func() string
		wantRetryAfter [2]time.Duration // range of TokenError.RetryAfter
		wantBackoff    [2]time.Duration // range of the first backoff
	}{
		{"429 seconds", 429, func() string { return "30" }, [2]time.Duration{30 * time.Second, 30 * time.Second}, [2]time.Duration{30 * time.Second, 30 * time.Second}},
		{"503 seconds", 503, func() string { return "120" }, [2]time.Duration{2 * time.Minute, 2 * time.Minute}, [2]time.Duration{2 * time.Minute, 2 * time.Minute}},
		{"429 HTTP date", 429, func() string { return time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat) }, [2]time.Duration{85 * time.Second, 90 * time.Second}, [2]time.Duration{85 * time.Second, 90 * time.Second}},
		{"429 zero keeps normal backoff", 429, func() string { return "0" }, [2]time.Duration{0, 0}, [2]time.Duration{time.Second, time.Second}},
		{"429 unreadable keeps normal backoff", 429, func() string { return "soon" }, [2]time.Duration{0, 0}, [2]time.Duration{time.Second, time.Second}},
		{"429 a day is capped at 10 minutes", 429, func() string { return "86400" }, [2]time.Duration{10 * time.Minute, 10 * time.Minute}, [2]time.Duration{10 * time.Minute, 10 * time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				answer(tt.status, "application/json", `{"message":"slow down"}`, "Retry-After", tt.retryAfter())(w, r, n)
			})
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk)
			te := mustGetErr(t, e)
			if te.Kind != kindTransient {
				t.Errorf("Kind = %v, want transient", te.Kind)
			}
			if te.RetryAfter < tt.wantRetryAfter[0] || te.RetryAfter > tt.wantRetryAfter[1] {
				t.Errorf("RetryAfter = %v, want within %v", te.RetryAfter, tt.wantRetryAfter)
			}
			clk.BlockUntilTimers(1)
			backoff := onlyPending(t, clk)
			if backoff < tt.wantBackoff[0] || backoff > tt.wantBackoff[1] {
				t.Errorf("next attempt in %v, want within %v", backoff, tt.wantBackoff)
			}
			if backoff < te.RetryAfter {
				t.Errorf("next attempt in %v, sooner than the server's Retry-After %v", backoff, te.RetryAfter)
			}
			// Get fails fast during the backoff and says when to retry.
			te2 := mustGetErr(t, e)
			if te2.RetryAfter != backoff || srv.count() != 1 {
				t.Errorf("during backoff: RetryAfter = %v (want %v), %d requests (want 1)", te2.RetryAfter, backoff, srv.count())
			}
		})
	}
}

func TestEngineProactiveRefresh(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)

	tok1 := mustGet(t, e)
	if tok1.Value != "tok-1" {
		t.Fatalf("first token %q", tok1.Value)
	}
	clk.BlockUntilTimers(1) // the refresher is asleep until the refresh time

	if fired := clk.Advance(70 * time.Second); fired != 0 {
		t.Fatalf("a timer fired at 70s of a 100s token")
	}
	if got := mustGet(t, e); got != tok1 {
		t.Fatalf("at 70s Get = %q, want the first token", got.Value)
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests at 70s, want 1", n)
	}

	release := srv.holdRequests()
	if fired := clk.Advance(11 * time.Second); fired != 1 {
		t.Fatalf("%d timers fired at 81s, want the refresh timer", fired)
	}
	srv.waitArrival(2) // the background refresh is in flight and held
	for range 3 {
		if got := mustGet(t, e); got != tok1 {
			t.Fatalf("during the refresh Get = %q, want the old, still valid token", got.Value)
		}
	}
	if st := e.Status(); st.State != stateRefreshing || st.ExpiresAt.IsZero() {
		t.Errorf("Status during the refresh = %+v, want refreshing with an expiry", st)
	}
	release()
	clk.BlockUntilTimers(1) // the refresh finished and the next one is scheduled

	tok2 := mustGet(t, e)
	if tok2.Value != "tok-2" {
		t.Fatalf("after the refresh Get = %q, want tok-2", tok2.Value)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d token requests, want exactly 2", n)
	}
	// The new token is refreshed at 77.5% of its own lifetime.
	if got := onlyPending(t, clk); got != 77500*time.Millisecond {
		t.Errorf("next refresh in %v, want 77.5s", got)
	}
}

func TestEngineRefreshShortTokens(t *testing.T) {
	// 3s tokens, time moving in 1s steps for 30s (ten lifetimes): a
	// refresh is due 2.325s into each token's life and runs at the next
	// step, so tokens are fetched at 0s, 3s, 6s … 30s: 11 fetches, about
	// one per lifetime and certainly no fetch loop.
	srv := newTokenServer(t, okToken(3))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	mustGet(t, e)
	clk.BlockUntilTimers(1)
	for range 30 {
		if clk.Advance(time.Second) > 0 {
			clk.BlockUntilTimers(1)
		}
		tok := mustGet(t, e)
		if !tok.Valid(clk.Now()) {
			t.Fatalf("at +%v Get returned a token that is not valid", clk.Since())
		}
	}
	if n := srv.count(); n != 11 {
		t.Fatalf("%d token requests over 10 lifetimes, want 11", n)
	}
}

func TestEngineRefreshNeverServesExpiredToken(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok1 := mustGet(t, e)
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(500, "application/json", `{"error":500,"message":"Internal server error"}`))
	// Move in 1s steps up to 99s: the refresh (77.5s) and its retries
	// (1s, 2s, 4s, 8s later…) fail; the old token is served throughout.
	for clk.Since() < 99*time.Second {
		if clk.Advance(time.Second) > 0 {
			clk.BlockUntilTimers(1)
		}
		if got := mustGet(t, e); got != tok1 {
			t.Fatalf("at +%v Get = %q, want the old token", clk.Since(), got.Value)
		}
	}
	before := srv.count()
	if before < 2 {
		t.Fatalf("only %d token requests: the refresh was not attempted", before)
	}
	if st := e.Status(); st.State != stateBackingOff || st.ExpiresAt.IsZero() {
		t.Fatalf("Status = %+v, want backing_off while still holding a token", st)
	}

	// One nanosecond before its expiry the token is still served; at its
	// expiry it is not.
	clk.Advance(time.Second - time.Nanosecond)
	if got := mustGet(t, e); got != tok1 {
		t.Fatalf("1ns before expiry Get = %q, want the old token", got.Value)
	}
	clk.Advance(time.Nanosecond)
	if p := peek(e); p != nil {
		t.Fatalf("Peek returned the expired token")
	}
	// Fail fast: no token request per call while backing off.
	for range 20 {
		te := mustGetErr(t, e)
		if te.Kind != kindTransient || te.Status != 500 || te.RetryAfter <= 0 {
			t.Fatalf("Get error = %+v, want the last transient 500 with a RetryAfter", te)
		}
	}
	if n := srv.count(); n != before {
		t.Fatalf("Gets after expiry made %d token requests while backing off", n-before)
	}
	if st := e.Status(); st.State != stateBackingOff || !st.ExpiresAt.IsZero() {
		t.Fatalf("Status = %+v, want backing_off without an expiry", st)
	}
}

func TestEngineBackoff(t *testing.T) {
	secs := func(s ...int) []time.Duration {
		out := make([]time.Duration, len(s))
		for i, v := range s {
			out[i] = time.Duration(v) * time.Second
		}
		return out
	}
	tests := []struct {
		name     string
		r        responder
		wantKind errorKind
		waits    []time.Duration
	}{
		{"transient 500", answer(500, "application/json", `{"error":500,"message":"down"}`), kindTransient, secs(1, 2, 4, 8, 16, 32, 60, 60, 60)},
		{"transient 429 without Retry-After", answer(429, "", ""), kindTransient, secs(1, 2, 4, 8, 16, 32, 60, 60)},
		{"invalid response", answer(200, "text/html", "<html></html>"), kindInvalidResponse, secs(1, 2, 4, 8, 16, 32, 60, 60)},
		{"rejected 401", answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`), kindRejected, secs(5, 10, 20, 40, 80, 160, 300, 300)},
		{"rejected 403", answer(403, "text/plain", "Forbidden"), kindRejected, secs(5, 10, 20, 40, 80, 160, 300, 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.r)
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk)
			if te := mustGetErr(t, e); te.Kind != tt.wantKind {
				t.Fatalf("Kind = %v, want %v", te.Kind, tt.wantKind)
			}
			for i, want := range tt.waits {
				clk.BlockUntilTimers(1)
				if got := onlyPending(t, clk); got != want {
					t.Fatalf("after failure %d the next attempt is in %v, want %v", i+1, got, want)
				}
				if te := mustGetErr(t, e); te.RetryAfter != want {
					t.Fatalf("after failure %d Get's RetryAfter = %v, want %v", i+1, te.RetryAfter, want)
				}
				if n := srv.count(); n != int64(i+1) {
					t.Fatalf("after failure %d: %d token requests", i+1, n)
				}
				// Just before the step ends nothing happens.
				if clk.Advance(want-time.Millisecond) != 0 {
					t.Fatalf("the retry fired early")
				}
				if clk.Advance(time.Millisecond) != 1 {
					t.Fatalf("the retry did not fire after %v", want)
				}
			}
		})
	}
}

func TestEngineBackoffJitter(t *testing.T) {
	tests := []struct {
		name   string
		rand   float64
		status int
		want   time.Duration
	}{
		{"transient, lowest jitter", 0, 500, 800 * time.Millisecond},
		{"transient, highest jitter", 0.999, 500, time.Duration(float64(time.Second) * (0.8 + 0.4*0.999))},
		{"rejected, lowest jitter", 0, 401, 4 * time.Second},
		{"rejected, highest jitter", 0.999, 401, time.Duration(float64(5*time.Second) * (0.8 + 0.4*0.999))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, answer(tt.status, "", ""))
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk, func(c *engineConfig) { c.Rand = fixedRand(tt.rand) })
			mustGetErr(t, e)
			clk.BlockUntilTimers(1)
			if got := onlyPending(t, clk); got != tt.want {
				t.Fatalf("first backoff = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEngineBackoffRecovery(t *testing.T) {
	tests := []struct {
		name string
		fail responder
		step time.Duration // the backoff after three failures
	}{
		{"transient", answer(500, "", ""), 4 * time.Second},
		{"rejected", answer(401, "application/json", `{"error":401,"message":"Client authentication failed"}`), 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.fail)
			clk := newFakeClock(t)
			e := newTestEngine(t, srv.tokenURL(), clk)
			mustGetErr(t, e)
			for range 2 {
				clk.BlockUntilTimers(1)
				clk.Advance(onlyPending(t, clk))
			}
			clk.BlockUntilTimers(1)
			if got := onlyPending(t, clk); got != tt.step {
				t.Fatalf("after 3 failures the backoff is %v, want %v", got, tt.step)
			}
			if n := srv.count(); n != 3 {
				t.Fatalf("%d token requests, want 3", n)
			}

			// The server is fixed in the middle of the step.
			clk.Advance(tt.step / 2)
			srv.setRespond(okToken(3600))
			mustGetErr(t, e) // still failing fast until the step ends
			if n := srv.count(); n != 3 {
				t.Fatalf("Get during the backoff made a request")
			}
			if clk.Advance(tt.step-tt.step/2) != 1 {
				t.Fatal("the retry did not fire at the end of the step")
			}
			clk.BlockUntilTimers(1)
			tok := mustGet(t, e)
			if tok.Value != "tok-4" || srv.count() != 4 {
				t.Fatalf("after recovery Get = %q with %d requests, want tok-4 with 4", tok.Value, srv.count())
			}
			st := e.Status()
			if st.State != stateFresh || st.LastError != "" || !st.NextRetryAt.IsZero() {
				t.Fatalf("Status after recovery = %+v", st)
			}
			// Back to the normal schedule: the next timer is the refresh.
			if got := onlyPending(t, clk); got != time.Duration(float64(time.Hour)*0.775) {
				t.Fatalf("after recovery the next wake is in %v, want the refresh", got)
			}
		})
	}
}
