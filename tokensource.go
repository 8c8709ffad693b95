package deskoauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

// This file is the token engine. It has no Caddy imports on purpose: it is
// tested on its own with a fake clock and httptest servers.

// Engine defaults and limits.
const (
	// DefaultTokenURL is Desko's documented token endpoint.
	DefaultTokenURL = "https://api.desko.com.br/v1.1/oauth/token"
	// DefaultTimeout bounds one token request.
	DefaultTimeout = 10 * time.Second
	// DefaultTTL is the lifetime assumed for a token whose answer says
	// nothing usable about its expiry.
	DefaultTTL = 5 * time.Minute

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

// ErrorKind classifies why a token could not be obtained.
type ErrorKind int

// The kinds of token errors. Their String forms are the metric labels.
const (
	// KindTransient is a network error, timeout, 5xx or 429: retried with a
	// short exponential backoff.
	KindTransient ErrorKind = iota + 1
	// KindRejected means the token endpoint refused the credentials (400,
	// 401, 403 and other 4xx): a configuration problem, retried slowly.
	KindRejected
	// KindInvalidResponse is a 2xx answer that is not a usable token (not
	// JSON, no access_token, a wrong token_type, control characters…).
	// It is retried like a transient error.
	KindInvalidResponse
)

func (k ErrorKind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindRejected:
		return "rejected"
	case KindInvalidResponse:
		return "invalid_response"
	}
	return "unknown"
}

// TokenError is the one error type the engine returns. Its text never
// contains the client secret or a token.
type TokenError struct {
	Kind ErrorKind
	// Status is the token endpoint's HTTP status, 0 when there was none.
	Status int
	// Message is what the token endpoint said (its message,
	// error_description or error code), or a short excerpt of the body.
	Message string
	// RetryAfter is what the server asked for (429/503 Retry-After), or,
	// on errors handed to waiting requests, the time left until the next
	// attempt.
	RetryAfter time.Duration
	// Err is the underlying cause (network error, JSON error…), if any.
	Err error
}

func (e *TokenError) Error() string {
	var b strings.Builder
	switch {
	case e.Status != 0:
		fmt.Fprintf(&b, "token endpoint answered %d", e.Status)
		if e.Message != "" {
			b.WriteString(": ")
			b.WriteString(e.Message)
		}
	case e.Message != "":
		b.WriteString(e.Message)
	default:
		b.WriteString("token request failed")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *TokenError) Unwrap() error { return e.Err }

// Clock is the engine's source of time. Times it returns must carry a
// monotonic reading (as time.Now does) so that expiry arithmetic is immune to
// wall-clock jumps.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the engine uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer {
	return realTimer{time.NewTimer(d)}
}

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Observer receives engine events, for metrics. Implementations must be
// fast and must not block.
type Observer interface {
	// FetchDone is called after every token request with its outcome:
	// "ok" or an ErrorKind's String.
	FetchDone(result string, took time.Duration)
	// TokenChanged is called with the wall-clock expiry of the token now
	// being served, or the zero time when none is.
	TokenChanged(expiry time.Time)
	// SharedCache is called with the outcome of each use of the shared
	// cache: "hit", "miss", "adopted", "lock_timeout", "timeout" or "error".
	SharedCache(result string)
}

// Config describes one credential set and how to fetch its tokens.
type Config struct {
	TokenURL     string
	ClientID     string
	ClientSecret string
	Scopes       []string
	// Timeout bounds one token request (default DefaultTimeout).
	Timeout time.Duration
	// DefaultTTL is used when neither expires_in nor the JWT exp claim
	// gives a usable expiry (default DefaultTTL).
	DefaultTTL time.Duration

	// AuthStyle is how the client authenticates (default AuthJSON,
	// Desko's documented format).
	AuthStyle AuthStyle
	// Params are extra parameters of the token request (audience,
	// resource…), in the JSON body or the form.
	Params map[string]string
	// Headers are extra headers of the token request.
	Headers map[string]string
	// Secrets are other values scrubbed from every error and log, like
	// the client secret: param and token_header values that came from
	// placeholders. Keys in the token URL's query are scrubbed anyway.
	Secrets []string

	// HTTPClient sends the token requests. Nil means a client of the
	// engine's own, whose idle connections Close closes; a given client's
	// transport may be shared with other engines and is left alone. Its
	// redirect policy is replaced in either case so that the secret is
	// never sent to another host.
	HTTPClient *http.Client
	// Clock defaults to the real clock.
	Clock Clock
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// Observer may be nil.
	Observer Observer
	// Rand returns a float in [0,1) for jitter; defaults to math/rand/v2.
	Rand func() float64
}

