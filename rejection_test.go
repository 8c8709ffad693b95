package deskoauth

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// tokenEngine-level tests of what an upstream 401 does (Invalidate, Replace):
// the budget, the guard against upstreams that reject every token, and that
// a 401 never leaves the engine without the token it had. All on the fake
// clock.

// assertNoFetchStarted checks that the Invalidate just made started
// nothing: Invalidate starts any fetch before it returns, so one would show
// right now as state refreshing.
func assertNoFetchStarted(t *testing.T, e *tokenEngine, step string, want *accessToken) {
	t.Helper()
	if st := e.Status(); st.State != stateFresh {
		t.Fatalf("%s: state %s, want fresh (no fetch)", step, st.State)
	}
	if p := peek(e); p != want {
		t.Fatalf("%s: Peek = %v, want %q", step, p, want.Value)
	}
}

func TestEngineInvalidateReplacesAndSharesOneFetch(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok1 := mustGet(t, e)
	clk.BlockUntilTimers(1)

	e.Invalidate(nil) // no-op, no panic
	if e.Replace(testCtx(t), nil) != nil {
		t.Fatal("Replace(nil) returned a token")
	}

	// The first rejection replaces the token at once, however new it is.
	// Many requests rejected with the same token share one fetch, and new
	// requests wait for it rather than take the token just rejected.
	release := srv.holdRequests()
	e.Invalidate(tok1)
	srv.waitArrival(2)
	var wg sync.WaitGroup
	got := make(chan *accessToken, 20)
	for i := range 20 {
		wg.Go(func() {
			if i%2 == 0 {
				got <- e.Replace(testCtx(t), tok1)
				return
			}
			tok, err := e.Get(testCtx(t))
			if err != nil {
				t.Errorf("Get: %v", err)
			}
			got <- tok
		})
	}
	release()
	wg.Wait()
	close(got)
	for tok := range got {
		if tok == nil || tok.Value != "tok-2" {
			t.Fatalf("got %v, want tok-2 for every request", tok)
		}
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d token requests, want 2 (one fetch for all rejections)", n)
	}
	tok2 := mustGet(t, e)
	clk.BlockUntilTimerAt(tok2.refreshAt)

	// A rejection of a token that was already replaced starts nothing, and
	// Replace answers the newer token.
	if fresh := e.Replace(testCtx(t), tok1); fresh != tok2 {
		t.Fatalf("Replace(replaced token) = %v, want the current tok-2", fresh)
	}
	assertNoFetchStarted(t, e, "invalidating a replaced token", tok2)
}

// An upstream that rejects every token: a replacement rejected before any
// success is replaced only once it is 1 s old, then 2 s, 4 s … up to 1 min;
// a success, a normal refresh or two quiet minutes reset that guard.
func TestEngineGuardForTokensRejectedBeforeAnySuccess(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	cur := mustGet(t, e)
	clk.BlockUntilTimers(1)

	replaced := func(step string, tok *accessToken) *accessToken {
		t.Helper()
		before := srv.count()
		next := mustReplace(t, e, tok)
		if n := srv.count(); n != before+1 {
			t.Fatalf("%s: %d token requests, want 1", step, n-before)
		}
		clk.BlockUntilTimerAt(next.refreshAt)
		return next
	}
	cur = replaced("first rejection", cur)
	// The budget (rejectBurst, then one per rejectRefill) is never what
	// holds these back: the guard's steps are slower.
	for i, guard := range []time.Duration{1, 2, 4, 8, 16, 32, 60, 60} {
		guard *= time.Second
		step := fmt.Sprintf("replacement %d", i+1)
		if e.Replace(testCtx(t), cur) != nil {
			t.Fatalf("%s, brand new: replaced", step)
		}
		assertNoFetchStarted(t, e, step+", brand new", cur)
		clk.Advance(guard - time.Nanosecond)
		e.Invalidate(cur)
		assertNoFetchStarted(t, e, fmt.Sprintf("%s, 1ns under %v old", step, guard), cur)
		clk.Advance(time.Nanosecond)
		cur = replaced(fmt.Sprintf("%s, %v old", step, guard), cur)
	}

	// Two quiet minutes reset the guard.
	clk.Advance(invalidateQuiet)
	cur = replaced("after a quiet period", cur)
	e.Invalidate(cur)
	assertNoFetchStarted(t, e, "after a quiet period, second replacement, brand new", cur)
	clk.Advance(time.Second)
	cur = replaced("after a quiet period, second replacement, 1s old", cur)

	// So does a success: the token proved itself, so a 401 now is a
	// revocation, acted on at once.
	cur.Accepted()
	cur = replaced("after a success", cur)

	// … and a normal refresh.
	e.Invalidate(cur)
	assertNoFetchStarted(t, e, "second replacement in a row, brand new", cur)
	cur, err := e.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	clk.BlockUntilTimerAt(cur.refreshAt)
	replaced("after a normal refresh", cur)
}

