package token

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// This file is what an upstream 401 does to a source: the rejected token is
// replaced, within a budget for revocations of tokens that worked and a
// guard against upstreams that reject every token.

// Rejected tells the source that the upstream answered 401 to a request
// that carried tok. If tok is still the current token, a fetch of its
// replacement starts (or the one in flight is joined); tok stays in use until
// the replacement arrives, and, if that fetch fails, until tok expires: a 401
// never leaves the source without a token it had. It never blocks.
//
// What a 401 may cost is bounded two ways. A token that worked and is then
// rejected was revoked: it is replaced at once, within a budget of
// revocationBurst token requests and then one per revocationEvery. A
// token that replaced a rejected one and is rejected before it worked (an
// upstream that rejects every token, a wrong scope) is replaced only once
// it is 1 s old, then 2 s, 4 s … up to 1 min with each such replacement in
// a row; a success, a normal refresh or two quiet minutes reset that
// guard. A replacement adopted from the store costs neither. During a
// backoff after a failed fetch nothing new starts.
func (s *Source) Rejected(tok *Token) { s.replace(tok) }

// Replace is Rejected followed by a wait for the replacement. It returns a
// valid token other than tok, or nil when none can be had now: the fetch
// failed, the budget or the guard held it back, or ctx ended.
func (s *Source) Replace(ctx context.Context, tok *Token) *Token {
	if tok == nil {
		return nil
	}
	var fresh *Token
	if f := s.replace(tok); f != nil {
		fresh, _ = f.wait(ctx)
	} else if cur := s.cur.Load(); cur != tok && cur.Valid(time.Now()) {
		fresh = cur // another request replaced it already
	}
	if fresh == nil || fresh.Value == tok.Value {
		return nil
	}
	return fresh
}

// replace is Rejected; it returns the fetch that replaces tok, if any.
func (s *Source) replace(tok *Token) *flight {
	if tok == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != tok {
		return nil // replaced already, or never served
	}
	if s.flight != nil {
		return s.flight // its token replaces tok
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
		zap.Int("attempt", s.guard.n+1), zap.Bool("had_worked", tok.worked.Load()))
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
