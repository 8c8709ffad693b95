package token

import (
	"testing"
	"testing/synctest"
	"time"
)

// Issue 16, point 1, over a horizon no load test reaches: a client that
// sends a request every 4 s, for two hours, to a route that refuses any
// token (its 401s saying invalid_token), between other clients' requests
// that make every token work. Each time the route is learnt (two replays
// with a fresh token refused) it costs two token requests, and it is learnt
// again when its memory (routeMemory after the last strike) runs out: at
// most two token requests per routeMemory, one per 5 min. A genuine
// revocation seen on another route at any point is still replaced at once.
func TestEngineAttackerOverTwoHours(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		mustGet(t, s).Worked()
		const (
			denied  = "GET api.test /denied/x"
			every   = 4 * time.Second
			horizon = 2 * time.Hour
		)
		start := time.Now()
		var costs []time.Duration // when the attacker's requests cost a token request
		for time.Since(start) < horizon {
			tok := mustGet(t, s)
			tok.Worked() // the other clients' requests
			before := srv.count()
			if fresh := s.Replace(t.Context(), Refusal{Token: tok, Route: denied, Said: SaidInvalidToken}); fresh != nil {
				// The replay with the fresh token, refused too.
				s.Rejected(Refusal{Token: fresh, Route: denied, Said: SaidInvalidToken, Replayed: true})
			}
			if srv.count() == before {
				settle(every)
				continue
			}
			costs = append(costs, time.Since(start))
			if len(costs)%2 == 0 {
				// Just learnt again: a revocation now, seen on another
				// route, still costs one token request at once.
				tok := mustGet(t, s)
				tok.Worked()
				if fresh := s.Replace(t.Context(), Refusal{Token: tok, Route: "GET api.test /ok", Said: SaidInvalidToken}); fresh == nil {
					t.Fatalf("at %v, a revocation seen on another route was not replaced", time.Since(start))
				}
			}
			settle(every)
		}
		limit := 2 * int((horizon+routeMemory-1)/routeMemory)
		t.Logf("the attacker's %v of requests every %v cost %d token requests, at %v", horizon, every, len(costs), costs)
		if len(costs) > limit {
			t.Errorf("the attacker cost %d token requests in %v, want ≤ %d (two per %v): %v", len(costs), horizon, limit, routeMemory, costs)
		}
		if per5 := float64(len(costs)) / (horizon.Minutes() / 5); per5 > 1 {
			t.Errorf("the attacker cost %.2f token requests per 5 min, want ≤ 1", per5)
		}
		if len(costs) < 2 || costs[1] > every {
			t.Errorf("the route was not learnt within its first two requests: costs at %v", costs)
		}
	})
}
