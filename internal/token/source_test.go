package token

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// Single flight, WarmUp, Close and the monotonic clock.

func TestEngineSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const callers = 100
		srv := newTokenServer(t, okToken(3600))
		release := srv.holdRequests(t)
		s := newTestSource(t, srv.tokenURL())

		type result struct {
			tok *Token
			err error
		}
		results := make(chan result, callers)
		for range callers {
			go func() {
				tok, err := s.Get(t.Context())
				results <- result{tok, err}
			}()
		}
		// Every caller has started and is blocked: on the one fetch, which
		// the server holds.
		synctest.Wait()
		if n := srv.count(); n != 1 {
			t.Fatalf("%d callers caused %d token requests before the first answer, want 1", callers, n)
		}
		if n := len(results); n != 0 {
			t.Fatalf("%d callers returned while the token request was held", n)
		}
		if st := s.Status(); st.State != StateRefreshing {
			t.Errorf("State while fetching = %s, want %s", st.State, StateRefreshing)
		}
		release()
		var first *Token
		for range callers {
			r := <-results
			if r.err != nil {
				t.Fatalf("Get: %v", r.err)
			}
			if first == nil {
				first = r.tok
			}
			if r.tok != first {
				t.Fatalf("callers got different tokens %q and %q", first.Value, r.tok.Value)
			}
		}
		if n := srv.count(); n != 1 {
			t.Fatalf("%d callers caused %d token requests, want 1", callers, n)
		}
		if st := s.Status(); st.Fetches != 1 || st.State != StateFresh {
			t.Errorf("Status = %+v, want 1 fetch and state fresh", st)
		}
	})
}

func TestEngineSingleFlightCancelledCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		release := srv.holdRequests(t)
		s := newTestSource(t, srv.tokenURL())

		ctxA, cancelA := context.WithCancel(t.Context())
		defer cancelA()
		errA := make(chan error, 1)
		go func() {
			_, err := s.Get(ctxA)
			errA <- err
		}()
		type result struct {
			tok *Token
			err error
		}
		resB := make(chan result, 1)
		go func() {
			tok, err := s.Get(t.Context())
			resB <- result{tok, err}
		}()
		synctest.Wait() // A and B wait on the one fetch, which the server holds
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}

		cancelA()
		// A returns while the token request is still held by the server.
		if err := <-errA; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller got %v, want context.Canceled", err)
		}
		synctest.Wait()
		select {
		case r := <-resB:
			t.Fatalf("caller B returned (%v, %v) before the token request finished", r.tok, r.err)
		default:
		}

		release()
		r := <-resB
		if r.err != nil || r.tok.Value != "tok-1" {
			t.Fatalf("caller B got %v, %v; want tok-1", r.tok, r.err)
		}
		if p := peek(s); p != r.tok {
			t.Fatalf("the fetch A gave up on did not fill the cache (peek = %v)", p)
		}
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
}

