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
	// obtained and expiry carry the monotonic clock reading.
	obtained time.Time
	expiry   time.Time
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
}

// Worked records that the upstream answered a request carrying t with
// something other than 401. It is cheap enough for every request.
func (t *Token) Worked() {
	if !t.worked.Load() {
		t.worked.Store(true)
	}
}

// Valid reports whether the token is usable at now.
func (t *Token) Valid(now time.Time) bool { return t != nil && now.Before(t.expiry) }

// Expiry is when the token expires, on the wall clock.
func (t *Token) Expiry() time.Time { return t.wallExpiry }

// Granted is the scopes the token was granted, space-separated, as the
// token answer's scope field or else the JWT's scope or scp claim says;
// "" when neither says.
func (t *Token) Granted() string { return t.granted }
