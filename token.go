package deskoauth

import (
	"sync/atomic"
	"time"
)

// This file is a token as the engine holds it.

// accessToken is a token held by the engine. It is immutable once published.
type accessToken struct {
	// Value is the raw access token.
	Value string
	// obtained and expiry carry the clock's monotonic reading.
	obtained time.Time
	expiry   time.Time
	// wallExpiry is the wall-clock expiry, for oauth2.Token and metrics.
	wallExpiry time.Time
	// refreshAt is when the refresher replaces it (monotonic).
	refreshAt time.Time
	// proven is set once the upstream answered a request that carried the
	// token with anything but 401: a later 401 then means a revocation.
	proven atomic.Bool
	// suspect is set while a fetch to replace the token, which the
	// upstream rejected, is in flight: Get waits for that fetch rather
	// than hand out a token that was just rejected.
	suspect atomic.Bool
}

// Accepted records that the upstream answered a request carrying t with
// something other than 401. It is cheap enough for every request.
func (t *accessToken) Accepted() {
	if !t.proven.Load() {
		t.proven.Store(true)
	}
}

// Valid reports whether the token is usable at now.
func (t *accessToken) Valid(now time.Time) bool { return t != nil && now.Before(t.expiry) }
