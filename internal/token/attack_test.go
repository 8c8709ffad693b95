package token

import (
	"testing"
	"testing/synctest"
	"time"
)

// Issue 16, point 1, over a horizon no load test reaches: a client that
// sends a request every 4 s, for two hours, to a route that refuses any
// token (its 401s saying invalid_token), between other clients' requests
// that make every token work; 1 h tokens, refreshed after about 46 min;
// two genuine revocations, one seen first by the other clients, one first
// by the attacker's route.
//
//   - The route is learnt with one replay: the attacker's first request
//     costs one token request, its second none.
//   - From then on it costs one token request for each new token it meets
//     (a refresh or a revocation brought it; the route remembers the token
//     it refused), and never two requests in a row: at most one per new
//     token, well under one per 5 min.
//   - Every revocation is acted on at once, wherever it is seen first: the
//     dead token is replaced with no wait for a budget or a guard.
func TestEngineAttackerOverTwoHours(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		mustGet(t, s).Worked()
		const (
			denied  = "GET api.test /denied/x"
			good    = "GET api.test /v1.1/organizations"
			every   = 4 * time.Second
			horizon = 2 * time.Hour
		)
		start := time.Now()
		var (
			costs       []time.Duration // attacker requests that cost a token request
			others      int             // token requests the attacker did not cause
			revocations int
			prevCost    = -2 // index of the attacker request that cost last
		)
		// The revocations; the tokens are refreshed at about 66 and 113 min.
		revokeAt := []time.Duration{20 * time.Minute, 115 * time.Minute}
		for i := 0; time.Since(start) < horizon; i++ {
			tok := mustGet(t, s)
			if revocations < len(revokeAt) && time.Since(start) >= revokeAt[revocations] {
				// A genuine revocation: tok is dead from now on.
				revocations++
				before := srv.count()
				route := good // seen first by another client…
				if revocations%2 == 0 {
					route = denied // …or first by the attacker's route
				}
				fresh := s.Replace(t.Context(), Refusal{Token: tok, Route: route, Said: SaidInvalidToken})
				if fresh == nil {
					t.Fatalf("at %v, the revocation seen first on %s was not acted on", time.Since(start), route)
				}
				if route == denied {
					// The attacker's replay with the fresh token, refused.
					s.Rejected(Refusal{Token: fresh, Route: denied, Said: SaidInvalidToken, Replayed: true})
				}
				others += int(srv.count() - before)
				settle(every)
				continue
			}
			tok.Worked() // the other clients' requests
			before := srv.count()
			if fresh := s.Replace(t.Context(), Refusal{Token: tok, Route: denied, Said: SaidInvalidToken}); fresh != nil {
				// The replay with the fresh token, refused too.
				s.Rejected(Refusal{Token: fresh, Route: denied, Said: SaidInvalidToken, Replayed: true})
			}
			if n := int(srv.count() - before); n > 0 {
				if n > 1 {
					t.Errorf("at %v, one attacker request cost %d token requests", time.Since(start), n)
				}
				if prevCost == i-1 {
					t.Errorf("at %v, attacker requests %d and %d in a row cost a token request: the route was not learnt with one replay",
						time.Since(start), i, i+1)
				}
				costs = append(costs, time.Since(start))
				prevCost = i
			}
			mark := srv.count()
			settle(every)
			others += int(srv.count() - mark) // refreshes
		}
		t.Logf("the attacker's %v of requests every %v cost %d token requests, at %v; %d others (refreshes, %d revocations)",
			horizon, every, len(costs), costs, others, revocations)
		if len(costs) == 0 || costs[0] != 0 {
			t.Fatalf("the attacker's first request did not cost the one token request that learns the route: %v", costs)
		}
		// One to learn the route, then at most one per token it did not
		// cause (a refresh or a revocation).
		if len(costs) > 1+others {
			t.Errorf("the attacker cost %d token requests with %d new tokens from elsewhere, want ≤ %d", len(costs), others, 1+others)
		}
		if per5 := float64(len(costs)) / (horizon.Minutes() / 5); per5 > 1 {
			t.Errorf("the attacker cost %.2f token requests per 5 min, want ≤ 1", per5)
		}
		if revocations != len(revokeAt) || others < len(revokeAt)+2 {
			t.Errorf("%d revocations and %d token requests from elsewhere, want %d and at least %d (two refreshes)",
				revocations, others, len(revokeAt), len(revokeAt)+2)
		}
	})
}