// Revocations of tokens that worked are acted on at once: rejectBurst of
// them in a row, then one per rejectRefill; when the budget runs dry, one
// WARN names the likely cause, and the current token stays in use.
func TestEngineRevocationBudget(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	core, logs := observer.New(zapcore.InfoLevel)
	e := newTestEngine(t, srv.tokenURL(), clk, func(c *engineConfig) { c.Logger = zap.New(core) })
	cur := mustGet(t, e)
	clk.BlockUntilTimers(1)

	revoke := func(step string) *accessToken {
		t.Helper()
		cur.Accepted()
		fresh := e.Replace(testCtx(t), cur)
		if fresh != nil {
			clk.BlockUntilTimerAt(fresh.refreshAt)
		}
		return fresh
	}
	// Five revocations (and one more) within 10 s: each replaced at once,
	// however young the token.
	for i := range rejectBurst {
		clk.Advance(time.Second)
		fresh := revoke(fmt.Sprintf("revocation %d", i+1))
		if fresh == nil {
			t.Fatalf("revocation %d within %v was not replaced", i+1, clk.Since())
		}
		cur = fresh
	}
	if n := srv.count(); n != 1+rejectBurst {
		t.Fatalf("%d token requests, want %d", n, 1+rejectBurst)
	}

	// The budget is spent: the next revocation is not acted on, the token
	// stays in use, and one WARN says why.
	clk.Advance(time.Second)
	if revoke("over the budget") != nil {
		t.Fatal("a revocation over the budget was replaced")
	}
	assertNoFetchStarted(t, e, "over the budget", cur)
	clk.Advance(time.Second)
	if revoke("over the budget again") != nil {
		t.Fatal("a second revocation over the budget was replaced")
	}
	warns := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("budget").All()
	if len(warns) != 1 {
		t.Fatalf("%d WARNs about the spent budget, want 1 per dry spell", len(warns))
	}
	if msg := warns[0].Message; !strings.Contains(msg, "shared_cache") || !strings.Contains(msg, "same credentials") {
		t.Errorf("the WARN does not name the likely causes: %q", msg)
	}

	// One more per rejectRefill.
	clk.Advance(rejectRefill - 2*time.Second)
	fresh := revoke("after a refill")
	if fresh == nil {
		t.Fatalf("no replacement %v after the budget ran dry", rejectRefill)
	}
	cur = fresh
	if revoke("right after the refill") != nil {
		t.Fatal("two replacements within one refill period")
	}

	// Full again after a quiet spell: a new dry spell is logged again.
	clk.Advance(rejectBurst * rejectRefill)
	for range rejectBurst {
		if cur = revoke("new burst"); cur == nil {
			t.Fatal("the budget did not refill")
		}
	}
	if revoke("new dry spell") != nil {
		t.Fatal("replaced over the budget")
	}
	if n := len(logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("budget").All()); n != 2 {
		t.Errorf("%d WARNs after two dry spells, want 2", n)
	}
}

// A 401 never leaves the engine worse off: when the replacement cannot be
// fetched, the token it had stays in use until it expires, and the backoff
// holds further rejections back.
func TestEngineFailedReplacementKeepsTheCurrentToken(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok1 := mustGet(t, e)
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(http.StatusServiceUnavailable, "", ""))
	tok1.Accepted()
	if fresh := e.Replace(testCtx(t), tok1); fresh != nil {
		t.Fatalf("Replace = %q with the token endpoint down", fresh.Value)
	}
	for i := range 6 {
		clk.Advance(time.Second / 2)
		if got := mustGet(t, e); got != tok1 {
			t.Fatalf("request %d after the failed replacement got %q, want the token it had", i+1, got.Value)
		}
		e.Invalidate(tok1) // the next request's 401 (an attacker's path)
	}
	// The fetches that happened were the replacement and the backoff's
	// retries (1 s, 2 s …), never one per 401.
	if n := srv.count(); n > 3 {
		t.Errorf("%d token requests in 3 s of 401s with the endpoint down, want ≤ 3", n)
	}
	// Once it expires, the token is no longer served.
	clk.Advance(100 * time.Second)
	mustGetErr(t, e)
}

// An upstream that answers 401 to every token, under 200 requests/s for
// 10 s, replayed once each: at most about a dozen token requests.
func TestEngineUpstreamRejectingEverythingUnderLoad(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	mustGet(t, e)
	clk.BlockUntilTimers(1)
	for range 2000 { // 200/s for 10 s
		clk.Advance(5 * time.Millisecond)
		tok := mustGet(t, e)
		if fresh := e.Replace(testCtx(t), tok); fresh != nil {
			e.Invalidate(fresh) // the replay is rejected too; no second replay
		}
	}
	if n := srv.count(); n > 12 {
		t.Errorf("%d token requests in 10 s against an upstream rejecting every token, want ≤ 12", n)
	} else {
		t.Logf("%d token requests", n)
	}
}

// During a backoff after a failed fetch, a rejection does not bypass the
// backoff.
func TestEngineInvalidateWhileBackingOff(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok1 := mustGet(t, e)
	clk.BlockUntilTimers(1)
	srv.setRespond(answer(500, "", ""))
	clk.Advance(80 * time.Second) // refresh at 77.5s fails; retry in 1s
	clk.BlockUntilTimers(1)
	if n := srv.count(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
	tok1.Accepted()
	if e.Replace(testCtx(t), tok1) != nil {
		t.Fatal("Replace during a backoff found a token")
	}
	if got := mustGet(t, e); got != tok1 {
		t.Fatalf("the current token was dropped")
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("Invalidate during a backoff made a request")
	}
}
