package deskoauth

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// Issue 16, point 1, through Caddy: one client's requests to a route that
// answers 401 whatever the token (a resource-level refusal) must not cost
// the other clients, the token endpoint, or a genuine revocation anything.

// The attack: a slow token endpoint (2 s), and a client that sends 10
// requests, one after the other, to a path that refuses any token, with
// other clients' requests in between (so that each token it meets has
// worked). The stand-in's refusals say error="invalid_token", as a careless
// upstream's would (the worst case), or nothing, or name another error.
//
//   - The attacker costs at most 1 token request: its first 401 replaces
//     the token (it had worked: it may have been revoked), the replay with
//     the fresh token is refused too, so the route is remembered, and its
//     401s cost nothing from then on. A 401 that names another Bearer error
//     (insufficient_scope) costs nothing at all.
//   - Good GETs sent while a replacement the attacker caused is at the token
//     endpoint do not wait for it: each takes well under the endpoint's
//     delay.
//   - A genuine revocation after that, with the attacker still at it, costs
//     the good clients no error, and one token request.
func TestE2EARouteThatRefusesEveryTokenCostsOthersNothing(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		challenge string // the WWW-Authenticate of the route's 401s
		tokens    int64  // the token requests the attacker may cost
	}{
		{"says invalid_token", deskotest.InvalidTokenChallenge, 1},
		{"says nothing", "", 1},
		{"says insufficient_scope", `Bearer error="insufficient_scope", scope="admin"`, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const (
				delay    = 2 * time.Second // the token endpoint's: far beyond a good GET's time on a busy machine
				attacks  = 10
				perFetch = 4 // good GETs sent while a replacement is in flight
				goodPath = "/v1.1/organizations"
				denied   = deskotest.DeniedPrefix + "x"
			)
			e := newParallelE2E(t, time.Hour)
			e.desko.SetDeniedChallenge(tt.challenge)
			e.load("warm_up off")
			// get sends a GET through Caddy; it is safe in any goroutine.
			get := func(path string) (int, time.Duration, error) {
				start := time.Now()
				resp, err := e.client.Get(e.base + path)
				if err != nil {
					return 0, 0, err
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode, time.Since(start), err
			}
			good := func(what string) time.Duration {
				t.Helper()
				s, took, err := get(goodPath)
				if err != nil || s != 200 {
					t.Fatalf("%s: good GET: status %d, %v; want 200", what, s, err)
				}
				return took
			}
			good("warm-up")
			e.desko.SetDelay(delay)
			tokens0 := e.desko.TokenRequests()

			inFlight := 0             // good GETs sent while a replacement was in flight
			var slowest time.Duration // the slowest of them
			fetchesSeen := 0          // attacker requests that caused a token request
			statuses := map[int]int{} // the attacker's answers
			for i := range attacks {
				before := e.desko.TokenRequests()
				answer := make(chan int, 1)
				go func() {
					s, _, err := get(denied)
					if err != nil {
						t.Errorf("attacker request %d: %v", i+1, err)
					}
					answer <- s
				}()
				// Until its answer comes back, or a token request it
				// caused is at the token endpoint.
				status, answered := 0, false
				waitFor(t, "the attacker's answer or a token request", func() bool {
					select {
					case status = <-answer:
						answered = true
						return true
					default:
						return e.desko.TokenRequests() > before
					}
				})
				if !answered {
					fetchesSeen++
					for range perFetch {
						slowest = max(slowest, good("during the replacement the attacker caused"))
						inFlight++
					}
					status = waitChan(t, answer, "the attacker's answer")
				}
				statuses[status]++
				// The token now in use works for everyone else.
				good("after the attacker's request")
			}
			t.Logf("the attacker's %d requests: %d token requests; %d good GETs during its replacements, the slowest %v (token endpoint delay %v)",
				attacks, e.desko.TokenRequests()-tokens0, inFlight, slowest, delay)
			if statuses[http.StatusUnauthorized] != attacks {
				t.Errorf("the attacker's answers: %v, want %d × the upstream's 401", statuses, attacks)
			}
			if fetchesSeen == 0 && tt.tokens > 0 {
				t.Fatal("the attacker caused no token request at all: the test proves nothing about waiting")
			}
			if n := e.desko.TokenRequests() - tokens0; n > tt.tokens {
				t.Errorf("the attacker's %d requests cost %d token requests, want ≤ %d", attacks, n, tt.tokens)
			}
			if slowest >= delay/2 {
				t.Errorf("a good GET sent while the attacker's replacement was at the token endpoint took %v (of %d such GETs), "+
					"want < %v: it waited for the replacement (the endpoint takes %v)", slowest, inFlight, delay/2, delay)
			}
			if tt.tokens > 0 && inFlight < perFetch {
				t.Errorf("%d good GETs sent during a replacement, want at least %d", inFlight, perFetch)
			}

			// A genuine revocation now, while the attacker goes on: no good
			// request fails, and it costs one token request.
			tokensR := e.desko.TokenRequests()
			e.desko.RevokeAll()
			const workers, each = 8, 3
			var wg sync.WaitGroup
			var failed, attackerOther atomic.Int64
			var firstFailure atomic.Value // of the good requests
			for range workers {
				wg.Go(func() {
					for range each {
						if s, _, err := get(goodPath); err != nil || s != 200 {
							failed.Add(1)
							firstFailure.CompareAndSwap(nil, fmt.Sprintf("status %d, error %v", s, err))
						}
					}
				})
			}
			for range 2 {
				wg.Go(func() {
					if s, _, err := get(denied); err != nil || s != 401 {
						attackerOther.Add(1)
					}
				})
			}
			wg.Wait()
			if n := failed.Load(); n != 0 {
				t.Errorf("%d of %d good requests failed after a genuine revocation during the attack (the first: %v), want 0",
					n, workers*each, firstFailure.Load())
			}
			if n := attackerOther.Load(); n != 0 {
				t.Errorf("%d attacker requests got something else than the upstream's 401", n)
			}
			if n := e.desko.TokenRequests() - tokensR; n != 1 {
				t.Errorf("the revocation cost %d token requests, want 1", n)
			}
			if s, _, err := get(goodPath); err != nil || s != 200 {
				t.Fatalf("after the revocation: status %d, %v", s, err)
			}
			e.assertNoLeaks()
		})
	}
}
