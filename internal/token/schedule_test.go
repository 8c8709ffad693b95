package token

import (
	"fmt"
	"math"
	"net/http"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// The schedule, in synctest bubbles: proactive refresh, backoff,
// Retry-After, the floors under token lifetimes.

// secs converts seconds to durations, to the nanosecond.
func secs(s ...float64) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, v := range s {
		out[i] = time.Duration(math.Round(v * 1e9))
	}
	return out
}

// assertArrivals checks when each token request arrived, as offsets from
// start.
func assertArrivals(t testing.TB, srv *tokenServer, start time.Time, want []time.Duration) {
	t.Helper()
	if got := srv.arrivals(start); !slices.Equal(got, want) {
		t.Fatalf("token requests arrived at %v, want %v", got, want)
	}
}

// assertNextRequestIn checks that s's next token request starts exactly d
// from now: nothing 1ns before, one request at d.
func assertNextRequestIn(t testing.TB, s *Source, srv *tokenServer, d time.Duration) {
	t.Helper()
	before := srv.count()
	settle(d - time.Nanosecond)
	if n := srv.count(); n != before {
		t.Fatalf("%d token request(s) %v early", n-before, time.Nanosecond)
	}
	settle(time.Nanosecond)
	if n := srv.count(); n != before+1 {
		t.Fatalf("%d token request(s) after %v, want 1", n-before, d)
	}
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	// In a bubble the clock starts on a whole second and stands still
	// while nothing sleeps, so an HTTP date 90 s away is exactly 90 s away.
	tests := []struct {
		name           string
		status         int
		retryAfter     func() string
		wantRetryAfter time.Duration // Error.RetryAfter
		wantBackoff    time.Duration // the first backoff
	}{
		{"429 seconds", 429, func() string { return "30" }, 30 * time.Second, 30 * time.Second},
		{"503 seconds", 503, func() string { return "120" }, 2 * time.Minute, 2 * time.Minute},
		{"429 HTTP date", 429, func() string { return time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat) }, 90 * time.Second, 90 * time.Second},
		{"429 HTTP date in the past keeps normal backoff", 429, func() string { return time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat) }, 0, time.Second},
		{"429 zero keeps normal backoff", 429, func() string { return "0" }, 0, time.Second},
		{"429 negative keeps normal backoff", 429, func() string { return "-5" }, 0, time.Second},
		{"429 unreadable keeps normal backoff", 429, func() string { return "soon" }, 0, time.Second},
		{"429 a day is capped at 10 minutes", 429, func() string { return "86400" }, 10 * time.Minute, 10 * time.Minute},
	}
	for _, tt := range tests {
		inBubble(t, tt.name, func(t *testing.T) {
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				answer(tt.status, "application/json", `{"message":"slow down"}`, "Retry-After", tt.retryAfter())(w, r, n)
			})
			s := newTestSource(t, srv.tokenURL())
			te := mustGetErr(t, s)
			if te.Kind != KindTransient {
				t.Errorf("Kind = %v, want transient", te.Kind)
			}
			if te.RetryAfter != tt.wantRetryAfter {
				t.Errorf("RetryAfter = %v, want %v", te.RetryAfter, tt.wantRetryAfter)
			}
			backoff := nextWake(t, s)
			if backoff != tt.wantBackoff {
				t.Errorf("next attempt in %v, want %v", backoff, tt.wantBackoff)
			}
			if backoff < te.RetryAfter {
				t.Errorf("next attempt in %v, sooner than the server's Retry-After %v", backoff, te.RetryAfter)
			}
			// Get fails fast during the backoff and says when to retry.
			te2 := mustGetErr(t, s)
			if te2.RetryAfter != backoff || srv.count() != 1 {
				t.Errorf("during backoff: RetryAfter = %v (want %v), %d requests (want 1)", te2.RetryAfter, backoff, srv.count())
			}
			// The retry comes exactly then.
			assertNextRequestIn(t, s, srv, backoff)
		})
	}
}

func TestEngineProactiveRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())

		tok1 := mustGet(t, s)
		if tok1.Value != "tok-1" {
			t.Fatalf("first token %q", tok1.Value)
		}
		if d := nextWake(t, s); d != 77500*time.Millisecond {
			t.Fatalf("refresh in %v, want 77.5s", d)
		}

		settle(70 * time.Second)
		if got := mustGet(t, s); got != tok1 {
			t.Fatalf("at 70s Get = %q, want the first token", got.Value)
		}
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests at 70s, want 1", n)
		}

		release := srv.holdRequests(t)
		settle(11 * time.Second) // the refresh starts at 77.5s and is held
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests at 81s, want 2 (the refresh)", n)
		}
		assertArrivals(t, srv, start, secs(0, 77.5))
		for range 3 {
			if got := mustGet(t, s); got != tok1 {
				t.Fatalf("during the refresh Get = %q, want the old, still valid token", got.Value)
			}
		}
		if st := s.Status(); st.State != StateRefreshing || st.ExpiresAt.IsZero() {
			t.Errorf("Status during the refresh = %+v, want refreshing with an expiry", st)
		}
		release()
		synctest.Wait() // the refresh finished and the next one is scheduled

		tok2 := mustGet(t, s)
		if tok2.Value != "tok-2" {
			t.Fatalf("after the refresh Get = %q, want tok-2", tok2.Value)
		}
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests, want exactly 2", n)
		}
		// The new token, obtained at 81s when its answer came, is
		// refreshed at 77.5% of its own lifetime.
		if got := nextWake(t, s); got != 77500*time.Millisecond {
			t.Errorf("next refresh in %v, want 77.5s", got)
		}
		assertNextRequestIn(t, s, srv, 77500*time.Millisecond)
	})
}

