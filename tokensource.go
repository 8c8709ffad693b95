package deskoauth

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// This file is the token engine. It has no Caddy imports on purpose: it is
// tested on its own with a fake clock and httptest servers.

// engineConfig describes one credential set and how to fetch its tokens.
type engineConfig struct {
	TokenURL     string
	ClientID     string
	ClientSecret string
	Scopes       []string
	// Timeout bounds one token request (default DefaultTimeout).
	Timeout time.Duration
	// DefaultTTL is used when neither expires_in nor the JWT exp claim
	// gives a usable expiry (default DefaultTTL).
	DefaultTTL time.Duration

	// authStyle is how the client authenticates (default AuthJSON,
	// Desko's documented format).
	AuthStyle authStyle
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
	Clock engineClock
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// Observer may be nil.
	Observer engineObserver
	// Rand returns a float in [0,1) for jitter; defaults to math/rand/v2.
	Rand func() float64
}

// call is one token request that any number of callers may wait on.
type call struct {
	done      chan struct{}
	replacing *accessToken // the rejected token, when Invalidate started it
	avoid     string       // a token value the upstream rejected: never adopt it
	tok       *accessToken
	err       error
}

// tokenEngine fetches, caches and refreshes the tokens of one credential set. It
// is safe for concurrent use. Its zero value is not usable: use newTokenEngine.
type tokenEngine struct {
	cfg  engineConfig
	body []byte // the JSON token request body (holds the secret)
	// secretScrub removes the secrets from text that came from elsewhere.
	secretScrub *scrubber
	client      *http.Client
	clock       engineClock
	log         *zap.Logger
	obs         engineObserver
	rand        func() float64

	// monotonic is set with the real clock: Get then checks expiry with
	// time.Until, which reads only the monotonic clock (time.Now reads the
	// wall clock too, which costs as much again on some VMs).
	monotonic bool

	cur atomic.Pointer[accessToken]

	// shared is the fleet-wide token store in cluster mode (nil: off).
	shared atomic.Pointer[sharedHolder]
	// sharedBroken is set while the shared store fails (to log once).
	sharedBroken atomic.Bool

	mu          sync.Mutex
	inflight    *call
	lastErr     *tokenError
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

// newTokenEngine starts an engine for cfg, with the defaults applied. It trusts
// cfg: the handler's Validate checked the written configuration. The
// engine's background refresher runs until Close.
func newTokenEngine(cfg engineConfig) (*tokenEngine, error) {
	cfg = cfg.withDefaults()
	fields := map[string]string{
		"grant_type":    "client_credentials",
		"client_id":     cfg.ClientID,
		"client_secret": cfg.ClientSecret,
	}
	if len(cfg.Scopes) > 0 {
		fields["scope"] = strings.Join(cfg.Scopes, " ")
	}
	for k, v := range cfg.Params {
		if !slices.Contains(reservedParams, k) {
			fields[k] = v
		}
	}
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("encoding token request: %w", err)
	}
	e := &tokenEngine{
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

// Get returns a valid token, fetching one if needed. A cached valid token is
// returned without locking. Concurrent callers share one fetch; a caller
// whose ctx ends stops waiting without cancelling the fetch for the others.
// While the engine is backing off after a failure and holds no valid token,
// Get fails fast with the last error.
//
// While the current token is being replaced because the upstream rejected
// it, Get waits for its replacement; if that fetch fails, the current token
// is returned until it expires.
func (e *tokenEngine) Get(ctx context.Context) (*accessToken, error) {
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

func (e *tokenEngine) slowGet(ctx context.Context) (*accessToken, error) {
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

func (e *tokenEngine) wait(ctx context.Context, c *call) (*accessToken, error) {
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

// Refresh starts a fetch now (or joins the one in flight) even if the
// current token is valid, and waits for it. Backoff is ignored: this is for
// operators who rotated something on the server side.
func (e *tokenEngine) Refresh(ctx context.Context) (*accessToken, error) {
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
func (e *tokenEngine) startLocked(replacing *accessToken) *call {
	c := &call{done: make(chan struct{}), replacing: replacing, avoid: e.rejected}
	e.inflight = c
	go e.fetch(c)
	return c
}

func (e *tokenEngine) fetch(c *call) {
	start := e.clock.Now()
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
	tok, terr, adopted := e.obtain(ctx, c.replacing, c.avoid)
	cancel()
	took := e.clock.Now().Sub(start)

	e.mu.Lock()
	attempt := e.failures + 1
	if terr == nil {
		tok.refreshAt = tok.obtained.Add(time.Duration(float64(tok.expiry.Sub(tok.obtained)) * (refreshPoint + refreshJitter*e.rand())))
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
			if terr.Kind == kindRejected {
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

// WarmUp starts a fetch in the background if the engine holds no token and
// none is in flight. It never blocks.
func (e *tokenEngine) WarmUp() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inflight == nil && e.lastErr == nil && !e.cur.Load().Valid(e.clock.Now()) {
		e.startLocked(nil)
	}
}

// Close stops the background refresher. A token request in flight runs to
// its timeout; calls after Close still answer (from the cache, or with a
// one-off fetch) so that requests still in flight during a reload complete.
func (e *tokenEngine) Close() error {
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