// State is the engine's health, as shown to operators.
type State string

// Engine states.
const (
	StateEmpty      State = "empty"       // no token and no failure yet
	StateFresh      State = "fresh"       // a valid token is held
	StateRefreshing State = "refreshing"  // a token request is in flight
	StateBackingOff State = "backing_off" // the last request failed transiently
	StateRejected   State = "rejected"    // the last request was refused
)

// Status is a snapshot of the engine for operators. It holds no secret and no
// token.
type Status struct {
	State       State     `json:"state"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	LastFetchAt time.Time `json:"last_fetch_at,omitzero"`
	NextRetryAt time.Time `json:"next_retry_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Fetches     uint64    `json:"fetches"`
}

// Token is a token held by the engine. It is immutable once published.
type Token struct {
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
func (t *Token) Accepted() {
	if !t.proven.Load() {
		t.proven.Store(true)
	}
}

// Valid reports whether the token is usable at now.
func (t *Token) Valid(now time.Time) bool { return t != nil && now.Before(t.expiry) }

// OAuth2 returns the token as an *oauth2.Token.
func (t *Token) OAuth2() *oauth2.Token {
	return &oauth2.Token{AccessToken: t.Value, TokenType: "Bearer", Expiry: t.wallExpiry}
}

// call is one token request that any number of callers may wait on.
type call struct {
	done      chan struct{}
	replacing *Token // the rejected token, when Invalidate started it
	avoid     string // a token value the upstream rejected: never adopt it
	tok       *Token
	err       error
}

// Engine fetches, caches and refreshes the tokens of one credential set. It
// is safe for concurrent use. Its zero value is not usable: use NewEngine.
type Engine struct {
	cfg  Config
	body []byte // the JSON token request body (holds the secret)
	// secretScrub removes the secrets from text that came from elsewhere.
	secretScrub *scrubber
	client      *http.Client
	clock       Clock
	log         *zap.Logger
	obs         Observer
	rand        func() float64

	// monotonic is set with the real clock: Get then checks expiry with
	// time.Until, which reads only the monotonic clock (time.Now reads the
	// wall clock too, which costs as much again on some VMs).
	monotonic bool

	cur atomic.Pointer[Token]

	// shared is the fleet-wide token store in cluster mode (nil: off).
	shared atomic.Pointer[sharedHolder]
	// sharedBroken is set while the shared store fails (to log once).
	sharedBroken atomic.Bool

	mu          sync.Mutex
	inflight    *call
	lastErr     *TokenError
	failures    int       // consecutive failures
	nextAttempt time.Time // no new fetch before this while lastErr != nil
	lastFetchAt time.Time // wall clock
	fetches     uint64
	// invalidations counts tokens replaced in a row by Invalidate, reset
	// by a token that proves itself (Accepted) or by a normal refresh.
	invalidations    int
	lastInvalidation time.Time
	// budget bounds the token requests that 401s cause.
	budget rejectBudget
	// rejected is the last token the upstream rejected, until another is
	// obtained: a retry must not adopt it back from the shared cache.
	rejected  string
	everOK    bool
	loggedTTL bool
	closed    bool

	// lastRequestAt is when the last token request started (monotonic):
	// no proactive refresh starts within minRefreshInterval of it.
	lastRequestAt time.Time

	kick   chan struct{} // wakes the refresher after a state change
	stop   chan struct{}
	exited chan struct{}
}

// NewEngine validates cfg and starts an engine. The engine's background
// refresher runs until Close.
func NewEngine(cfg Config) (*Engine, error) {
	if cfg.TokenURL == "" {
		cfg.TokenURL = DefaultTokenURL
	}
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("token_url must be an absolute http:// or https:// URL")
	}
	if cfg.ClientID == "" {
		return nil, errors.New("client_id is required")
	}
	if cfg.ClientSecret == "" {
		return nil, errors.New("client_secret is required")
	}
	if cfg.Timeout < 0 || cfg.DefaultTTL < 0 {
		return nil, errors.New("timeout and default_ttl must be positive")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = DefaultTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	fields := map[string]string{}
	for k, v := range cfg.Params {
		fields[k] = v
	}
	for k, v := range map[string]string{"grant_type": "client_credentials", "client_id": cfg.ClientID, "client_secret": cfg.ClientSecret} {
		if _, dup := fields[k]; dup {
			return nil, fmt.Errorf("param %s: is set by the module itself", k)
		}
		fields[k] = v
	}
	if len(cfg.Scopes) > 0 {
		if _, dup := fields["scope"]; dup {
			return nil, errors.New("param scope: use scope instead")
		}
		fields["scope"] = strings.Join(cfg.Scopes, " ")
	}
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("encoding token request: %w", err)
	}
	e := &Engine{
		cfg:         cfg,
		body:        body,
		secretScrub: newScrubber(cfg.ClientID, cfg.ClientSecret, append(urlSecrets(cfg.TokenURL), cfg.Secrets...)...),
		client:      sameHostClient(cfg.HTTPClient, cfg.Headers),
		clock:       cfg.Clock,
		log:         cfg.Logger,
		obs:         cfg.Observer,
		rand:        cfg.Rand,
		kick:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		exited:      make(chan struct{}),
	}
	_, e.monotonic = cfg.Clock.(realClock)
	go e.refresher()
	return e, nil
}