func TestEngineRefreshShortTokens(t *testing.T) {
	// 3s tokens, time moving in 1s steps for 30s (ten lifetimes), a Get at
	// each step: every token is refreshed 2.325s into its life, when its
	// timer fires, so tokens are fetched at 0s, 2.325s, 4.65s … 27.9s: 13
	// fetches, one per refresh interval and certainly no fetch loop; no
	// Get ever sees an expired token or fetches on its own.
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		srv := newTokenServer(t, okToken(3))
		s := newTestSource(t, srv.tokenURL())
		mustGet(t, s)
		for range 30 {
			settle(time.Second)
			tok := mustGet(t, s)
			if !tok.Valid(time.Now()) {
				t.Fatalf("at +%v Get returned a token that is not valid", time.Since(start))
			}
		}
		var want []time.Duration
		for k := range 13 {
			want = append(want, time.Duration(k)*2325*time.Millisecond)
		}
		assertArrivals(t, srv, start, want)
	})
}

func TestEngineRefreshNeverServesExpiredToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())
		tok1 := mustGet(t, s)

		srv.setRespond(answer(500, "application/json", `{"error":500,"message":"Internal server error"}`))
		// Move in 1s steps up to 94s: the refresh (77.5s) and its retries
		// (1s, 2s, 4s, 8s later…) fail; the old token is served throughout.
		for time.Since(start) < 94*time.Second {
			settle(time.Second)
			if got := mustGet(t, s); got != tok1 {
				t.Fatalf("at +%v Get = %q, want the old token", time.Since(start), got.Value)
			}
		}
		assertArrivals(t, srv, start, secs(0, 77.5, 78.5, 80.5, 84.5, 92.5))
		before := srv.count()
		if st := s.Status(); st.State != StateBackingOff || st.ExpiresAt.IsZero() {
			t.Fatalf("Status = %+v, want backing_off while still holding a token", st)
		}

		// The token is served until its safety margin (5% of its 100 s)
		// before its expiry, to the nanosecond: 95 s.
		settle(time.Second - time.Nanosecond)
		if got := mustGet(t, s); got != tok1 {
			t.Fatalf("1ns before its safety margin Get = %q, want the old token", got.Value)
		}
		settle(time.Nanosecond)
		if p := peek(s); p != nil {
			t.Fatalf("peek returned the token within its safety margin")
		}
		// Fail fast: no token request per call while backing off (the
		// next retry is at 108.5s).
		for range 20 {
			te := mustGetErr(t, s)
			if te.Kind != KindTransient || te.Status != 500 || te.RetryAfter != 13500*time.Millisecond {
				t.Fatalf("Get error = %+v (RetryAfter %v), want the last transient 500 with a RetryAfter of 13.5s", te, te.RetryAfter)
			}
		}
		if n := srv.count(); n != before {
			t.Fatalf("Gets after expiry made %d token requests while backing off", n-before)
		}
		if st := s.Status(); st.State != StateBackingOff || !st.ExpiresAt.IsZero() {
			t.Fatalf("Status = %+v, want backing_off without an expiry", st)
		}
	})
}

