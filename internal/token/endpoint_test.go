package token

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Sources that share an Endpoint never have more than its limit of token
// requests in flight: 30 sources warming up at once against a token
// endpoint that takes 200 ms send at most 8 at a time, in order, and all
// get their token within their timeout.
func TestEndpointLimitsTokenRequestsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var inFlight, peak atomic.Int64
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			cur := inFlight.Add(1)
			for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
			}
			time.Sleep(200 * time.Millisecond)
			inFlight.Add(-1)
			okToken(3600)(w, r, n)
		})
		ep := NewEndpoint(0) // the default
		var sources []*Source
		for range 30 {
			sources = append(sources, newTestSource(t, srv.tokenURL(), func(c *Config) { c.Endpoint = ep }))
		}
		start := time.Now()
		for _, s := range sources {
			s.WarmUp()
		}
		synctest.Wait()
		if got := inFlight.Load(); got != DefaultEndpointLimit {
			t.Fatalf("%d token requests in flight at once, want %d", got, DefaultEndpointLimit)
		}
		settle(time.Second)
		if p := peak.Load(); p != DefaultEndpointLimit {
			t.Fatalf("peak %d token requests in flight, want %d", p, DefaultEndpointLimit)
		}
		for i, s := range sources {
			if st := s.Status(); st.State != StateFresh {
				t.Fatalf("source %d: state %s", i, st.State)
			}
		}
		// 30 requests, 8 at a time, 200 ms each: 4 rounds.
		if d := time.Since(start); d != time.Second {
			t.Fatalf("the warm-up took %v, want 1s (4 rounds of 200 ms, then the settle)", d)
		}
		if n := srv.count(); n != 30 {
			t.Fatalf("%d token requests, want 30", n)
		}
	})
}

// A waiter whose fetch times out leaves the queue without a turn lost.
func TestEndpointWaiterTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ep := NewEndpoint(1)
		ctx := t.Context()
		if err := ep.acquire(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		wg.Go(func() {
			if err := ep.acquire(short); err == nil {
				t.Error("a waiter got a turn although the only one was held")
			}
		})
		got := make(chan struct{})
		wg.Go(func() {
			if err := ep.acquire(ctx); err != nil {
				t.Error(err)
			}
			close(got)
		})
		settle(100 * time.Millisecond) // past the first waiter's deadline
		ep.release()
		<-got
		ep.release()
		wg.Wait()
		ep.mu.Lock()
		defer ep.mu.Unlock()
		if ep.active != 0 || ep.waiting.Len() != 0 {
			t.Fatalf("active %d, waiting %d after everyone left", ep.active, ep.waiting.Len())
		}
	})
}

// A 429 or 503 with Retry-After pauses every source of the endpoint until
// then: the others send nothing, keep their valid tokens, and those
// without one fail fast with the time left.
func TestEndpointRetryAfterPausesEverySource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		ep := NewEndpoint(0)
		a := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Endpoint = ep })
		b := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Endpoint = ep })
		tokB := mustGet(t, b)
		srv.setRespond(answer(http.StatusTooManyRequests, "", "", "Retry-After", "30"))
		te := mustGetErr(t, a) // a's first request: 429, Retry-After 30
		if te.Status != http.StatusTooManyRequests {
			t.Fatalf("error %v", te)
		}
		srv.setRespond(okToken(100))
		n := srv.count()
		// b's refresh at 77.5 s is after the pause; force one now.
		if _, err := b.Refresh(t.Context()); err == nil {
			t.Fatal("b's refresh went out during the pause")
		}
		if got := mustGet(t, b); got != tokB {
			t.Fatal("b dropped its valid token during the pause")
		}
		te = mustGetErr(t, a)
		if te.RetryAfter <= 0 || te.RetryAfter > 30*time.Second {
			t.Fatalf("a fails with RetryAfter %v, want the time left of the pause", te.RetryAfter)
		}
		if got := srv.count(); got != n {
			t.Fatalf("%d token requests during the pause, want none", got-n)
		}
		settle(31 * time.Second) // a's retry, at the end of the pause
		if tok := mustGet(t, a); tok == nil {
			t.Fatal("no token after the pause")
		}
		// a's retry, and b's (its forced refresh failed), both when the
		// pause ended.
		if got := srv.count(); got != n+2 {
			t.Fatalf("%d token requests after the pause, want 2", got-n)
		}
	})
}

func TestEndpointLimitChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ep := NewEndpoint(1)
		_ = ep.acquire(t.Context())
		done := make(chan struct{}, 3)
		for range 3 {
			go func() { _ = ep.acquire(t.Context()); done <- struct{}{} }()
		}
		synctest.Wait()
		if len(done) != 0 {
			t.Fatal("a waiter got in past the limit")
		}
		ep.SetLimit(3)
		synctest.Wait()
		if len(done) != 2 {
			t.Fatalf("%d waiters let in when the limit grew to 3, want 2", len(done))
		}
		if got := fmt.Sprint(ep.Limit()); got != "3" {
			t.Fatalf("Limit = %s", got)
		}
		ep.release()
		<-done
		<-done
		<-done
	})
}