// errCrossHostRedirect is a token endpoint redirecting elsewhere: a
// configuration problem, not an outage.
var errCrossHostRedirect = errors.New("refusing to follow a redirect to another host; check token_url")

// sameHostClient returns a copy of c (or a new client) whose redirect
// policy only follows redirects to the same scheme and host, so the secret
// in a re-sent body never reaches another server.
func sameHostClient(c *http.Client, headers map[string]string) *http.Client {
	var nc http.Client
	if c != nil {
		nc = *c
	}
	if nc.Transport == nil {
		nc.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	nc.Transport = headerTransport{base: nc.Transport, headers: headers}
	nc.Timeout = 0 // the engine sets a per-request deadline
	nc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 3 {
			return errors.New("stopped after 3 redirects")
		}
		first := via[0].URL
		if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
			return fmt.Errorf("%w (%s://%s)", errCrossHostRedirect, req.URL.Scheme, req.URL.Host)
		}
		return nil
	}
	return &nc
}

// headerTransport adds the engine's fixed headers to every token request.
type headerTransport struct {
	base    http.RoundTripper
	headers map[string]string
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", "caddy-desko-auth")
	for k, v := range t.headers {
		r.Header.Set(k, v)
	}
	return t.base.RoundTrip(r)
}

// CloseIdleConnections closes the underlying transport's idle connections.
func (t headerTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Token implements oauth2.TokenSource. It blocks until a token is available
// or the fetch fails.
func (e *Engine) Token() (*oauth2.Token, error) {
	t, err := e.Get(context.Background())
	if err != nil {
		return nil, err
	}
	return t.OAuth2(), nil
}

// Get returns a valid token, fetching one if needed. A cached valid token is
// returned without locking. Concurrent callers share one fetch; a caller
// whose ctx ends stops waiting without cancelling the fetch for the others.
// While the engine is backing off after a failure and holds no valid token,
// Get fails fast with the last error.
//
// While the current token is being replaced because the upstream rejected
// it, Get waits for its replacement; if that fetch fails, the current token
// is returned until it expires.
func (e *Engine) Get(ctx context.Context) (*Token, error) {
	if t := e.cur.Load(); t != nil && !t.suspect.Load() {
		if e.monotonic {
			if time.Until(t.expiry) > 0 { // t.expiry carries a monotonic reading
				return t, nil
			}
		} else if t.Valid(e.clock.Now()) {
			return t, nil
		}
	}
	return e.slowGet(ctx)
}

// Peek returns the current token if it is valid, without ever fetching.
func (e *Engine) Peek() *Token {
	if t := e.cur.Load(); t.Valid(e.clock.Now()) {
		return t
	}
	return nil
}

func (e *Engine) slowGet(ctx context.Context) (*Token, error) {
	e.mu.Lock()
	now := e.clock.Now()
	if t := e.cur.Load(); t.Valid(now) {
		c := e.inflight
		e.mu.Unlock()
		if c == nil || c.replacing != t {
			return t, nil
		}
		// t was rejected and its replacement is on the way.
		fresh, err := e.wait(ctx, c)
		if err == nil {
			return fresh, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		return t, nil // no replacement: keep the token we had
	}
	c := e.inflight
	if c == nil {
		if e.lastErr != nil && now.Before(e.nextAttempt) {
			err := *e.lastErr
			err.RetryAfter = e.nextAttempt.Sub(now)
			e.mu.Unlock()
			return nil, &err
		}
		c = e.startLocked(nil)
	}
	e.mu.Unlock()
	return e.wait(ctx, c)
}

func (e *Engine) wait(ctx context.Context, c *call) (*Token, error) {
	select {
	case <-c.done:
		if c.err != nil {
			return nil, c.err
		}
		return c.tok, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a token: %w", ctx.Err())
	}
}

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
func (e *Engine) Invalidate(tok *Token) { e.reject(tok) }

// Replace is Invalidate followed by a wait for the replacement. It returns a
// valid token other than tok, or nil when none can be had now: the fetch
// failed, the budget or the guard held it back, or ctx ended.
func (e *Engine) Replace(ctx context.Context, tok *Token) *Token {
	if tok == nil {
		return nil
	}
	var fresh *Token
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
func (e *Engine) reject(tok *Token) *call {
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

// Refresh starts a fetch now (or joins the one in flight) even if the
// current token is valid, and waits for it. Backoff is ignored: this is for
// operators who rotated something on the server side.
func (e *Engine) Refresh(ctx context.Context) (*Token, error) {
	e.mu.Lock()
	c := e.inflight
	if c == nil {
		c = e.startLocked(nil)
	}
	e.mu.Unlock()
	return e.wait(ctx, c)
}

// startLocked starts a fetch; e.mu must be held and no fetch in flight.
// replacing is the rejected token when Invalidate started it.
func (e *Engine) startLocked(replacing *Token) *call {
	c := &call{done: make(chan struct{}), replacing: replacing, avoid: e.rejected}
	e.inflight = c
	go e.fetch(c)
	return c
}

func (e *Engine) fetch(c *call) {
	start := e.clock.Now()
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
	tok, terr, adopted := e.obtain(ctx, c.replacing, c.avoid)
	cancel()
	took := e.clock.Now().Sub(start)

	e.mu.Lock()
	attempt := e.failures + 1
	if terr == nil {
		tok.refreshAt = tok.obtained.Add(time.Duration(float64(tok.expiry.Sub(tok.obtained)) * (0.75 + 0.05*e.rand())))
		recovered := e.lastErr != nil
		first := !e.everOK
		e.lastErr, e.failures, e.nextAttempt, e.everOK = nil, 0, time.Time{}, true
		switch {
		case c.replacing == nil:
			e.invalidations = 0
		case adopted && e.invalidations > 0:
			// The guard and the budget count replacements that cost a
			// token request: a peer's newer token adopted from the shared
			// cache (a peer refreshed, and the server revoked ours) costs
			// none.
			e.invalidations--
			e.budget.refund()
		}
		if tok.Value != e.rejected {
			e.rejected = ""
		}
		e.cur.Store(tok)
		c.tok = tok
		ttl := tok.expiry.Sub(tok.obtained)
		fields := []zap.Field{zap.Duration("expires_in", ttl), zap.Duration("took", took)}
		switch {
		case adopted:
			e.log.Debug("token adopted from the shared cache", fields...)
		case recovered:
			e.log.Info("token endpoint recovered; token obtained", append(fields, zap.Int("attempt", attempt))...)
		case first:
			e.log.Info("first token obtained", fields...)
		default:
			e.log.Debug("token refreshed", fields...)
		}
	} else {
		if c.replacing != nil {
			// The rejected token stays in use until it expires.
			c.replacing.suspect.Store(false)
		}
		prev := e.lastErr
		e.failures++
		backoff := e.backoff(terr)
		e.lastErr = terr
		e.nextAttempt = e.clock.Now().Add(backoff)
		c.err = terr
		// Log once per state change: a new kind or status of failure.
		if prev == nil || prev.Kind != terr.Kind || prev.Status != terr.Status {
			fields := []zap.Field{
				zap.String("error", terr.Error()),
				zap.String("kind", terr.Kind.String()),
				zap.Int("attempt", attempt),
				zap.Duration("backoff", backoff),
			}
			if terr.Status != 0 {
				fields = append(fields, zap.Int("status", terr.Status))
			}
			if terr.Kind == KindRejected {
				e.log.Error("token endpoint rejected the credentials; check client_id, client_secret and scope", fields...)
			} else if e.cur.Load().Valid(e.clock.Now()) {
				e.log.Warn("token refresh failed; still serving the current token", fields...)
			} else {
				e.log.Warn("could not obtain a token", fields...)
			}
		}
	}
	e.inflight = nil
	e.mu.Unlock()
	close(c.done)
	if terr == nil {
		e.notifyToken(tok)
	}
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Engine) notifyToken(t *Token) {
	if e.obs == nil {
		return
	}
	if t == nil {
		e.obs.TokenChanged(time.Time{})
		return
	}
	e.obs.TokenChanged(t.wallExpiry)
}

// backoff returns how long to wait after the e.failures-th consecutive
// failure with err: exponential with ±20% jitter, slower for rejections, at
// least what a Retry-After asked for.
func (e *Engine) backoff(err *TokenError) time.Duration {
	lo, hi := transientBackoffMin, transientBackoffMax
	if err.Kind == KindRejected {
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
func (e *Engine) refresher() {
	defer close(e.exited)
	for {
		wait, ok := e.nextWake()
		var timerC <-chan time.Time
		var t Timer
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
func (e *Engine) nextWake() (time.Duration, bool) {
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
func (e *Engine) refreshAtLocked(t *Token) time.Time {
	if floor := e.lastRequestAt.Add(minRefreshInterval); t.refreshAt.Before(floor) {
		return floor
	}
	return t.refreshAt
}

// dueLocked reports whether a fetch should start now.
func (e *Engine) dueLocked() bool {
	now := e.clock.Now()
	if e.lastErr != nil {
		return !now.Before(e.nextAttempt)
	}
	t := e.cur.Load()
	return t != nil && !now.Before(e.refreshAtLocked(t))
}

// Status returns a snapshot for operators.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := Status{Fetches: e.fetches, LastFetchAt: e.lastFetchAt}
	now := e.clock.Now()
	t := e.cur.Load()
	if t.Valid(now) {
		s.ExpiresAt = t.wallExpiry
	}
	switch {
	case e.inflight != nil:
		s.State = StateRefreshing
	case e.lastErr != nil && e.lastErr.Kind == KindRejected:
		s.State = StateRejected
	case e.lastErr != nil:
		s.State = StateBackingOff
	case t.Valid(now):
		s.State = StateFresh
	default:
		s.State = StateEmpty
	}
	if e.lastErr != nil {
		s.LastError = e.lastErr.Error()
		s.NextRetryAt = e.nextAttempt.Round(0)
	}
	return s
}

// WarmUp starts a fetch in the background if the engine holds no token and
// none is in flight. It never blocks.
func (e *Engine) WarmUp() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inflight == nil && e.lastErr == nil && !e.cur.Load().Valid(e.clock.Now()) {
		e.startLocked(nil)
	}
}

// Close stops the background refresher. A token request in flight runs to
// its timeout; calls after Close still answer (from the cache, or with a
// one-off fetch) so that requests still in flight during a reload complete.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	close(e.stop)
	<-e.exited
	if e.cfg.HTTPClient == nil {
		e.client.CloseIdleConnections()
	}
	return nil
}

// request performs one token request, counts it for Status and the
// Observer, and returns the parsed token.
func (e *Engine) request(ctx context.Context) (*Token, *TokenError) {
	start := e.clock.Now()
	e.mu.Lock()
	e.lastRequestAt = start
	e.mu.Unlock()
	tok, terr := e.roundTrip(ctx)
	took := e.clock.Now().Sub(start)
	e.mu.Lock()
	e.fetches++
	e.lastFetchAt = e.clock.Now().Round(0)
	e.mu.Unlock()
	if e.obs != nil {
		result := "ok"
		if terr != nil {
			result = terr.Kind.String()
		}
		e.obs.FetchDone(result, took)
	}
	return tok, terr
}

// roundTrip sends the token request and parses its answer.
func (e *Engine) roundTrip(ctx context.Context) (*Token, *TokenError) {
	req, err := e.newTokenRequest(ctx)
	if err != nil {
		return nil, &TokenError{Kind: KindRejected, Message: "building the token request", Err: e.scrubErr(redactURLError(err))}
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, e.transportError(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	if err != nil {
		return nil, &TokenError{Kind: KindTransient, Status: resp.StatusCode, Message: "reading the answer", Err: e.scrubErr(redactURLError(err))}
	}
	if len(body) > maxBodyBytes {
		return nil, &TokenError{Kind: KindInvalidResponse, Status: resp.StatusCode, Message: "answer larger than 1 MiB"}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, e.statusError(resp, body)
	}
	tok, perr := parseTokenAnswer(resp.Header.Get("Content-Type"), body, e.clock.Now(), e.cfg.DefaultTTL)
	if errors.Is(perr, errOAuthErrorAnswer) {
		return nil, e.statusError(resp, body)
	}
	return e.accept(tok, perr, resp.StatusCode)
}

// transportError classifies a failed round trip: a redirect elsewhere or a
// certificate that does not verify is a configuration problem (retried
// slowly), anything else (network, timeout) transient.
func (e *Engine) transportError(err error) *TokenError {
	kind := KindTransient
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	if errors.Is(err, errCrossHostRedirect) || errors.As(err, &certErr) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostErr) || errors.As(err, &invalid) {
		kind = KindRejected
	}
	return &TokenError{Kind: kind, Message: "token request failed", Err: e.scrubErr(redactURLError(err))}
}

// accept finishes a 2xx answer's parse, whatever the auth style.
func (e *Engine) accept(tok parsedToken, perr error, status int) (*Token, *TokenError) {
	if perr != nil {
		// perr may quote the answer (token_type), so it is scrubbed too.
		return nil, &TokenError{Kind: KindInvalidResponse, Status: status, Message: "unusable token answer", Err: e.scrubErr(perr)}
	}
	if tok.usedDefaultTTL {
		e.mu.Lock()
		warn := !e.loggedTTL
		e.loggedTTL = true
		e.mu.Unlock()
		if warn {
			e.log.Warn("token answer has no usable expires_in or JWT exp; assuming default_ttl",
				zap.Duration("default_ttl", e.cfg.DefaultTTL))
		}
	}
	return tok.Token, nil
}

// statusError builds the error for a non-2xx answer.
func (e *Engine) statusError(resp *http.Response, body []byte) *TokenError {
	// Scrub the body before errorMessage cuts it to an excerpt: a secret
	// straddling the cut would otherwise survive in part.
	te := &TokenError{Status: resp.StatusCode, Message: e.scrub(errorMessage([]byte(e.scrub(string(body)))))}
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		// A 2xx that carries an OAuth error (some servers do that).
		te.Kind = KindRejected
		return te
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode >= 500:
		te.Kind = KindTransient
		te.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		te.Kind = KindRejected
		te.Message = "redirect not followed (check token_url)"
	default:
		te.Kind = KindRejected
	}
	return te
}

// scrub removes the secrets from text that came from elsewhere, in any
// common escaping (see scrub.go).
func (e *Engine) scrub(s string) string { return e.secretScrub.Scrub(s) }

func (e *Engine) scrubErr(err error) error {
	msg := err.Error()
	if scrubbed := e.scrub(msg); scrubbed != msg {
		return errors.New(scrubbed)
	}
	return err
}

// redactURLError replaces the URL of a *url.Error, which Go puts in its
// text whole, by the URL without its query, fragment and user information.
func redactURLError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	r := *ue
	r.URL = redactURL(ue.URL)
	if error(ue) == err {
		return &r
	}
	// Wrapped: the wrapping layers repeat the URL in their text.
	return errors.New(strings.ReplaceAll(err.Error(), ue.URL, r.URL))
}

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return min(time.Duration(s)*time.Second, retryAfterMax)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), retryAfterMax)
	}
	return 0
}

// errorMessage extracts a human message from an error answer: Desko's
// {"error":401,"id":…,"message":…}, RFC 6749's {"error":"invalid_client",
// "error_description":…}, or a short excerpt of anything else.
func errorMessage(body []byte) string {
	var v struct {
		Error       any    `json:"error"`
		Description string `json:"error_description"`
		Message     string `json:"message"`
		ID          string `json:"id"`
	}
	if json.Unmarshal(body, &v) == nil {
		code := ""
		if s, ok := v.Error.(string); ok {
			code = s
		}
		switch {
		case v.Message != "" && code != "":
			return sanitize(code + ": " + v.Message)
		case v.Message != "":
			return sanitize(v.Message)
		case v.Description != "" && code != "":
			return sanitize(code + ": " + v.Description)
		case v.Description != "":
			return sanitize(v.Description)
		case code != "":
			return sanitize(code)
		}
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return "empty body"
	}
	return "body: " + quoteExcerpt(sanitize(string(body)))
}

// quoteExcerpt quotes s, shortening it first if escapes (of quotes,
// backslashes, unprintable runes) would make the quoted form longer than
// excerptLen+3 runes.
func quoteExcerpt(s string) string {
	q := strconv.Quote(s)
	r := []rune(strings.TrimSuffix(s, "…"))
	for n := len(r); len([]rune(q)) > excerptLen+3 && n > 0; n-- {
		q = strconv.Quote(string(r[:n-1]) + "…")
	}
	return q
}

// sanitize makes text from the network safe and short for logs and error
// bodies: control characters become spaces and it is cut at excerptLen runes.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > excerptLen {
		s = string(r[:excerptLen]) + "…"
	}
	return s
}

