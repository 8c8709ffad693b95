package token

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// What an upstream 401 does to a source (Rejected, Replace): the budget,
// the guard against upstreams that reject every token, and that a 401
// never leaves the source without the token it had. All in bubbles.

// assertNoFetchStarted checks that the Rejected or Replace just made
// started nothing: either starts its fetch before it returns, so one would
// show right now as state refreshing.
func assertNoFetchStarted(t *testing.T, s *Source, step string, want *Token) {
	t.Helper()
	if st := s.Status(); st.State != StateFresh {
		t.Fatalf("%s: state %s, want fresh (no fetch)", step, st.State)
	}
	if p := peek(s); p != want {
		t.Fatalf("%s: peek = %v, want %q", step, p, want.Value)
	}
}

func TestEngineRejectedReplacesAndSharesOneFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		tok1 := mustGet(t, s)

		s.Rejected(nil) // no-op, no panic
		if s.Replace(t.Context(), nil) != nil {
			t.Fatal("Replace(nil) returned a token")
		}
		assertNoFetchStarted(t, s, "Rejected(nil)", tok1)

		// The first rejection replaces the token at once, however new it is.
		// Many requests rejected with the same token share one fetch, and new
		// requests wait for it rather than take the token just rejected.
		release := srv.holdRequests(t)
		s.Rejected(tok1)
		synctest.Wait()
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests after the rejection, want 2", n)
		}
		var wg sync.WaitGroup
		got := make(chan *Token, 20)
		for i := range 20 {
			wg.Go(func() {
				if i%2 == 0 {
					got <- s.Replace(t.Context(), tok1)
					return
				}
				tok, err := s.Get(t.Context())
				if err != nil {
					t.Errorf("Get: %v", err)
				}
				got <- tok
			})
		}
		synctest.Wait() // all 20 wait for the replacement
		if n := len(got); n != 0 {
			t.Fatalf("%d requests returned before the replacement came (the rejected token?)", n)
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
		tok2 := mustGet(t, s)

		// A rejection of a token that was already replaced starts nothing, and
		// Replace answers the newer token.
		if fresh := s.Replace(t.Context(), tok1); fresh != tok2 {
			t.Fatalf("Replace(replaced token) = %v, want the current tok-2", fresh)
		}
		assertNoFetchStarted(t, s, "rejecting a replaced token", tok2)
		s.Rejected(tok1)
		assertNoFetchStarted(t, s, "rejecting a replaced token again", tok2)
	})
}

// An upstream that rejects every token: a replacement rejected before it
// worked is replaced only once it is 1 s old, then 2 s, 4 s … up to 1 min;
// a success, a normal refresh or two quiet minutes reset that guard.
func TestEngineGuardForTokensRejectedBeforeAnySuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		cur := mustGet(t, s)

		replaced := func(step string, tok *Token) *Token {
			t.Helper()
			before := srv.count()
			next := mustReplace(t, s, tok)
			if n := srv.count(); n != before+1 {
				t.Fatalf("%s: %d token requests, want 1", step, n-before)
			}
			return next
		}
		cur = replaced("first rejection", cur)
		// The budget (revocationBurst, then one per revocationEvery) is
		// never what holds these back: the guard's steps are slower.
		for i, guard := range []time.Duration{1, 2, 4, 8, 16, 32, 60, 60} {
			guard *= time.Second
			step := fmt.Sprintf("replacement %d", i+1)
			if s.Replace(t.Context(), cur) != nil {
				t.Fatalf("%s, brand new: replaced", step)
			}
			assertNoFetchStarted(t, s, step+", brand new", cur)
			settle(guard - time.Nanosecond)
			s.Rejected(cur)
			assertNoFetchStarted(t, s, fmt.Sprintf("%s, 1ns under %v old", step, guard), cur)
			settle(time.Nanosecond)
			cur = replaced(fmt.Sprintf("%s, %v old", step, guard), cur)
		}

		// Two quiet minutes reset the guard.
		settle(guardQuiet)
		cur = replaced("after a quiet period", cur)
		s.Rejected(cur)
		assertNoFetchStarted(t, s, "after a quiet period, second replacement, brand new", cur)
		settle(time.Second)
		cur = replaced("after a quiet period, second replacement, 1s old", cur)

		// So does a success: the token worked, so a 401 now is a
		// revocation, acted on at once.
		cur.Worked()
		cur = replaced("after a success", cur)

		// … and a normal refresh.
		s.Rejected(cur)
		assertNoFetchStarted(t, s, "second replacement in a row, brand new", cur)
		cur, err := s.Refresh(t.Context())
		if err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		replaced("after a normal refresh", cur)
	})
}

