package token

import (
	"sync/atomic"
	"time"
)

// Token is an access token held by a source. It is immutable once
// published, but for the mark that it worked.
type Token struct {
	// Value is the raw access token.
	Value string
	// obtained, expiry and usableUntil carry the monotonic clock reading.
	obtained time.Time
	expiry   time.Time
	// usableUntil is when the token stops being handed out: its safety
	// margin before expiry (see safetyMargin).
	usableUntil time.Time
	// wallExpiry is the wall-clock expiry, for status and metrics.
	wallExpiry time.Time
	// refreshAt is when the source replaces it (monotonic).
	refreshAt time.Time
	// granted is the scopes granted, as the answer or the JWT says ("" if
	// neither does).
	granted string
	// worked is set once the upstream answered a request that carried
	// the token with anything but 401: a later 401 then means a
	// revocation.
	worked atomic.Bool
	// watched is set once a route refused the token when it was fresh:
	// from then on wins counts the answers that were not 401, so that a
	// later refusal on that route can tell a token that still works
	// elsewhere from a dead one.
	watched atomic.Bool
	wins    atomic.Int64
}

// Worked records that the upstream answered a request carrying t with
// something other than 401. It is cheap enough for every request: a load,
// and a store the first time (and an add while a route watches it).
func (t *Token) Worked() {
	if !t.worked.Load() {
		t.worked.Store(true)
	}
	if t.watched.Load() {
		t.wins.Add(1)
	}
}

// newToken returns a token obtained at obtained that expires at expiry
// (both with the monotonic reading) and at wallExpiry on the wall clock.
func newToken(value string, obtained, expiry, wallExpiry time.Time) *Token {
	return &Token{
		Value:       value,
		obtained:    obtained,
		expiry:      expiry,
		wallExpiry:  wallExpiry,
		usableUntil: expiry.Add(-safetyMargin(expiry.Sub(obtained))),
	}
}

// safetyMargin is how long before its expiry a token of the given lifetime
// stops being used: 5% of its life, at most maxSafetyMargin. A request
// sent in the last moments of a token's life would reach the upstream with
// a dead token (transit, the token endpoint's clock, a late answer).
func safetyMargin(life time.Duration) time.Duration {
	return min(max(life, 0)/safetyMarginDivisor, maxSafetyMargin)
}

// Valid reports whether the token is usable at now: before its safety
// margin.
func (t *Token) Valid(now time.Time) bool { return t != nil && now.Before(t.usableUntil) }

// Expiry is when the token expires, on the wall clock.
func (t *Token) Expiry() time.Time { return t.wallExpiry }

// Granted is the scopes the token was granted, space-separated, as the
// token answer's scope field or else the JWT's scope or scp claim says;
// "" when neither says.
func (t *Token) Granted() string { return t.granted }