// parsedToken is a token with how its expiry was decided.
type parsedToken struct {
	*Token
	usedDefaultTTL bool
}

// errOAuthErrorAnswer is a 2xx answer that holds an OAuth error and no
// token (some servers answer errors with 200): it is reported like a
// non-2xx answer.
var errOAuthErrorAnswer = errors.New("answer is an OAuth error")

// answerFields are the fields of a token answer the engine reads, by their
// exact names.
type answerFields struct {
	accessToken *string
	tokenType   *string
	expiresIn   json.RawMessage // a JSON number or string, or absent
	hasError    bool            // an "error" field is present
}

// ParseTokenResponse parses a 2xx JSON token endpoint answer received at
// now. See parseTokenAnswer.
func ParseTokenResponse(body []byte, now time.Time, defaultTTL time.Duration) (parsedToken, error) {
	f, err := jsonAnswerFields(body)
	if err != nil {
		return parsedToken{}, err
	}
	return f.token(now, defaultTTL)
}

// parseTokenAnswer is the one parser of 2xx token answers, whatever the
// auth style: JSON, or RFC 6749-style form encoding when the Content-Type
// says so (application/x-www-form-urlencoded, or text/plain that is not
// a JSON object). Field names are exact (ACCESS_TOKEN is not
// access_token), and an answer that holds one of the fields read twice is
// refused. The expiry comes from expires_in (a number or numeric string of
// seconds; fractions are truncated) and the JWT exp claim, whichever is
// earlier; missing, non-positive or absurd values are ignored; if neither
// is usable, defaultTTL applies. No token lives less than minTokenLifetime.
func parseTokenAnswer(contentType string, body []byte, now time.Time, defaultTTL time.Duration) (parsedToken, error) {
	var f answerFields
	var err error
	if isFormAnswer(contentType, body) {
		f, err = formAnswerFields(body)
		if err == nil && f.accessToken == nil && !f.hasError {
			return parsedToken{}, errors.New("answer is neither a JSON object nor a form-encoded token")
		}
	} else {
		f, err = jsonAnswerFields(body)
	}
	if err != nil {
		return parsedToken{}, err
	}
	return f.token(now, defaultTTL)
}

