package deskoauth

import (
	"cmp"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
)

// This file holds the engine's defaults and limits, and applies the
// defaults: the one place they are.

// tokenEngine defaults and limits.
const (
	// DefaultTokenURL is Desko's documented token endpoint.
	DefaultTokenURL = "https://api.desko.com.br/v1.1/oauth/token"
	// DefaultTimeout bounds one token request.
	DefaultTimeout = 10 * time.Second
	// DefaultTTL is the lifetime assumed for a token whose answer says
	// nothing usable about its expiry.
	DefaultTTL = 5 * time.Minute

	// refreshPoint is the fraction of a token's lifetime at which the
	// earliest refresh happens; each source adds up to refreshJitter more,
	// so that a fleet does not refresh in lockstep.
	refreshPoint  = 0.75
	refreshJitter = 0.05

	// maxBodyBytes caps how much of a token endpoint answer is read.
	maxBodyBytes = 1 << 20
	// maxExpiresIn is the largest expires_in taken at face value; larger
	// values are treated as absurd (missing).
	maxExpiresIn = 366 * 24 * time.Hour
	// excerptLen is how much of a non-JSON error body goes into an error.
	excerptLen = 120
	// minTokenLifetime is the shortest time a token is used, whatever its
	// answer says, and minRefreshInterval the shortest time between the
	// start of a token request and a proactive refresh: together they
	// bound a source to about one token request a second even against an
	// endpoint that hands out tokens that expire at once.
	minTokenLifetime   = time.Second
	minRefreshInterval = time.Second

	transientBackoffMin = 1 * time.Second
	transientBackoffMax = 60 * time.Second
	rejectedBackoffMin  = 5 * time.Second
	rejectedBackoffMax  = 5 * time.Minute
	retryAfterMax       = 10 * time.Minute

	// invalidateGuardMin and invalidateGuardMax protect the token endpoint
	// from an upstream that answers 401 whatever the token: a token that
	// replaced a rejected one and was itself rejected before any success
	// is only replaced once it is this old, doubling with each such
	// replacement in a row.
	invalidateGuardMin = time.Second
	invalidateGuardMax = time.Minute
	// invalidateQuiet without rejections resets that guard.
	invalidateQuiet = 2 * time.Minute

	// rejectBurst and rejectRefill are the budget of token requests that
	// upstream 401s may cause per credential set: a burst, then one per
	// rejectRefill. A token that had a success and is then rejected was
	// revoked; it is replaced at once while the budget lasts.
	rejectBurst  = 6
	rejectRefill = 10 * time.Second
)

// reservedParams are the token request parameters the engine sets itself;
// engineConfig.Params must not hold them (the handler's Validate checks that).
var reservedParams = []string{"grant_type", "client_id", "client_secret", "scope"}

// withDefaults returns c with the defaults applied; it is the one place
// they are.
func (c engineConfig) withDefaults() engineConfig {
	c.TokenURL = cmp.Or(c.TokenURL, DefaultTokenURL)
	c.Timeout = cmp.Or(c.Timeout, DefaultTimeout)
	c.DefaultTTL = cmp.Or(c.DefaultTTL, DefaultTTL)
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c
}