func TestEngineWarmUp(t *testing.T) {
	inBubble(t, "fetches once in the background", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		release := srv.holdRequests(t)
		s := newTestSource(t, srv.tokenURL())
		s.WarmUp() // must not block although the server holds the request
		synctest.Wait()
		if n := srv.count(); n != 1 {
			t.Fatalf("after WarmUp %d token requests, want 1", n)
		}
		s.WarmUp() // joins nothing, starts nothing: one is in flight
		release()
		if tok := mustGet(t, s); tok.Value != "tok-1" {
			t.Fatalf("Get = %q, want tok-1", tok.Value)
		}
		s.WarmUp() // a valid token is held: no fetch
		synctest.Wait()
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
	inBubble(t, "starts nothing after a failure", func(t *testing.T) {
		srv := newTokenServer(t, answer(500, "", ""))
		s := newTestSource(t, srv.tokenURL())
		mustGetErr(t, s)
		s.WarmUp() // the retry is the timer's business
		synctest.Wait()
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
}

func TestEngineClose(t *testing.T) {
	inBubble(t, "stops the refreshes", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		tok := mustGet(t, s)
		if d := nextWake(t, s); d != 2790*time.Second {
			t.Fatalf("refresh in %v, want 46m30s", d)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if s.timer.Stop() {
			t.Fatal("after Close the refresh timer was still armed")
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		// A request still in flight during a reload gets the cached token.
		if got := mustGet(t, s); got != tok {
			t.Fatalf("Get after Close = %q, want the cached token", got.Value)
		}
		// No background refresh any more: time passes, nothing is fetched.
		settle(2 * time.Hour)
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests after Close, want 1", n)
		}
	})
	inBubble(t, "empty source still answers", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		s.Close()
		if tok := mustGet(t, s); tok.Value != "tok-1" {
			t.Fatalf("Get after Close = %q", tok.Value)
		}
		settle(2 * time.Hour) // the one-off fetch armed no refresh
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
	inBubble(t, "empty source with a failing server still answers", func(t *testing.T) {
		srv := newTokenServer(t, answer(503, "", ""))
		s := newTestSource(t, srv.tokenURL())
		s.Close()
		if te := mustGetErr(t, s); te.Status != 503 {
			t.Fatalf("Get after Close error = %v", te)
		}
		mustGetErr(t, s)  // fail fast, no panic
		settle(time.Hour) // and no retries in the background
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
	inBubble(t, "does not wait for a fetch in flight", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		release := srv.holdRequests(t)
		s := newTestSource(t, srv.tokenURL())
		s.WarmUp()
		synctest.Wait()
		// Were Close to wait for the held fetch, the bubble would deadlock.
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		release()
		if tok := mustGet(t, s); tok.Value != "tok-1" {
			t.Fatalf("Get = %q, want tok-1", tok.Value)
		}
		if s.timer.Stop() {
			t.Fatal("the fetch that landed after Close armed the refresh timer")
		}
		settle(2 * time.Hour) // the fetch landed after Close: no refresh
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
}

// TestEngineExpiryUsesMonotonicClock checks what can honestly be checked
// about wall-clock jumps.
//
// A wall-clock jump cannot be simulated here: the source compares times
// with time.Time.Before/Sub, which use the monotonic reading when both
// sides have one, and package time offers no way to build a time whose
// wall and monotonic readings disagree (Add moves both), while a test
// cannot move the machine's wall clock. What the source must do to be
// immune is keep the monotonic reading on every time it compares
// (obtained, expiry, refreshAt, the next attempt, the last request):
// Round(0), UTC(), In(), Truncate() or a JSON round trip on that path
// would strip it, and the first half fails. Times in a synctest bubble
// carry no monotonic reading, so that half runs on the real clock. The
// second half checks, in a bubble, that validity follows the clock to the
// nanosecond.
func TestEngineExpiryUsesMonotonicClock(t *testing.T) {
	t.Run("times keep the monotonic reading", func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())
		tok := mustGet(t, s)
		for name, v := range map[string]time.Time{"obtained": tok.obtained, "expiry": tok.expiry, "refreshAt": tok.refreshAt} {
			if !hasMonotonic(v) {
				t.Errorf("token %s = %v has no monotonic reading", name, v)
			}
		}
		if hasMonotonic(tok.wallExpiry) || hasMonotonic(tok.Expiry()) {
			t.Errorf("wall expiry %v carries a monotonic reading (it is for display)", tok.wallExpiry)
		}
		if d := tok.expiry.Sub(tok.obtained); d != 100*time.Second {
			t.Fatalf("lifetime = %v, want 100s", d)
		}

		srv.setRespond(answer(500, "", ""))
		if _, err := s.Refresh(t.Context()); err == nil {
			t.Fatal("Refresh against a failing server succeeded")
		}
		s.mu.Lock()
		next, last := s.nextAttempt, s.lastRequestAt
		s.mu.Unlock()
		if !hasMonotonic(next) {
			t.Errorf("next attempt %v has no monotonic reading", next)
		}
		if !hasMonotonic(last) {
			t.Errorf("last request %v has no monotonic reading", last)
		}
		st := s.Status()
		for name, v := range map[string]time.Time{"ExpiresAt": st.ExpiresAt, "LastFetchAt": st.LastFetchAt, "NextRetryAt": st.NextRetryAt} {
			if v.IsZero() || hasMonotonic(v) {
				t.Errorf("Status().%s = %v, want a wall time (it is for display)", name, v)
			}
		}
	})
	inBubble(t, "validity follows the clock to the nanosecond", func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())
		tok := mustGet(t, s)
		srv.setRespond(answer(500, "", ""))
		// The token is used until its safety margin (5% of 100 s) before
		// its expiry: 95 s. The refresh at 77.5s and its retries fail.
		settle(95*time.Second - time.Nanosecond)
		if p := peek(s); p != tok {
			t.Fatalf("1ns before its safety margin peek = %v, want the token", p)
		}
		if got := mustGet(t, s); got != tok {
			t.Fatalf("1ns before its safety margin Get = %q, want the token", got.Value)
		}
		settle(time.Nanosecond)
		if p := peek(s); p != nil {
			t.Fatalf("within its safety margin peek still returns the token")
		}
		if te := mustGetErr(t, s); te.Status != 500 {
			t.Fatalf("within its safety margin Get error = %v, want the last 500", te)
		}
	})
}

// New applies the defaults in one place and refuses a config without
// credentials.
func TestNewAppliesDefaults(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "no credentials") {
		t.Fatalf("New without credentials: %v, want an error", err)
	}
	c := Config{Credentials: testCreds()}.WithDefaults()
	if c.TokenURL != DefaultTokenURL || c.Timeout != DefaultTimeout || c.DefaultTTL != DefaultTTL ||
		c.Auth != AuthJSON || c.Logger == nil || c.Rand == nil {
		t.Fatalf("WithDefaults = %+v", c)
	}
	if r := c.Rand(); r < 0 || r >= 1 {
		t.Errorf("the default Rand returned %v", r)
	}
	set := Config{TokenURL: "https://idp.example/token", Timeout: time.Second, DefaultTTL: time.Minute, Auth: AuthBasic}.WithDefaults()
	if set.TokenURL != "https://idp.example/token" || set.Timeout != time.Second || set.DefaultTTL != time.Minute || set.Auth != AuthBasic {
		t.Fatalf("WithDefaults overrode set values: %+v", set)
	}
	s := newTestSource(t, "http://nowhere.test/token", func(c *Config) { c.Rand, c.Logger = nil, nil })
	if s.cfg.Timeout != DefaultTimeout || s.cfg.DefaultTTL != DefaultTTL || s.log == nil || s.rand == nil {
		t.Fatalf("New did not apply the defaults: %+v", s.cfg)
	}
	if st := s.Status(); st.State != StateEmpty {
		t.Fatalf("a new source is %s, want empty (New sends nothing)", st.State)
	}
}