// isFormAnswer tells a form-encoded answer from a JSON one.
func isFormAnswer(contentType string, body []byte) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	switch mt {
	case "application/x-www-form-urlencoded":
		return true
	case "text/plain":
		return !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{"))
	}
	return false
}

// jsonAnswerFields reads the fields of a JSON object answer.
func jsonAnswerFields(body []byte) (answerFields, error) {
	var f answerFields
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return f, errors.New("answer is not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return f, errors.New("answer is not valid JSON")
		}
		key, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return f, errors.New("answer is not valid JSON")
		}
		switch key {
		case "access_token", "token_type", "expires_in":
			if seen[key] {
				return f, fmt.Errorf("answer has %s more than once", key)
			}
			seen[key] = true
		case "error":
			f.hasError = string(raw) != "null"
			continue
		default:
			continue
		}
		if string(raw) == "null" {
			continue
		}
		switch key {
		case "access_token", "token_type":
			var v string
			if err := json.Unmarshal(raw, &v); err != nil {
				return f, fmt.Errorf("%s is not a string", key)
			}
			if key == "access_token" {
				f.accessToken = &v
			} else {
				f.tokenType = &v
			}
		default:
			f.expiresIn = raw
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return f, errors.New("answer is not valid JSON")
	}
	// Only whitespace may follow (dec.More misses a stray '}' or ']').
	if _, err := dec.Token(); err != io.EOF {
		return f, errors.New("answer has data after the JSON object")
	}
	return f, nil
}

