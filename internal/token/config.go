package token

import (
	"cmp"
	"math/rand/v2"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Config describes one credential set and how to obtain its tokens.
type Config struct {
	// TokenURL is the token endpoint (default DefaultTokenURL).
	TokenURL string
	// Credentials gives the client ID, the secret and the other values a
	// token request authenticates with; it is asked before every token
	// request. Required.
	Credentials CredentialSource
	// PollCredentials, when not zero, is how often the credentials are
	// asked again while the token endpoint refuses them: new ones (a
	// rotated secret file) lift the refusal's backoff at once. Zero: only
	// before each token request and right after a refusal.
	PollCredentials time.Duration
	// Scopes are requested joined by single spaces; none means no scope.
	Scopes []string
	// Timeout bounds one fetch (default DefaultTimeout).
	Timeout time.Duration
	// DefaultTTL is used when neither expires_in nor the JWT exp claim
	// gives a usable expiry (default DefaultTTL).
	DefaultTTL time.Duration
	// Auth is how the client authenticates (default AuthJSON, Desko's
	// documented format).
	Auth AuthStyle
	// AssertionAudience is the aud of the JWT styles' assertions (default
	// TokenURL).
	AssertionAudience string
	// Secrets are values scrubbed from every error and log besides the
	// credentials' own (keys in the token URL's query are scrubbed anyway).
	Secrets []string

	// HTTPClient sends the token requests. Nil means a client of the
	// source's own, whose idle connections Close closes; a given client's
	// transport may be shared with other sources and is left alone. Its
	// redirect policy is replaced in either case so that the secret is
	// never sent to another host.
	HTTPClient *http.Client
	// Endpoint, when not nil, paces the token requests of every source
	// that shares it (one per token endpoint).
	Endpoint *Endpoint
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// Observer may be nil.
	Observer Observer
	// Rand returns a float in [0,1) for jitter; defaults to math/rand/v2.
	Rand func() float64
}

// Credentials are the values a token request authenticates with. A
// source never changes them; a CredentialSource hands out new ones when
// they change.
type Credentials struct {
	ClientID     string
	ClientSecret string
	// Params are extra parameters of the token request (audience,
	// resource…), in the JSON body or the form. They must not hold the
	// names the source sets itself (ReservedParams).
	Params map[string]string
	// Headers are extra headers of the token request.
	Headers map[string]string
	// Secrets are other values scrubbed from every error and log, like
	// the client secret: param and header values that came from secret
	// files or variables.
	Secrets []string
	// Key signs the assertions of AuthPrivateKeyJWT.
	Key *SigningKey
}

// StoreSecret is the secret a fleet's shared store derives the encryption
// key of the entry from: the client secret, or, for a client that
// authenticates with a private key and has none, the key's fingerprint.
// Only holders of the same credentials derive the same key.
func (c *Credentials) StoreSecret() []byte {
	if c.ClientSecret != "" {
		return []byte(c.ClientSecret)
	}
	if c.Key != nil {
		return c.Key.Fingerprint()
	}
	return nil
}

// CredentialSource hands out the current credentials of a source.
type CredentialSource interface {
	// Current returns the credentials to authenticate with now. It returns
	// the same pointer for as long as they are unchanged, and never nil.
	Current() *Credentials
}

// Static is a CredentialSource whose credentials never change.
type Static Credentials

// Current implements CredentialSource.
func (s *Static) Current() *Credentials { return (*Credentials)(s) }

// Defaults and limits of a source.
const (
	// DefaultTokenURL is Desko's documented token endpoint.
	DefaultTokenURL = "https://api.desko.com.br/v1.1/oauth/token"
	// DefaultTimeout bounds one fetch.
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

	// safetyMarginDivisor and maxSafetyMargin set a token's safety margin:
	// it is not used in the last 1/20 (5%) of its life, nor in its last
	// 10 s.
	safetyMarginDivisor = 20
	maxSafetyMargin     = 10 * time.Second

	// skewFloor is the smallest difference between the token endpoint's
	// Date header and this machine's clock that is taken for a clock skew
	// (Date has a resolution of one second, and the answer takes a while);
	// skewWarn the one that is worth a WARN.
	skewFloor = 2 * time.Second
	skewWarn  = 30 * time.Second

	// The backoff after failures: from transientBackoffMin doubling to
	// transientBackoffMax for the kinds that look like outages (transient,
	// invalid_answer, dns, connect), from refusedBackoffMin to
	// refusedBackoffMax for configuration problems (Kind.Misconfigured).
	transientBackoffMin = 1 * time.Second
	transientBackoffMax = 60 * time.Second
	refusedBackoffMin   = 5 * time.Second
	refusedBackoffMax   = 5 * time.Minute
	retryAfterMax       = 10 * time.Minute

	// guardMin and guardMax protect the token endpoint from an upstream
	// that answers 401 whatever the token: a token that replaced a
	// rejected one and was itself rejected before any success is only
	// replaced once it is this old, doubling with each such replacement
	// in a row.
	guardMin = time.Second
	guardMax = time.Minute
	// guardQuiet without rejections resets that guard.
	guardQuiet = 2 * time.Minute

	// revocationBurst and revocationEvery are the budget of token requests
	// that upstream 401s may cause per source: a burst, then one per
	// revocationEvery. A token that worked and is then rejected was
	// revoked; it is replaced at once while the budget lasts.
	revocationBurst = 6
	revocationEvery = 10 * time.Second
)

// ReservedParams are the token request parameters a source sets itself;
// Credentials.Params must not hold them.
var ReservedParams = []string{"grant_type", "client_id", "client_secret", "scope"}

// WithDefaults returns c with the defaults applied; it is the one place
// they are. New applies them; callers that identify sources by their
// configuration apply them first, so that a default written out and one
// left out are the same.
func (c Config) WithDefaults() Config {
	c.TokenURL = cmp.Or(c.TokenURL, DefaultTokenURL)
	c.Timeout = cmp.Or(c.Timeout, DefaultTimeout)
	c.DefaultTTL = cmp.Or(c.DefaultTTL, DefaultTTL)
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	return c
}
