package token

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
)

// Source fetches, caches and refreshes the tokens of one credential set.
// It is safe for concurrent use. Use New; a Source owns no goroutine while
// it waits: its refreshes and retries run from a timer.
type Source struct {
	cfg    Config
	client *http.Client
	log    *zap.Logger
	obs    Observer
	rand   func() float64
	// scrub redacts the secrets of the credentials in use from text that
	// came from elsewhere; it is built when first needed.
	scrub atomic.Pointer[lazyScrubber]

	cur atomic.Pointer[Token]
	// rejected is the token the upstream rejected last, until another is
	// obtained: Get waits for its replacement, and a fetch never adopts
	// it back from the store.
	rejected atomic.Pointer[Token]

	// routes remembers the routes that refuse fresh tokens too.
	routes routes

	// store is the fleet-wide token store (nil: none).
	store atomic.Pointer[storeHolder]
	// storeHealth is the source's view of the store: ok, or in an outage.
	storeHealth storeHealth
	// skew is how far the token endpoint's clock is ahead of this
	// machine's, in nanoseconds, as its last Date header said (0 below
	// skewFloor); see noteSkew.
	skew atomic.Int64

	mu          sync.Mutex
	flight      *flight
	creds       *Credentials // those of the last token request
	lastErr     *Error
	failures    int       // consecutive failures
	nextAttempt time.Time // no new fetch before this while lastErr != nil
	lastFetchAt time.Time // wall clock
	// lastRequestAt is when the last token request started (monotonic):
	// no proactive refresh starts within minRefreshInterval of it.
	lastRequestAt time.Time
	fetches       uint64
	// guard and budget bound the token requests that upstream 401s cause
	// (see Rejected).
	guard      guard
	budget     *rate.Limiter
	budgetDry  bool
	everOK     bool
	loggedTTL  bool
	warnedSkew bool
	closed     bool
	// timer wakes the source for its next refresh or retry.
	timer *time.Timer
}

// flight is one fetch that any number of callers may wait on.
type flight struct {
	done chan struct{}
	// replacing is set when the fetch replaces a token the upstream
	// rejected (s.rejected), rather than refreshing one.
	replacing bool
	tok       *Token
	err       *Error
}

// wait returns the flight's token, or its error, or ctx's.
func (f *flight) wait(ctx context.Context) (*Token, error) {
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		return f.tok, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a token: %w", ctx.Err())
	}
}

// New returns a source for cfg, with the defaults applied. It trusts cfg:
// the caller checked the written configuration. It sends no request until
// a token is asked for (or WarmUp).
func New(cfg Config) (*Source, error) {
	cfg = cfg.WithDefaults()
	if cfg.Credentials == nil {
		return nil, errors.New("token source: no credentials")
	}
	s := &Source{
		cfg:    cfg,
		client: sameHostClient(cfg.HTTPClient),
		log:    cfg.Logger,
		obs:    cfg.Observer,
		rand:   cfg.Rand,
		budget: rate.NewLimiter(rate.Every(revocationEvery), revocationBurst),
	}
	s.creds = cfg.Credentials.Current()
	s.scrub.Store(s.lazyScrubber(s.creds, nil))
	s.timer = time.AfterFunc(time.Hour, s.wake)
	s.timer.Stop()
	return s, nil
}

// newScrubber returns a scrubber for the secrets of c and of prev (an
// echo of the credentials just replaced is as much a leak).
func (s *Source) newScrubber(c, prev *Credentials) *scrub.Scrubber {
	// The secrets proper are matched by any window of them; the other
	// values, which may be ordinary text too, whole.
	secrets := []string{c.ClientSecret}
	if c.Key != nil {
		secrets = append(secrets, c.Key.Secrets()...)
	}
	extra := append(scrub.URLSecrets(s.cfg.TokenURL), s.cfg.Secrets...)
	extra = append(extra, c.Secrets...)
	if prev != nil {
		secrets = append(secrets, prev.ClientSecret)
		if prev.Key != nil {
			secrets = append(secrets, prev.Key.Secrets()...)
		}
		extra = append(extra, prev.Secrets...)
	}
	return scrub.NewWith(c.ClientID, secrets, extra...)
}

// lazyScrubber is a scrubber built at its first use. Only a failure is
// described with one, and its index of the secrets' forms takes some
// 16 KiB: a source that never fails, like most of a block's many tenants,
// should not hold it.
type lazyScrubber struct {
	once  sync.Once
	build func() *scrub.Scrubber
	sc    *scrub.Scrubber
}

// lazyScrubber returns the scrubber of newScrubber(c, prev), not built yet.
func (s *Source) lazyScrubber(c, prev *Credentials) *lazyScrubber {
	return &lazyScrubber{build: func() *scrub.Scrubber { return s.newScrubber(c, prev) }}
}