// Revocations of tokens that worked are acted on at once: revocationBurst
// of them in a row, then one per revocationEvery; when the budget runs
// dry, one WARN names the likely cause, and the current token stays in
// use.
func TestEngineRevocationBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		core, logs := observer.New(zapcore.InfoLevel)
		s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Logger = zap.New(core) })
		cur := mustGet(t, s)

		revoke := func() *Token {
			t.Helper()
			cur.Worked()
			return s.Replace(t.Context(), cur)
		}
		budgetWarns := func() int {
			return len(logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("budget").All())
		}
		// revocationBurst revocations within 10 s: each replaced at once,
		// however young the token.
		for i := range revocationBurst {
			settle(time.Second)
			fresh := revoke()
			if fresh == nil {
				t.Fatalf("revocation %d within %v was not replaced", i+1, time.Duration(i+1)*time.Second)
			}
			cur = fresh
		}
		if n := srv.count(); n != 1+revocationBurst {
			t.Fatalf("%d token requests, want %d", n, 1+revocationBurst)
		}

		// The budget is spent: the next revocation is not acted on, the token
		// stays in use, and one WARN says why.
		settle(time.Second)
		if revoke() != nil {
			t.Fatal("a revocation over the budget was replaced")
		}
		assertNoFetchStarted(t, s, "over the budget", cur)
		settle(time.Second)
		if revoke() != nil {
			t.Fatal("a second revocation over the budget was replaced")
		}
		warns := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("budget").All()
		if len(warns) != 1 {
			t.Fatalf("%d WARNs about the spent budget, want 1 per dry spell", len(warns))
		}
		if msg := warns[0].Message; !strings.Contains(msg, "shared_cache") || !strings.Contains(msg, "same credentials") {
			t.Errorf("the WARN does not name the likely causes: %q", msg)
		}
		if m := warns[0].ContextMap(); m["burst"] != int64(revocationBurst) || m["refill"] != revocationEvery {
			t.Errorf("the WARN's fields = %v, want the burst and the refill", m)
		}
		if n := srv.count(); n != 1+revocationBurst {
			t.Fatalf("%d token requests over the budget, want none", n-1-revocationBurst)
		}

		// One more per revocationEvery.
		settle(revocationEvery - 2*time.Second)
		fresh := revoke()
		if fresh == nil {
			t.Fatalf("no replacement %v after the budget ran dry", revocationEvery)
		}
		cur = fresh
		if revoke() != nil {
			t.Fatal("two replacements within one refill period")
		}
		if n := budgetWarns(); n != 1 {
			t.Errorf("%d WARNs within one dry spell, want 1", n)
		}

		// Full again after a quiet spell: a new dry spell is logged again.
		settle(revocationBurst * revocationEvery)
		for range revocationBurst {
			if cur = revoke(); cur == nil {
				t.Fatal("the budget did not refill")
			}
		}
		if revoke() != nil {
			t.Fatal("replaced over the budget")
		}
		if n := budgetWarns(); n != 2 {
			t.Errorf("%d WARNs after two dry spells, want 2", n)
		}
		if n := srv.count(); n != 1+2*revocationBurst+1 {
			t.Errorf("%d token requests, want %d", n, 1+2*revocationBurst+1)
		}
	})
}

// The budget is charged when a replacement sends its token request: many
// 401s for one token cost one request, and a replacement that fails is
// charged like one that succeeds (there is no refund).
func TestEngineRevocationBudgetChargedPerRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		cur := mustGet(t, s)
		full := s.budget.TokensAt(time.Now())
		if full != revocationBurst {
			t.Fatalf("a new source's budget holds %v, want %d", full, revocationBurst)
		}
		// Many 401s for one token while its replacement is held: one request.
		release := srv.holdRequests(t)
		cur.Worked()
		for range 10 {
			s.Rejected(cur)
		}
		synctest.Wait()
		if left := s.budget.TokensAt(time.Now()); left != revocationBurst-1 {
			t.Fatalf("10 rejections of one token spent %v of the budget, want 1", revocationBurst-left)
		}
		release()
		next := mustGet(t, s)
		if next == cur || srv.count() != 2 {
			t.Fatalf("after the replacement Get = %q with %d requests", next.Value, srv.count())
		}
		// A replacement that fails is charged too.
		srv.setRespond(answer(503, "", ""))
		next.Worked()
		if s.Replace(t.Context(), next) != nil {
			t.Fatal("Replace succeeded against a failing endpoint")
		}
		if left := s.budget.TokensAt(time.Now()); left != revocationBurst-2 {
			t.Fatalf("after a failed replacement the budget holds %v, want %d", left, revocationBurst-2)
		}
	})
}

