package deskoauth

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// This file is what an upstream 401 does to a source: the rejected token is
// replaced, within a budget for revocations of tokens that worked and a
// guard against upstreams that reject every token.

// Invalidate tells the engine that the upstream answered 401 to a request
// that carried tok. If tok is still the current token, a fetch of its
// replacement starts (or the one in flight is joined); tok stays in use until
// the replacement arrives, and, if that fetch fails, until tok expires: a 401
// never leaves the engine without a token it had. It never blocks.
//
// What a 401 may cost is bounded two ways. A token that has had a success
// (Accepted) and is then rejected was revoked: it is replaced at once, within
// a budget of rejectBurst token requests and then one per rejectRefill. A
// token that replaced a rejected one and is rejected before any success (an
// upstream that rejects every token, a wrong scope) is replaced only once it
// is 1 s old, then 2 s, 4 s … up to 1 min with each such replacement in a
// row; a success, a normal refresh or two quiet minutes reset that guard.
// During a backoff after a failed fetch nothing new starts.
func (e *tokenEngine) Invalidate(tok *accessToken) { e.reject(tok) }

// Replace is Invalidate followed by a wait for the replacement. It returns a
// valid token other than tok, or nil when none can be had now: the fetch
// failed, the budget or the guard held it back, or ctx ended.
func (e *tokenEngine) Replace(ctx context.Context, tok *accessToken) *accessToken {
	if tok == nil {
		return nil
	}
	var fresh *accessToken
	if c := e.reject(tok); c != nil {
		fresh, _ = e.wait(ctx, c)
	} else if cur := e.cur.Load(); cur != tok && cur.Valid(e.clock.Now()) {
		fresh = cur // another request replaced it already
	}
	if fresh == nil || fresh.Value == tok.Value {
		return nil
	}
	return fresh
}

// reject is Invalidate; it returns the fetch that replaces tok, if any.
func (e *tokenEngine) reject(tok *accessToken) *call {
	if tok == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur.Load() != tok {
		return nil // replaced already, or never served
	}
	if e.inflight != nil {
		return e.inflight // its token replaces tok
	}
	now := e.clock.Now()
	if e.lastErr != nil && now.Before(e.nextAttempt) {
		return nil // backing off: keep serving tok
	}
	if tok.proven.Load() || now.Sub(e.lastInvalidation) >= invalidateQuiet {
		e.invalidations = 0
	}
	if e.invalidations > 0 {
		guard := invalidateGuardMin << min(e.invalidations-1, 6)
		if now.Sub(tok.obtained) < min(guard, invalidateGuardMax) {
			return nil
		}
	}
	if ok, dry := e.budget.take(now); !ok {
		if dry {
			e.log.Warn("upstream keeps rejecting tokens that worked: the budget for 401-driven token requests is spent, "+
				"so rejected requests reach clients until it refills. Likely cause: something else holds the same credentials "+
				"(another proxy or app), or several instances without shared_cache against a token server that revokes "+
				"a client's earlier tokens; give each holder its own client, or use shared_cache",
				zap.Int("burst", rejectBurst), zap.Duration("refill", rejectRefill))
		}
		return nil
	}
	e.invalidations++
	e.lastInvalidation = now
	e.rejected = tok.Value
	tok.suspect.Store(true)
	e.log.Info("upstream rejected the current token; fetching a new one",
		zap.Int("attempt", e.invalidations), zap.Bool("had_succeeded", tok.proven.Load()))
	return e.startLocked(tok)
}

// rejectBudget is a token bucket over the token requests that upstream 401s
// cause for one credential set: rejectBurst at once, then one per
// rejectRefill. Its zero value is a full bucket. The engine's mutex guards
// it; it reads no clock of its own.
type rejectBudget struct {
	spent float64   // tokens taken and not yet refilled
	last  time.Time // when spent was last brought up to date
	dry   bool      // the bucket ran dry and has not been full since
}

// take spends one request from the budget at now. ok reports whether there
// was one; firstDry is true for the first refusal since the bucket was last
// full, so that a dry spell is logged once.
func (b *rejectBudget) take(now time.Time) (ok, firstDry bool) {
	b.refill(now)
	if b.spent <= rejectBurst-1 {
		b.spent++
		return true, false
	}
	firstDry = !b.dry
	b.dry = true
	return false, firstDry
}

// refund gives back a request that turned out to cost none.
func (b *rejectBudget) refund() { b.spent = max(b.spent-1, 0) }

func (b *rejectBudget) refill(now time.Time) {
	if !b.last.IsZero() {
		b.spent = max(b.spent-float64(now.Sub(b.last))/float64(rejectRefill), 0)
	}
	b.last = now
	if b.spent == 0 {
		b.dry = false // full again: the dry spell is over
	}
}