// get builds the scrubber if it is not yet, and returns it.
func (l *lazyScrubber) get() *scrub.Scrubber {
	l.once.Do(func() { l.sc, l.build = l.build(), nil })
	return l.sc
}

func (s *Source) scrubber() *scrub.Scrubber { return s.scrub.Load().get() }

// Scrub removes the source's secrets from text that came from elsewhere.
func (s *Source) Scrub(text string) string { return s.scrubber().Scrub(text) }

// Get returns a valid token, fetching one if needed. A cached valid token is
// returned without locking. Concurrent callers share one fetch; a caller
// whose ctx ends stops waiting without cancelling the fetch for the others.
// While the source is backing off after a failure and holds no valid token,
// Get fails fast with the last error.
//
// While the current token is being replaced because the upstream rejected
// it, Get waits for its replacement; if that fetch fails, the current token
// is returned until it expires.
func (s *Source) Get(ctx context.Context) (*Token, error) {
	// time.Until reads only the monotonic clock (t.usableUntil carries a
	// monotonic reading), which time.Now would read with the wall clock.
	if t := s.cur.Load(); t != nil && t != s.rejected.Load() && time.Until(t.usableUntil) > 0 {
		return t, nil
	}
	return s.slowGet(ctx)
}

// GetReplayable is Get for a request that can be sent again after a 401:
// while the current token is being replaced because the upstream rejected
// it, it returns the current token rather than wait for the replacement
// (the rejection may have been about another request; if it was about the
// token, this request's 401 is replayed with the replacement).
func (s *Source) GetReplayable(ctx context.Context) (*Token, error) {
	if t := s.cur.Load(); t != nil && time.Until(t.usableUntil) > 0 {
		return t, nil
	}
	return s.slowGet(ctx)
}

func (s *Source) slowGet(ctx context.Context) (*Token, error) {
	s.mu.Lock()
	now := time.Now()
	if t := s.cur.Load(); t.Valid(now) {
		f := s.flight
		replacing := f != nil && f.replacing // f.replacing changes under s.mu
		s.mu.Unlock()
		if !replacing || t != s.rejected.Load() {
			return t, nil
		}
		// t was rejected and its replacement is on the way.
		fresh, err := f.wait(ctx)
		if err == nil {
			return fresh, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		return t, nil // no replacement: keep the token we had
	}
	f := s.flight
	if f == nil {
		if s.lastErr != nil && now.Before(s.nextAttempt) {
			err := *s.lastErr
			err.RetryAfter = s.nextAttempt.Sub(now)
			s.mu.Unlock()
			return nil, &err
		}
		f = s.startLocked(false)
	}
	s.mu.Unlock()
	return f.wait(ctx)
}

// Refresh starts a fetch now (or joins the one in flight) even if the
// current token is valid, and waits for it. Backoff is ignored: this is for
// operators who rotated something on the server side.
func (s *Source) Refresh(ctx context.Context) (*Token, error) {
	s.mu.Lock()
	f := s.flight
	if f == nil {
		f = s.startLocked(false)
	}
	s.mu.Unlock()
	return f.wait(ctx)
}

// WarmUp starts a fetch in the background if the source holds no token,
// none is in flight and none failed. It never blocks.
func (s *Source) WarmUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flight == nil && s.lastErr == nil && !s.cur.Load().Valid(time.Now()) {
		s.startLocked(false)
	}
}

// Close stops the refreshes. A fetch in flight runs to its timeout; calls
// after Close still answer (from the cache, or with a one-off fetch) so
// that requests still in flight during a reload complete.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.timer.Stop()
	s.mu.Unlock()
	if s.cfg.HTTPClient == nil {
		s.client.CloseIdleConnections()
	}
	return nil
}

// startLocked starts a fetch; s.mu must be held and no fetch in flight.
// replacing says that it replaces the rejected token.
func (s *Source) startLocked(replacing bool) *flight {
	f := &flight{done: make(chan struct{}), replacing: replacing}
	s.flight = f
	s.timer.Stop()
	go s.run(f, replacing)
	return f
}

// run is a flight's goroutine: one fetch, then its outcome. replacing is
// the flight's purpose when it started (a refresh in flight may be asked
// to replace a rejected token too, which changes only who waits for it).
func (s *Source) run(f *flight, replacing bool) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	c := s.credentials()
	tok, terr, adopted := s.fetch(ctx, c, replacing)
	cancel()
	// A refusal may be of credentials that have changed since (a secret
	// file rewritten during the request): then retry at once.
	retryNow := terr != nil && terr.Kind == KindRefused && s.cfg.Credentials.Current() != c
	s.land(f, tok, terr, adopted, time.Since(start), retryNow)
}

// credentials returns the credentials to use now, and takes note when they
// changed.
func (s *Source) credentials() *Credentials {
	c := s.cfg.Credentials.Current()
	s.mu.Lock()
	prev := s.creds
	s.creds = c
	s.mu.Unlock()
	if c != prev {
		s.scrub.Store(s.lazyScrubber(c, prev))
		s.log.Info("credentials changed; the token request uses the new ones")
		if o, ok := s.obs.(CredentialsObserver); ok {
			o.CredentialsChanged()
		}
	}
	return c
}

