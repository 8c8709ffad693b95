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

		s.Rejected(Refusal{}) // no-op, no panic
		if s.Replace(t.Context(), Refusal{}) != nil {
			t.Fatal("Replace(nil) returned a token")
		}
		assertNoFetchStarted(t, s, "Rejected(nil)", tok1)

		// The first rejection replaces the token at once, however new it is.
		// Many requests rejected with the same token share one fetch, and new
		// requests wait for it rather than take the token just rejected.
		release := srv.holdRequests(t)
		s.Rejected(Refusal{Token: tok1})
		synctest.Wait()
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests after the rejection, want 2", n)
		}
		var wg sync.WaitGroup
		got := make(chan *Token, 20)
		for i := range 20 {
			wg.Go(func() {
				if i%2 == 0 {
					got <- s.Replace(t.Context(), Refusal{Token: tok1})
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
		if fresh := s.Replace(t.Context(), Refusal{Token: tok1}); fresh != tok2 {
			t.Fatalf("Replace(replaced token) = %v, want the current tok-2", fresh)
		}
		assertNoFetchStarted(t, s, "rejecting a replaced token", tok2)
		s.Rejected(Refusal{Token: tok1})
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
			if s.Replace(t.Context(), Refusal{Token: cur}) != nil {
				t.Fatalf("%s, brand new: replaced", step)
			}
			assertNoFetchStarted(t, s, step+", brand new", cur)
			settle(guard - time.Nanosecond)
			s.Rejected(Refusal{Token: cur})
			assertNoFetchStarted(t, s, fmt.Sprintf("%s, 1ns under %v old", step, guard), cur)
			settle(time.Nanosecond)
			cur = replaced(fmt.Sprintf("%s, %v old", step, guard), cur)
		}

		// Two quiet minutes reset the guard.
		settle(guardQuiet)
		cur = replaced("after a quiet period", cur)
		s.Rejected(Refusal{Token: cur})
		assertNoFetchStarted(t, s, "after a quiet period, second replacement, brand new", cur)
		settle(time.Second)
		cur = replaced("after a quiet period, second replacement, 1s old", cur)

		// So does a success: the token worked, so a 401 now is a
		// revocation, acted on at once.
		cur.Worked()
		cur = replaced("after a success", cur)

		// … and a normal refresh.
		s.Rejected(Refusal{Token: cur})
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
			return s.Replace(t.Context(), Refusal{Token: cur})
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
			s.Rejected(Refusal{Token: cur})
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
		if s.Replace(t.Context(), Refusal{Token: next}) != nil {
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
		s.Rejected(Refusal{Token: tok1}) // the replacement starts, and is held
		replaced := make(chan *Token, 1)
		go func() { replaced <- s.Replace(t.Context(), Refusal{Token: tok1}) }()
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
			s.Rejected(Refusal{Token: tok1}) // the next request's 401 (an attacker's path)
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
			if fresh := s.Replace(t.Context(), Refusal{Token: tok}); fresh != nil {
				s.Rejected(Refusal{Token: fresh}) // the replay is rejected too; no second replay
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
		if s.Replace(t.Context(), Refusal{Token: tok1}) != nil {
			t.Fatal("Replace during a backoff found a token")
		}
		s.Rejected(Refusal{Token: tok1})
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

// A 401 whose upstream named another Bearer error is about the request,
// not the token: it costs nothing, and Replace finds nothing.
func TestEngineRefusalThatNamesAnotherError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		tok := mustGet(t, s)
		tok.Worked()
		for range 20 {
			if s.Replace(t.Context(), Refusal{Token: tok, Route: "GET h /a", Said: SaidOther}) != nil {
				t.Fatal("Replace found a token for a refusal that named another error")
			}
			s.Rejected(Refusal{Token: tok, Route: "GET h /a", Said: SaidOther})
		}
		synctest.Wait()
		assertNoFetchStarted(t, s, "SaidOther", tok)
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
}

// A route that refused a fresh token on a replay refuses for reasons of
// its own: its later refusals of that token cost no token request while
// the token works elsewhere, whatever the upstream says; other routes'
// 401s still replace the token, and the next token costs one request to
// learn again. A token that works nowhere since the route's last refusal
// (revoked after the replay) is replaced as any other.
func TestEngineRouteThatRefusesFreshTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		mustGet(t, s).Worked()
		const denied = "GET api.test /denied/x"
		// An attacker's request to the denied route, while good requests
		// keep working elsewhere.
		attack := func() *Token {
			tok := mustGet(t, s)
			tok.Worked() // a good request on another route
			fresh := s.Replace(t.Context(), Refusal{Token: tok, Route: denied, Said: SaidInvalidToken})
			if fresh != nil {
				s.Rejected(Refusal{Token: fresh, Route: denied, Said: SaidInvalidToken, Replayed: true})
			}
			return fresh
		}
		if attack() == nil {
			t.Fatal("the first refusal on the route was not replayed with a fresh token")
		}
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests after the first attack, want 2", n)
		}
		for i := range 50 {
			settle(time.Second)
			if attack() != nil {
				t.Fatalf("refusal %d of a working token on a route that refused it fresh was replayed", i+2)
			}
		}
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests after the route was known, want 2", n)
		}
		// A genuine revocation, seen on another route, is still acted on;
		// the denied route then costs one request to learn the new token.
		tok := mustGet(t, s)
		if fresh := s.Replace(t.Context(), Refusal{Token: tok, Route: "GET api.test /ok"}); fresh == nil {
			t.Fatal("a refusal on another route was not replaced")
		}
		if attack() == nil || attack() != nil {
			t.Fatal("the route did not learn the new token with one replay")
		}
		if n := srv.count(); n != 4 {
			t.Fatalf("%d token requests, want 4", n)
		}

		// The token refused on the replay works nowhere afterwards (it was
		// revoked right after its fetch): the route's next refusal of it
		// replaces it.
		dead := mustGet(t, s)
		dead.Worked()
		fresh := s.Replace(t.Context(), Refusal{Token: dead, Route: "GET api.test /only"})
		s.Rejected(Refusal{Token: fresh, Route: "GET api.test /only", Replayed: true})
		settle(time.Second)
		if again := s.Replace(t.Context(), Refusal{Token: fresh, Route: "GET api.test /only"}); again == nil {
			t.Fatal("a token that worked nowhere since the route refused it was not replaced")
		}
	})
}

