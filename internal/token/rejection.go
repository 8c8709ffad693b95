package token

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// This file is what an upstream 401 does to a source: the rejected token is
// replaced, within a budget for revocations of tokens that worked and a
// guard against upstreams that reject every token, unless what the
// upstream said, or what it did with a fresh token, shows that the 401 was
// not about the token.

// Signal is what an upstream said about a token it answered 401 to: the
// error of its Bearer challenge in WWW-Authenticate (RFC 6750 §3.1).
type Signal uint8

// The signals of a 401.
const (
	// SaidNothing: no Bearer error. The 401 may be about the token or
	// about the request.
	SaidNothing Signal = iota
	// SaidInvalidToken: error="invalid_token": the token is expired,
	// revoked or otherwise dead.
	SaidInvalidToken
	// SaidOther: another Bearer error (insufficient_scope,
	// invalid_request…): the request was refused, not the token.
	SaidOther
)

// Refusal is an upstream 401 to a request that carried a token.
type Refusal struct {
	// Token is the token the request carried.
	Token *Token
	// Route is where the request went (its method, host and path).
	Route string
	// Said is what the upstream said about the token.
	Said Signal
	// Replayed is set when the request was a replay with a token newer than
	// the one first refused on it: the route refused a fresh token too.
	Replayed bool
}

// Rejected tells the source that the upstream answered 401 to a request
// that carried r.Token. If that token is still the current one, a fetch of
// its replacement starts (or the one in flight is joined); the token stays
// in use until the replacement arrives, and, if that fetch fails, until it
// expires: a 401 never leaves the source without a token it had. It never
// blocks.
//
// A 401 that is not about the token costs nothing: one whose upstream
// named another error (SaidOther), and one on a route that refused this
// very token on a replay when it was fresh, while the token works
// elsewhere (routes.go), whatever the upstream said.
//
// What any other 401 may cost is bounded two ways. A token that worked and
// is then rejected was revoked: it is replaced at once, within a budget of
// revocationBurst token requests and then one per revocationEvery. A token
// that replaced a rejected one and is rejected before it worked (an
// upstream that rejects every token, a wrong scope) is replaced only once
// it is 1 s old, then 2 s, 4 s … up to 1 min with each such replacement in
// a row; a success, a normal refresh or two quiet minutes reset that
// guard. A replacement adopted from the store costs neither. During a
// backoff after a failed fetch nothing new starts.
func (s *Source) Rejected(r Refusal) { s.replace(r) }

// Replace is Rejected followed by a wait for the replacement. It returns a
// valid token other than r.Token, or nil when none can be had now: the 401
// was not about the token, the fetch failed, the budget or the guard held
// it back, or ctx ended.
func (s *Source) Replace(ctx context.Context, r Refusal) *Token {
	if r.Token == nil {
		return nil
	}
	var fresh *Token
	if f := s.replace(r); f != nil {
		fresh, _ = f.wait(ctx)
	} else if cur := s.cur.Load(); cur != r.Token && cur.Valid(time.Now()) && r.Said != SaidOther {
		fresh = cur // another request replaced it already
	}
	if fresh == nil || fresh.Value == r.Token.Value {
		return nil
	}
	return fresh
}

// replace is Rejected; it returns the fetch that replaces the token, if
// any.
func (s *Source) replace(r Refusal) *flight {
	tok := r.Token
	if tok == nil || r.Said == SaidOther {
		return nil
	}
	if r.Replayed {
		if s.routes.refusedFresh(r.Route, tok) {
			s.log.Info("a route refused a fresh token too: its refusals of that token no longer count while it works elsewhere",
				zap.String("route", r.Route), zap.Duration("for", routeMemory))
		}
		return nil
	}
	if s.routes.refuses(r.Route, tok) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != tok {
		return nil // replaced already, or never served
	}
	if f := s.flight; f != nil {
		// Its token replaces tok: a refresh in flight now replaces it too.
		f.replacing = true
		s.rejected.Store(tok)
		return f
	}
	now := time.Now()
	if s.lastErr != nil && now.Before(s.nextAttempt) {
		return nil // backing off: keep serving tok
	}
	if tok.worked.Load() || now.Sub(s.guard.last) >= guardQuiet {
		s.guard.reset()
	}
	if !s.guard.allows(tok, now) {
		return nil
	}
	tokens := s.budget.TokensAt(now)
	if tokens >= revocationBurst {
		s.budgetDry = false // full again: a dry spell is over
	}
	if tokens < 1 {
		if !s.budgetDry {
			s.budgetDry = true
			s.log.Warn("upstream keeps rejecting tokens that worked: the budget for 401-driven token requests is spent, "+
				"so rejected requests reach clients until it refills. Likely cause: something else holds the same credentials "+
				"(another proxy or app), or several instances without shared_cache against a token server that revokes "+
				"a client's earlier tokens; give each holder its own client, or use shared_cache",
				zap.Int("burst", revocationBurst), zap.Duration("refill", revocationEvery))
		}
		return nil
	}
	s.rejected.Store(tok)
	s.log.Info("upstream rejected the current token; fetching a new one",
		zap.Int("attempt", s.guard.n+1), zap.Bool("had_worked", tok.worked.Load()),
		zap.Bool("invalid_token", r.Said == SaidInvalidToken))
	return s.startLocked(true)
}

// chargeReplacement counts a token request that replaces a rejected token
// against the budget and the guard; it is called only when the request is
// sent (a token adopted from the store costs nothing).
func (s *Source) chargeReplacement() {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.budget.AllowN(now, 1)
	s.guard.n++
	s.guard.last = now
}

// guard counts the tokens replaced in a row after 401s, to slow down the
// replacements of tokens that never worked.
type guard struct {
	n    int       // replacements in a row
	last time.Time // the last one
}

func (g *guard) reset() { g.n = 0 }

// allows reports whether tok, rejected at now, may be replaced: always
// after a reset, else once it is old enough.
func (g *guard) allows(tok *Token, now time.Time) bool {
	if g.n == 0 {
		return true
	}
	wait := guardMin << min(g.n-1, 6)
	return now.Sub(tok.obtained) >= min(wait, guardMax)
}