// formAnswerFields reads the fields of a form-encoded answer.
func formAnswerFields(body []byte) (answerFields, error) {
	var f answerFields
	vals, err := url.ParseQuery(string(bytes.TrimSpace(body)))
	if err != nil {
		return f, errors.New("answer is neither JSON nor a valid form")
	}
	for _, key := range []string{"access_token", "token_type", "expires_in"} {
		vs := vals[key]
		if len(vs) > 1 {
			return f, fmt.Errorf("answer has %s more than once", key)
		}
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		switch key {
		case "access_token":
			f.accessToken = &v
		case "token_type":
			f.tokenType = &v
		default:
			f.expiresIn, _ = json.Marshal(v)
		}
	}
	f.hasError = vals.Has("error")
	return f, nil
}

// token checks the fields and builds the token.
func (f answerFields) token(now time.Time, defaultTTL time.Duration) (parsedToken, error) {
	if f.accessToken == nil || *f.accessToken == "" {
		if f.hasError {
			return parsedToken{}, errOAuthErrorAnswer
		}
		return parsedToken{}, errors.New("answer has no access_token")
	}
	ttl, ok := parseExpiresIn(f.expiresIn)
	return newParsedToken(*f.accessToken, f.tokenType, ttl, ok, now, defaultTTL)
}