// A 401 never leaves the source worse off: when the replacement cannot be
// fetched, the token it had stays in use until it expires, and the backoff
// holds further rejections back.
func TestEngineFailedReplacementKeepsTheCurrentToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())
		tok1 := mustGet(t, s)

		srv.setRespond(answer(http.StatusServiceUnavailable, "", ""))
		tok1.Worked()
		// Requests that wait for the replacement get the token they had
		// when it fails.
		release := srv.holdRequests(t)
		s.Rejected(tok1) // the replacement starts, and is held
		replaced := make(chan *Token, 1)
		go func() { replaced <- s.Replace(t.Context(), tok1) }()
		waiting := make(chan *Token, 1)
		go func() {
			tok, _ := s.Get(t.Context()) // nil on an error
			waiting <- tok
		}()
		synctest.Wait()
		if len(replaced)+len(waiting) != 0 || srv.count() != 2 {
			t.Fatalf("requests did not wait for the replacement (%d token requests)", srv.count())
		}
		release()
		if fresh := <-replaced; fresh != nil {
			t.Fatalf("Replace = %q with the token endpoint down", fresh.Value)
		}
		if got := <-waiting; got != tok1 {
			t.Fatalf("a request that waited for the failed replacement got %v, want the token it had", got)
		}
		for i := range 6 {
			settle(time.Second / 2)
			if got := mustGet(t, s); got != tok1 {
				t.Fatalf("request %d after the failed replacement got %q, want the token it had", i+1, got.Value)
			}
			s.Rejected(tok1) // the next request's 401 (an attacker's path)
		}
		synctest.Wait()
		// The fetches that happened were the replacement and the
		// backoff's retries (1 s, 2 s later), never one per 401.
		assertArrivals(t, srv, start, secs(0, 0, 1, 3))
		// Once it expires, the token is no longer served.
		settle(100 * time.Second)
		mustGetErr(t, s)
	})
}

// An upstream that answers 401 to every token, under 200 requests/s for
// 10 s, replayed once each: the first rejection is acted on at once, the
// guard then lets a replacement through at 1 s, 3 s and 7 s: 5 token
// requests (at most about a dozen was the bound before the clock was
// exact).
func TestEngineUpstreamRejectingEverythingUnderLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		mustGet(t, s)
		for range 2000 { // 200/s for 10 s
			settle(5 * time.Millisecond)
			tok := mustGet(t, s)
			if fresh := s.Replace(t.Context(), tok); fresh != nil {
				s.Rejected(fresh) // the replay is rejected too; no second replay
			}
		}
		assertArrivals(t, srv, start, secs(0, 0.005, 1.005, 3.005, 7.005))
	})
}

// During a backoff after a failed fetch, a rejection does not bypass the
// backoff.
func TestEngineRejectedWhileBackingOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())
		tok1 := mustGet(t, s)
		srv.setRespond(answer(500, "", ""))
		settle(78 * time.Second) // the refresh at 77.5s fails; the retry is at 78.5s
		if n := srv.count(); n != 2 {
			t.Fatalf("%d requests, want 2", n)
		}
		tok1.Worked()
		if s.Replace(t.Context(), tok1) != nil {
			t.Fatal("Replace during a backoff found a token")
		}
		s.Rejected(tok1)
		if got := mustGet(t, s); got != tok1 {
			t.Fatalf("the current token was dropped")
		}
		synctest.Wait()
		if n := srv.count(); n != 2 {
			t.Fatalf("a rejection during a backoff made a request")
		}
		if left := s.budget.TokensAt(time.Now()); left != revocationBurst {
			t.Fatalf("a rejection during a backoff spent %v of the budget", revocationBurst-left)
		}
	})
}