func TestEngineBackoff(t *testing.T) {
	tests := []struct {
		name     string
		r        responder
		wantKind Kind
		waits    []time.Duration
	}{
		{"transient 500", answer(500, "application/json", `{"error":500,"message":"down"}`), KindTransient, secs(1, 2, 4, 8, 16, 32, 60, 60, 60)},
		{"transient 429 without Retry-After", answer(429, "", ""), KindTransient, secs(1, 2, 4, 8, 16, 32, 60, 60)},
		{"invalid answer", answer(200, "text/html", "<html></html>"), KindInvalidAnswer, secs(1, 2, 4, 8, 16, 32, 60, 60)},
		{"refused 401", answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`), KindRefused, secs(5, 10, 20, 40, 80, 160, 300, 300)},
		{"refused 403", answer(403, "text/plain", "Forbidden"), KindRefused, secs(5, 10, 20, 40, 80, 160, 300, 300)},
	}
	for _, tt := range tests {
		inBubble(t, tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.r)
			s := newTestSource(t, srv.tokenURL())
			if te := mustGetErr(t, s); te.Kind != tt.wantKind {
				t.Fatalf("Kind = %v, want %v", te.Kind, tt.wantKind)
			}
			for i, want := range tt.waits {
				if got := nextWake(t, s); got != want {
					t.Fatalf("after failure %d the next attempt is in %v, want %v", i+1, got, want)
				}
				if te := mustGetErr(t, s); te.RetryAfter != want || te.Kind != tt.wantKind {
					t.Fatalf("after failure %d Get's error = %v (%v, RetryAfter %v), want %v with RetryAfter %v",
						i+1, te, te.Kind, te.RetryAfter, tt.wantKind, want)
				}
				if n := srv.count(); n != int64(i+1) {
					t.Fatalf("after failure %d: %d token requests", i+1, n)
				}
				// Nothing happens before the step ends; the retry comes
				// exactly at its end.
				assertNextRequestIn(t, s, srv, want)
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
		{"refused, lowest jitter", 0, 401, 4 * time.Second},
		{"refused, highest jitter", 0.999, 401, time.Duration(float64(5*time.Second) * (0.8 + 0.4*0.999))},
	}
	for _, tt := range tests {
		inBubble(t, tt.name, func(t *testing.T) {
			srv := newTokenServer(t, answer(tt.status, "", ""))
			s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Rand = fixedRand(tt.rand) })
			mustGetErr(t, s)
			if got := nextWake(t, s); got != tt.want {
				t.Fatalf("first backoff = %v, want %v", got, tt.want)
			}
			assertNextRequestIn(t, s, srv, tt.want)
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
		{"refused", answer(401, "application/json", `{"error":401,"message":"Client authentication failed"}`), 20 * time.Second},
	}
	for _, tt := range tests {
		inBubble(t, tt.name, func(t *testing.T) {
			srv := newTokenServer(t, tt.fail)
			s := newTestSource(t, srv.tokenURL())
			mustGetErr(t, s)
			for range 2 {
				settle(nextWake(t, s))
			}
			if got := nextWake(t, s); got != tt.step {
				t.Fatalf("after 3 failures the backoff is %v, want %v", got, tt.step)
			}
			if n := srv.count(); n != 3 {
				t.Fatalf("%d token requests, want 3", n)
			}

			// The server is fixed in the middle of the step.
			settle(tt.step / 2)
			srv.setRespond(okToken(3600))
			mustGetErr(t, s) // still failing fast until the step ends
			if n := srv.count(); n != 3 {
				t.Fatalf("Get during the backoff made a request")
			}
			settle(tt.step - tt.step/2)
			if n := srv.count(); n != 4 {
				t.Fatalf("the retry did not come at the end of the step (%d requests)", n)
			}
			tok := mustGet(t, s)
			if tok.Value != "tok-4" || srv.count() != 4 {
				t.Fatalf("after recovery Get = %q with %d requests, want tok-4 with 4", tok.Value, srv.count())
			}
			st := s.Status()
			if st.State != StateFresh || st.LastError != "" || !st.NextRetryAt.IsZero() {
				t.Fatalf("Status after recovery = %+v", st)
			}
			// Back to the normal schedule: the next wake is the refresh.
			if got := nextWake(t, s); got != time.Duration(float64(time.Hour)*0.775) {
				t.Fatalf("after recovery the next wake is in %v, want the refresh", got)
			}
		})
	}
}

// An endpoint whose tokens expire at once (expires_in 0 with a tiny
// default_ttl, or a JWT exp a second away) gets one token request a
// second, not one per request: the 1 s floor under a token's lifetime and
// the 1 s floor between a token request and a proactive refresh.
func TestEngineLifetimeFloor(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(now time.Time) string
	}{
		{"expires_in 0 and a 300ns default_ttl", func(time.Time) string {
			return `{"token_type":"Bearer","expires_in":0,"access_token":"opaque"}`
		}},
		{"JWT exp a moment away", func(now time.Time) string {
			return `{"token_type":"Bearer","access_token":"` + makeJWT(fmt.Sprintf(`{"exp":%d}`, now.Unix()+1)) + `"}`
		}},
	} {
		inBubble(t, tc.name, func(t *testing.T) {
			start := time.Now()
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				answer(200, "application/json", tc.answer(time.Now()))(w, r, n)
			})
			s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.DefaultTTL = 300 })
			tok := mustGet(t, s)
			if d := tok.expiry.Sub(tok.obtained); d != minTokenLifetime {
				t.Fatalf("lifetime %v, want the %v floor", d, minTokenLifetime)
			}
			const steps = 100 // 10 s in 100 ms steps, a request at each
			for range steps {
				settle(100 * time.Millisecond)
				tok := mustGet(t, s)
				if !tok.Valid(time.Now()) {
					t.Fatalf("at +%v Get returned an expired token", time.Since(start))
				}
			}
			// One a second, on the second (by the timer, or by a Get at
			// the very instant the token expires).
			assertArrivals(t, srv, start, secs(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
		})
	}
}