// The route memory is bounded: past maxRoutes the route with the least
// time left is forgotten first.
func TestRouteMemoryIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rs routes
		tok := &Token{}
		for i := range maxRoutes + 10 {
			rs.refusedFresh(fmt.Sprintf("GET h /%d", i), tok)
			time.Sleep(time.Millisecond)
		}
		if n := len(rs.m); n != maxRoutes {
			t.Fatalf("%d routes remembered, want %d", n, maxRoutes)
		}
		tok.watched.Store(true)
		tok.Worked()
		if rs.refuses("GET h /0", tok) || !rs.refuses(fmt.Sprintf("GET h /%d", maxRoutes+9), tok) {
			t.Fatal("the oldest route was kept or the newest forgotten")
		}
	})
}

// While the token is being replaced after a 401, a request that could be
// replayed goes on with the current token (the 401 may have been about
// another request); one that could not waits for the replacement. A 401
// during a refresh in flight makes that refresh the replacement.
func TestEngineWhoWaitsForAReplacement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		s := newTestSource(t, srv.tokenURL())
		tok1 := mustGet(t, s)
		tok1.Worked()
		release := srv.holdRequests(t)
		s.Rejected(Refusal{Token: tok1, Route: "GET h /a"})
		synctest.Wait()
		if got, err := s.GetReplayable(t.Context()); err != nil || got != tok1 {
			t.Fatalf("GetReplayable = %v, %v during the replacement; want the current token at once", got, err)
		}
		waiting := make(chan *Token, 1)
		go func() { tok, _ := s.Get(t.Context()); waiting <- tok }()
		synctest.Wait()
		if len(waiting) != 0 {
			t.Fatal("Get did not wait for the replacement")
		}
		release()
		if got := <-waiting; got == tok1 || got.Value != "tok-2" {
			t.Fatalf("Get = %v, want tok-2", got)
		}

		// A refresh in flight that a 401 catches up with.
		tok2 := mustGet(t, s)
		tok2.Worked()
		release = srv.holdRequests(t)
		settle(78 * time.Second) // the refresh at 77.5 s starts, and is held
		if st := s.Status(); st.State != StateRefreshing {
			t.Fatalf("state %s, want refreshing", st.State)
		}
		if got := mustGet(t, s); got != tok2 {
			t.Fatal("Get waited for a plain refresh")
		}
		s.Rejected(Refusal{Token: tok2, Route: "GET h /a"})
		go func() { tok, _ := s.Get(t.Context()); waiting <- tok }()
		synctest.Wait()
		if len(waiting) != 0 {
			t.Fatal("Get did not wait for the refresh that now replaces a rejected token")
		}
		release()
		if got := <-waiting; got == tok2 {
			t.Fatal("Get returned the rejected token")
		}
		if n := srv.count(); n != 3 {
			t.Fatalf("%d token requests, want 3 (the refresh replaced the token)", n)
		}
	})
}