// land records a flight's outcome: the new token, or the failure and the
// backoff that follows it, and wakes its waiters.
func (s *Source) land(f *flight, tok *Token, terr *Error, adopted bool, took time.Duration, retryNow bool) {
	s.mu.Lock()
	attempt := s.failures + 1
	if terr == nil {
		tok.refreshAt = tok.obtained.Add(time.Duration(float64(tok.expiry.Sub(tok.obtained)) * (refreshPoint + refreshJitter*s.rand())))
		recovered := s.lastErr != nil
		first := !s.everOK
		s.lastErr, s.failures, s.nextAttempt, s.everOK = nil, 0, time.Time{}, true
		if !f.replacing {
			s.guard.reset()
		}
		if r := s.rejected.Load(); r != nil && r.Value != tok.Value {
			s.rejected.Store(nil) // another token is obtained
		}
		s.cur.Store(tok)
		f.tok = tok
		fields := []zap.Field{zap.Duration("expires_in", tok.expiry.Sub(tok.obtained)), zap.Duration("took", took)}
		switch {
		case adopted:
			s.log.Debug("token adopted from the shared cache", fields...)
		case recovered:
			s.log.Info("token endpoint recovered; token obtained", append(fields, zap.Int("attempt", attempt))...)
		case first:
			s.log.Info("first token obtained", fields...)
		default:
			s.log.Debug("token refreshed", fields...)
		}
	} else {
		prev := s.lastErr
		s.failures++
		backoff := s.backoff(terr)
		if retryNow {
			backoff = 0
		}
		s.lastErr = terr
		s.nextAttempt = time.Now().Add(backoff)
		f.err = terr
		// Log once per state change: a new kind or status of failure.
		if prev == nil || prev.Kind != terr.Kind || prev.Status != terr.Status {
			s.logFailure(terr, attempt, backoff)
		}
	}
	s.flight = nil
	s.scheduleLocked()
	s.mu.Unlock()
	close(f.done)
	if terr == nil && s.obs != nil {
		s.obs.TokenChanged(tok.wallExpiry)
	}
}

// logFailure logs a failed fetch; s.mu is held.
func (s *Source) logFailure(terr *Error, attempt int, backoff time.Duration) {
	fields := []zap.Field{
		zap.String("error", terr.Error()),
		zap.String("kind", terr.Kind.String()),
		zap.Int("attempt", attempt),
		zap.Duration("backoff", backoff),
	}
	if terr.Status != 0 {
		fields = append(fields, zap.Int("status", terr.Status))
	}
	level, msg := FailureLog(terr.Kind, s.cur.Load().Valid(time.Now()))
	s.log.Log(level, msg, fields...)
}

// FailureLog is the level and message of the line a source logs, once per
// state change, when a fetch fails with an error of kind k; serving says
// whether a valid token is still being served. Each names what to check:
// configuration problems (Kind.Misconfigured) are ERRORs whatever the
// token, the others WARNs.
func FailureLog(k Kind, serving bool) (zapcore.Level, string) {
	switch k {
	case KindRefused:
		return zapcore.ErrorLevel, "token endpoint refused the credentials; check client_id, client_secret and scope"
	case KindTLS:
		return zapcore.ErrorLevel, "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate"
	case KindRedirect:
		return zapcore.ErrorLevel, "token endpoint redirected the token request; check token_url"
	}
	var what, check string
	switch k {
	case KindDNS:
		what, check = "the token endpoint's host does not resolve", "check token_url and DNS"
	case KindConnect:
		what, check = "no connection to the token endpoint", "check token_url's host and port, and the network"
	default:
		if serving {
			return zapcore.WarnLevel, "token refresh failed; still serving the current token"
		}
		return zapcore.WarnLevel, "could not obtain a token"
	}
	if serving {
		return zapcore.WarnLevel, "token refresh failed: " + what + "; still serving the current token; " + check
	}
	return zapcore.WarnLevel, "could not obtain a token: " + what + "; " + check
}

// warnDefaultTTL logs, once per source, that an answer gave no usable
// lifetime.
func (s *Source) warnDefaultTTL() {
	s.mu.Lock()
	warn := !s.loggedTTL
	s.loggedTTL = true
	s.mu.Unlock()
	if warn {
		s.log.Warn("token answer has no usable expires_in or JWT exp; assuming default_ttl",
			zap.Duration("default_ttl", s.cfg.DefaultTTL))
	}
}

// Lifetime is the lifetime of the current token as its answer gave it (0
// when the source holds none).
func (s *Source) Lifetime() time.Duration {
	t := s.cur.Load()
	if t == nil {
		return 0
	}
	return t.expiry.Sub(t.obtained)
}
