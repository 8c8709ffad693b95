package token

import "time"

// This file is a source's schedule: when the next refresh or retry is due,
// the timer that wakes the source for it, and the backoff after failures.

// backoff returns how long to wait after the s.failures-th consecutive
// failure with err: exponential with ±20% jitter, slower for
// configuration problems (Kind.Misconfigured: refused credentials, a
// certificate that does not verify, a redirect), at least what a
// Retry-After asked for.
func (s *Source) backoff(err *Error) time.Duration {
	lo, hi := transientBackoffMin, transientBackoffMax
	if err.Kind.Misconfigured() {
		lo, hi = refusedBackoffMin, refusedBackoffMax
	}
	d := lo
	for i := 1; i < s.failures && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	d = time.Duration(float64(d) * (0.8 + 0.4*s.rand()))
	if err.RetryAfter > d {
		d = min(err.RetryAfter, retryAfterMax)
	}
	return d
}

// scheduleLocked arms the timer for the next refresh or retry, or stops it
// when there is none (no token and no failure yet, a fetch in flight, a
// closed source); s.mu is held.
func (s *Source) scheduleLocked() {
	if s.closed || s.flight != nil {
		s.timer.Stop()
		return
	}
	var at time.Time
	switch t := s.cur.Load(); {
	case s.lastErr != nil:
		at = s.nextAttempt
		if s.pollingLocked() {
			at = minTime(at, time.Now().Add(s.cfg.PollCredentials))
		}
	case t != nil:
		at = s.refreshAtLocked(t)
	default:
		s.timer.Stop()
		return
	}
	s.timer.Reset(max(time.Until(at), 0))
}

// wake is the timer's function: it starts the refresh or retry that is
// due, or one with credentials that changed while the token endpoint
// refused the ones before, or arms the timer again.
func (s *Source) wake() {
	s.mu.Lock()
	if s.closed || s.flight != nil {
		s.mu.Unlock()
		return
	}
	if s.dueLocked() {
		s.startLocked(false)
		s.mu.Unlock()
		return
	}
	poll, used := s.pollingLocked(), s.creds
	s.mu.Unlock()
	// The credentials are asked outside the lock: they may read files.
	changed := poll && s.cfg.Credentials.Current() != used
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.flight != nil {
		return
	}
	if changed && s.creds == used {
		s.startLocked(false)
		return
	}
	s.scheduleLocked()
}

// pollingLocked reports whether the credentials are polled: the token
// endpoint refused them and they may change; s.mu is held.
func (s *Source) pollingLocked() bool {
	return s.cfg.PollCredentials > 0 && s.lastErr != nil && s.lastErr.Kind == KindRefused
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// refreshAtLocked is when t is refreshed: at its refresh point, but never
// within minRefreshInterval of the last token request.
func (s *Source) refreshAtLocked(t *Token) time.Time {
	if floor := s.lastRequestAt.Add(minRefreshInterval); t.refreshAt.Before(floor) {
		return floor
	}
	return t.refreshAt
}

// dueLocked reports whether a fetch should start now.
func (s *Source) dueLocked() bool {
	now := time.Now()
	if s.lastErr != nil {
		return !now.Before(s.nextAttempt)
	}
	t := s.cur.Load()
	return t != nil && !now.Before(s.refreshAtLocked(t))
}
