package deskoauth

import "time"

// This file is the engine's schedule: the background refresher, when the
// next refresh or retry is due, and the backoff after failures.

// backoff returns how long to wait after the e.failures-th consecutive
// failure with err: exponential with ±20% jitter, slower for rejections, at
// least what a Retry-After asked for.
func (e *tokenEngine) backoff(err *tokenError) time.Duration {
	lo, hi := transientBackoffMin, transientBackoffMax
	if err.Kind == kindRejected {
		lo, hi = rejectedBackoffMin, rejectedBackoffMax
	}
	d := lo
	for i := 1; i < e.failures && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	d = time.Duration(float64(d) * (0.8 + 0.4*e.rand()))
	if err.RetryAfter > d {
		d = min(err.RetryAfter, retryAfterMax)
	}
	return d
}

// refresher is the background goroutine: it refreshes the token before it
// expires and retries failed fetches when their backoff ends.
func (e *tokenEngine) refresher() {
	defer close(e.exited)
	for {
		wait, ok := e.nextWake()
		var timerC <-chan time.Time
		var t timer
		if ok {
			t = e.clock.NewTimer(wait)
			timerC = t.C()
		}
		select {
		case <-e.stop:
			if t != nil {
				t.Stop()
			}
			return
		case <-e.kick:
			if t != nil {
				t.Stop()
			}
		case <-timerC:
			e.mu.Lock()
			if e.inflight == nil && e.dueLocked() {
				e.startLocked(nil)
			}
			e.mu.Unlock()
		}
	}
}

// nextWake says how long the refresher should sleep; ok is false when there
// is nothing to schedule (no token and no failure yet, or a fetch in
// flight, whose end kicks the refresher).
func (e *tokenEngine) nextWake() (time.Duration, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inflight != nil {
		return 0, false
	}
	now := e.clock.Now()
	if e.lastErr != nil {
		return max(e.nextAttempt.Sub(now), 0), true
	}
	t := e.cur.Load()
	if t == nil {
		return 0, false
	}
	return max(e.refreshAtLocked(t).Sub(now), 0), true
}

// refreshAtLocked is when t is refreshed: at its refresh point, but never
// within minRefreshInterval of the last token request.
func (e *tokenEngine) refreshAtLocked(t *accessToken) time.Time {
	if floor := e.lastRequestAt.Add(minRefreshInterval); t.refreshAt.Before(floor) {
		return floor
	}
	return t.refreshAt
}

// dueLocked reports whether a fetch should start now.
func (e *tokenEngine) dueLocked() bool {
	now := e.clock.Now()
	if e.lastErr != nil {
		return !now.Before(e.nextAttempt)
	}
	t := e.cur.Load()
	return t != nil && !now.Before(e.refreshAtLocked(t))
}