// newParsedToken checks an access token and decides its expiry: ttl (ok)
// is what expires_in said; the JWT exp claim wins when it is earlier;
// defaultTTL applies when neither is usable; minTokenLifetime is the floor.
func newParsedToken(at string, tokenType *string, ttl time.Duration, ok bool, now time.Time, defaultTTL time.Duration) (parsedToken, error) {
	if at == "" {
		return parsedToken{}, errors.New("answer has no access_token")
	}
	if !validTokenChars(at) {
		return parsedToken{}, errors.New("access_token contains characters not allowed in an HTTP header")
	}
	if tokenType != nil && !strings.EqualFold(strings.TrimSpace(*tokenType), "bearer") {
		return parsedToken{}, fmt.Errorf("token_type is %s; only Bearer tokens are supported", quoteExcerpt(*tokenType))
	}
	if jwtExp, jok := JWTExpiry(at); jok {
		if d := jwtExp.Sub(now.Round(0)); d > 0 && d <= maxExpiresIn {
			if !ok || d < ttl {
				ttl, ok = d, true
			}
		} else if !ok && d <= 0 {
			return parsedToken{}, errors.New("access_token's exp claim is in the past and there is no expires_in")
		}
	}
	p := parsedToken{Token: &Token{Value: at, obtained: now}}
	if !ok {
		ttl, p.usedDefaultTTL = defaultTTL, true
	}
	// Whatever the answer says (expires_in 1, a JWT exp a moment away, a
	// tiny default_ttl), a token is used for a while: no fetch loop.
	ttl = max(ttl, minTokenLifetime)
	p.expiry = now.Add(ttl)
	p.wallExpiry = now.Round(0).Add(ttl)
	return p, nil
}

// parseExpiresIn reads expires_in as a JSON number or numeric string.
func parseExpiresIn(raw json.RawMessage) (time.Duration, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false
	}
	s := string(raw)
	if s[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
		s = strings.TrimSpace(s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 1 {
		return 0, false
	}
	if f > maxExpiresIn.Seconds() {
		return 0, false
	}
	return time.Duration(math.Floor(f)) * time.Second, true
}

// validTokenChars reports whether s holds only visible ASCII, so it can go
// into a header with no chance of header injection.
func validTokenChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// JWTExpiry returns the exp claim of a JWT, decoding the payload only (no
// signature check: the token is opaque to us and only its expiry matters).
func JWTExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(parts[1]) > maxBodyBytes {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == "" {
		return time.Time{}, false
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 || f > 1e11 {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}
