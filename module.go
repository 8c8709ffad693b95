// Package deskoauth is a Caddy v2 HTTP handler that obtains OAuth2
// client-credentials tokens from Desko's token endpoint, keeps them fresh,
// and sets "Authorization: Bearer <token>" on every request it passes on.
package deskoauth

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// DefaultReplayBodyLimit is how large a request body may be and still be
// buffered for a replay after an upstream 401.
const DefaultReplayBodyLimit = 1 << 20

// sources holds one token engine per credential set, shared by every
// handler (in this config and the next one, during a reload) that uses it.
var sources = caddy.NewUsagePool()

// Handler is the desko_auth HTTP handler. It replaces any inbound
// Authorization header with a Desko access token obtained with the OAuth2
// client-credentials grant, and replays a request once with a fresh token if
// the upstream answers 401.
type Handler struct {
	// ClientID is the application's client ID. Accepts {env.*} and {file.*}.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret is the application's client secret. Accepts {env.*} and
	// {file.*}; a literal value is visible to anyone who can read the admin
	// API's /config/.
	ClientSecret string `json:"client_secret,omitempty"`
	// Scopes are requested joined by single spaces; none means no scope.
	Scopes []string `json:"scopes,omitempty"`
	// TokenURL is the token endpoint (default Desko's). Accepts {env.*}
	// and {file.*}.
	TokenURL string `json:"token_url,omitempty"`
	// Timeout bounds one token request (default 10s).
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// DefaultTTL is the lifetime assumed for a token whose answer has no
	// usable expires_in and no JWT exp claim (default 5m).
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`
	// RetryOnUnauthorized replays a request once with a new token when
	// the upstream answers 401 (default true).
	RetryOnUnauthorized *bool `json:"retry_on_unauthorized,omitempty"`
	// ReplayBodyLimit is the largest request body buffered for that replay
	// (default 1 MiB); 0 disables the replay.
	ReplayBodyLimit *int64 `json:"replay_body_limit,omitempty"`
	// ReplayMemory is the process-wide budget, shared by every credential
	// set, for request bodies kept for a replay (default 32 MiB). A body
	// that does not fit is forwarded without a replay. When several
	// handlers set it, the largest value applies; 0 keeps no body
	// (bodiless requests are still replayed).
	ReplayMemory *int64 `json:"replay_memory,omitempty"`
	// WarmUp starts the first token request in the background as soon as
	// the config runs, never during `caddy validate` (default true).
	WarmUp *bool `json:"warm_up,omitempty"`
	// AuthStyle is how the client authenticates: "json" (default,
	// Desko's format), "form" (RFC 6749 client_secret_post) or "basic"
	// (client_secret_basic).
	AuthStyle string `json:"auth_style,omitempty"`
	// Params are extra token request parameters (audience, resource…).
	Params map[string]string `json:"params,omitempty"`
	// TokenHeaders are extra headers sent to the token endpoint.
	TokenHeaders map[string]string `json:"token_headers,omitempty"`
	// Header is the request header that carries the token (default
	// Authorization); an inbound header of that name is always replaced.
	Header string `json:"header,omitempty"`
	// Prefix goes before the token in that header (default "Bearer ").
	Prefix *string `json:"prefix,omitempty"`
	// TLSCA is a PEM file of the CAs trusted for the token endpoint,
	// instead of the system's.
	TLSCA string `json:"tls_ca,omitempty"`
	// TLSClientCert is a PEM certificate file and its key file, for token
	// endpoints that require mutual TLS.
	TLSClientCert []string `json:"tls_client_cert,omitempty"`
	// InsecureHTTP allows an http:// token URL to a host that is not
	// loopback: the secret then crosses the network in clear text.
	InsecureHTTP bool `json:"insecure_http,omitempty"`
	// Errors says how a request that could not get a token is answered:
	// "desko" (default) answers 502/503 here in Desko's error shape;
	// "caddy" returns the error to Caddy, so that handle_errors routes
	// answer it (with {http.desko_auth.error} and {http.error.status_code}).
	Errors string `json:"errors,omitempty"`
	// SharedCache, when present, shares tokens with every Caddy instance
	// that uses the same storage (cluster mode).
	SharedCache *SharedCache `json:"shared_cache,omitempty"`

	key          string
	transportKey string // the transports entry this handler holds
	header       string // canonical name of the header that carries the token
	prefix       string
	src          *source
	logger       *zap.Logger
	metrics      *sourceMetrics
	replay       bool
	limit        int64
	hdrCache     *atomic.Pointer[headerValue]
}

// SharedCache configures cluster mode: the token of a credential set is
// kept, encrypted under a key derived from the client secret, in a Caddy
// storage shared by the fleet, so the fleet fetches one token per lifetime.
type SharedCache struct {
	// StorageRaw is the storage module to use; default: the config's
	// storage (the `storage` global option, else Caddy's file_system).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
}

// headerValue caches the Authorization value built for one token, so the
// hot path does not concatenate strings.
type headerValue struct {
	tok   *Token
	value string
}

// source is one shared token engine and what operators may see of it.
type source struct {
	key      string
	engine   *Engine
	obs      *sourceObserver
	label    string
	clientID string
	tokenURL string
	scopes   []string
}

// Destruct closes the engine when the last handler using it is cleaned up.
func (s *source) Destruct() error { return s.engine.Close() }

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.desko_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// placeholderRE finds the {env.*} and {file.*} placeholders of a value, so
// errors can name them without ever showing the value.
var placeholderRE = regexp.MustCompile(`\{(?:env|file)\.[^{}]+\}`)

// Provision expands placeholders and attaches the handler to the shared
// token engine for its credential set. It never waits on the network.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.hdrCache = new(atomic.Pointer[headerValue])
	if err := h.Validate(); err != nil {
		return err
	}
	clientID, err := expand("client_id", h.ClientID)
	if err != nil {
		return err
	}
	secret, err := expand("client_secret", h.ClientSecret)
	if err != nil {
		return err
	}
	tokenURL := DefaultTokenURL
	if h.TokenURL != "" {
		if tokenURL, err = expand("token_url", h.TokenURL); err != nil {
			return err
		}
		if err := checkTokenURL(tokenURL); err != nil {
			return err
		}
	}
	if u, _ := url.Parse(tokenURL); u.Scheme == "http" && !isLoopbackHost(u) {
		if !h.InsecureHTTP {
			return fmt.Errorf("token_url: http:// to %s would send the client secret in clear text; use https, or add insecure_http if you must", u.Host)
		}
		h.logger.Warn("insecure_http: the client secret and tokens cross the network in clear text", zap.String("token_url", redactURL(tokenURL)))
	}
	params, paramSecrets, err := expandValues("param", h.Params)
	if err != nil {
		return err
	}
	tokenHeaders, headerSecrets, err := expandValues("token_header", h.TokenHeaders)
	if err != nil {
		return err
	}
	for k, v := range tokenHeaders {
		if !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("token_header %s: the expanded value holds control characters (a line break in a file?)", k)
		}
	}
	style, _ := ParseAuthStyle(h.AuthStyle)
	client, tlsFingerprint, err := h.acquireTransport()
	if err != nil {
		return err
	}
	h.header = http.CanonicalHeaderKey(cmp.Or(h.Header, "Authorization"))
	if h.header != "Authorization" {
		h.logger.Warn("header: Caddy redacts only Authorization and cookies in its logs; with reverse_proxy logging at DEBUG, "+
			"the token in this header would be logged: keep such logs at INFO or above", zap.String("header", h.header))
	}
	h.prefix = "Bearer "
	if h.Prefix != nil {
		h.prefix = *h.Prefix
	}
	if !placeholderRE.MatchString(h.ClientSecret) {
		h.logger.Warn("client_secret is a literal value: anyone who can read the admin API's /config/ can see it; " +
			"use {env.NAME} or {file./path} instead (a Caddyfile {$NAME} is substituted into the config and is literal too)")
	}

	h.replay = h.RetryOnUnauthorized == nil || *h.RetryOnUnauthorized
	h.limit = DefaultReplayBodyLimit
	if h.ReplayBodyLimit != nil {
		h.limit = *h.ReplayBodyLimit
	}
	if h.limit == 0 {
		h.replay = false
	}
	if h.ReplayMemory != nil {
		setReplayMemory(h, *h.ReplayMemory)
	}

	cfg := Config{
		TokenURL:     tokenURL,
		ClientID:     clientID,
		ClientSecret: secret,
		Scopes:       h.Scopes,
		Timeout:      cmp.Or(time.Duration(h.Timeout), DefaultTimeout),
		DefaultTTL:   cmp.Or(time.Duration(h.DefaultTTL), DefaultTTL),
		AuthStyle:    style,
		Params:       params,
		Headers:      tokenHeaders,
		Secrets:      append(paramSecrets, headerSecrets...),
		HTTPClient:   client,
	}
	var store certmagic.Storage
	shared := "" // part of the engine's identity: cluster mode or not, and where
	if h.SharedCache != nil {
		if store, err = h.sharedStorage(ctx); err != nil {
			return err
		}
		shared = "storage:" + string(h.SharedCache.StorageRaw)
		if h.SharedCache.StorageRaw == nil {
			shared = "storage:default"
		}
	}
	h.key = sourceKey(cfg, shared, tlsFingerprint)
	label := sourceLabel(cfg)
	h.metrics = registerMetrics(ctx, label)
	// The engine outlives this config: it gets a logger that does not
	// depend on the Provision ctx, and never uses ctx for its requests.
	engineLog := sourceLogger(h.logger, label, clientID, tokenURL)
	val, _, err := sources.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		obs := &sourceObserver{sourceMetrics: h.metrics, label: label}
		cfg.Logger = engineLog
		cfg.Observer = obs
		e, err := NewEngine(cfg)
		if err != nil {
			return nil, err
		}
		return &source{key: h.key, engine: e, obs: obs, label: label, clientID: clientID, tokenURL: redactURL(tokenURL), scopes: h.Scopes}, nil
	})
	if err != nil {
		return fmt.Errorf("starting the token engine: %w", err)
	}
	h.src = val.(*source)
	h.logger = engineLog
	if err := h.src.obs.useEvents(ctx); err != nil {
		_ = h.Cleanup()
		return fmt.Errorf("loading the events app: %w", err)
	}
	if store != nil {
		sc, err := newSharedCache(store, tokenURL, clientID, h.Scopes, sharedIdentity(cfg), secret)
		if err != nil {
			_ = h.Cleanup()
			return fmt.Errorf("shared_cache: %w", err)
		}
		sc.unlockFailed = func(err error) { engineLog.Warn("releasing the shared token cache lock", zap.Error(err)) }
		// The newest config's storage: a storage module of the old config
		// may be cleaned up after a reload.
		h.src.engine.setShared(sc)
	}
	if h.WarmUp == nil || *h.WarmUp {
		warmUpWaiters.Add(1)
		go warmUpWhenRunning(ctx, h.src.engine)
	}
	return nil
}

// warmUpPoll is how often a warm-up checks whether its config runs yet.
const warmUpPoll = 25 * time.Millisecond

// warmUpWaiters counts the warm-ups waiting for their config to run (for
// tests).
var warmUpWaiters atomic.Int64

// warmUpWhenRunning starts e's warm-up once the config provisioned with ctx
// is the running one, and gives up when ctx ends first. So `caddy
// validate`, `caddy adapt --validate` and a config that fails to start send
// no token request and write nothing to the shared storage. Caddy has no
// "validating" flag, but it makes a config the active one
// (caddy.ActiveContext) only once all its apps have started, and cancels a
// config's context when validation ends, when the config fails to start and
// when it is replaced. Polling is cheap (a read lock) and lasts only from
// Provision to the start of the servers.
func warmUpWhenRunning(ctx caddy.Context, e *Engine) {
	defer warmUpWaiters.Add(-1)
	tick := time.NewTicker(warmUpPoll)
	defer tick.Stop()
	for {
		if ctx.Err() != nil {
			return
		}
		if isActiveConfig(ctx) {
			e.WarmUp()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// isActiveConfig reports whether ctx belongs to the running config. A
// module's context wraps its config's root context (the http app adds a
// value), so the two are told apart by their Done channel, which is the
// root's.
func isActiveConfig(ctx caddy.Context) bool {
	active := caddy.ActiveContext()
	return active.Context != nil && active.Done() == ctx.Done()
}

// sharedIdentity is what, besides the token URL, client ID and scopes, sets
// apart the tokens of a credential set in the shared cache: its extra
// parameters and token request headers (an audience, a tenant…).
func sharedIdentity(c Config) map[string]string {
	if len(c.Params) == 0 && len(c.Headers) == 0 {
		return nil
	}
	id := map[string]string{}
	for k, v := range c.Params {
		id["param:"+k] = v
	}
	for k, v := range c.Headers {
		id["header:"+http.CanonicalHeaderKey(k)] = v
	}
	return id
}

// sharedStorage loads the shared_cache storage module, or the config's.
func (h *Handler) sharedStorage(ctx caddy.Context) (certmagic.Storage, error) {
	if h.SharedCache.StorageRaw == nil {
		if st := ctx.Storage(); st != nil {
			return st, nil
		}
		return caddy.DefaultStorage, nil
	}
	mod, err := ctx.LoadModule(h.SharedCache, "StorageRaw")
	if err != nil {
		return nil, fmt.Errorf("shared_cache: loading storage module: %w", err)
	}
	st, err := mod.(caddy.StorageConverter).CertMagicStorage()
	if err != nil {
		return nil, fmt.Errorf("shared_cache: creating storage: %w", err)
	}
	return st, nil
}

// expand resolves {env.*} and {file.*} placeholders in a field. An empty
// result is an error that names the field and its placeholders, never the
// value.
func expand(field, raw string) (string, error) {
	v, err := caddy.NewReplacer().ReplaceOrErr(raw, true, true)
	if err == nil && v != "" {
		return v, nil
	}
	// Say which part is wrong. Caddy's own errors quote the placeholder,
	// which for an unknown one may be a piece of a literal secret.
	if _, err := caddy.NewReplacer().ReplaceOrErr(raw, false, true); err != nil {
		return "", fmt.Errorf("%s: has a placeholder other than {env.*} and {file.*}; write a literal brace as \\{ or \\}", field)
	}
	var empty []string
	for _, ph := range placeholderRE.FindAllString(raw, -1) {
		if s, _ := caddy.NewReplacer().ReplaceOrErr(ph, false, false); s == "" {
			empty = append(empty, ph)
		}
	}
	if len(empty) == 0 {
		return "", fmt.Errorf("%s: is empty", field)
	}
	return "", fmt.Errorf("%s: placeholder %s expanded to an empty value (unset variable or unreadable file)", field, strings.Join(empty, ", "))
}

// expandValues expands the {env.*} and {file.*} placeholders of the values
// of a param or token_header map, like expand does for the secret. It
// returns the expanded map (the handler's own stays as written, so that
// /config/ shows placeholders, never values) and the values that came from
// placeholders, which are scrubbed from errors like the secret. A literal
// empty value stays empty.
func expandValues(field string, m map[string]string) (map[string]string, []string, error) {
	if m == nil {
		return nil, nil, nil
	}
	out := make(map[string]string, len(m))
	var secrets []string
	for k, v := range m {
		if v == "" {
			out[k] = v
			continue
		}
		x, err := expand(field+" "+k, v)
		if err != nil {
			return nil, nil, err
		}
		out[k] = x
		if x != v {
			secrets = append(secrets, x)
		}
	}
	return out, secrets, nil
}

// checkTokenURL accepts absolute http and https URLs only.
func checkTokenURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		// Not %w: url.Error's text holds the whole URL, keys and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("token_url: not a valid URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("token_url: scheme must be http or https, got %q", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("token_url: has no host")
	}
	if u.User != nil {
		return errors.New("token_url: must not contain user information")
	}
	return nil
}

// sourceLogger adds the source's stable, non-secret fields to every line.
func sourceLogger(l *zap.Logger, label, clientID, tokenURL string) *zap.Logger {
	return l.With(
		zap.String("source", label),
		zap.String("client_id", clientID),
		zap.String("token_url", redactURL(tokenURL)),
	)
}

// redactURL drops the query string, which some endpoints use for keys.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "invalid-url"
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

// sourceKey identifies a credential set and its fetch settings; the secret
// enters only as its SHA-256.
func sourceKey(c Config, shared, tls string) string {
	secret := sha256.Sum256([]byte(c.ClientSecret))
	b, _ := json.Marshal([]any{c.TokenURL, c.ClientID, hex.EncodeToString(secret[:]), c.Scopes, c.Timeout, c.DefaultTTL,
		c.AuthStyle, c.Params, c.Headers, shared, tls})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// sourceLabel is the non-secret name of a source in metrics, logs and the
// admin API: the client ID and a short hash of the token URL and scopes.
func sourceLabel(c Config) string {
	sum := sha256.Sum256([]byte(c.TokenURL + "\x00" + strings.Join(c.Scopes, " ")))
	return c.ClientID + "@" + hex.EncodeToString(sum[:4])
}

// Validate reports configuration errors, naming the subdirective. It only
// looks at the config as written, so `caddy validate` reports the same
// errors whether or not the placeholders are set.
func (h *Handler) Validate() error {
	if strings.TrimSpace(h.ClientID) == "" {
		return errors.New("client_id: is required")
	}
	if strings.TrimSpace(h.ClientSecret) == "" {
		return errors.New("client_secret: is required")
	}
	if h.TokenURL != "" && !placeholderRE.MatchString(h.TokenURL) {
		if err := checkTokenURL(h.TokenURL); err != nil {
			return err
		}
	}
	if err := checkDurationFloor("timeout", h.Timeout, MinTimeout); err != nil {
		return err
	}
	if err := checkDurationFloor("default_ttl", h.DefaultTTL, MinDefaultTTL); err != nil {
		return err
	}
	if err := h.checkHeaderOptions(); err != nil {
		return err
	}
	if h.ReplayBodyLimit != nil && *h.ReplayBodyLimit < 0 {
		return errors.New("replay_body_limit: must not be negative")
	}
	if h.Errors != "" && h.Errors != ErrorsDesko && h.Errors != ErrorsCaddy {
		return fmt.Errorf("errors: %q is not desko or caddy", h.Errors)
	}
	if h.ReplayMemory != nil && *h.ReplayMemory < 0 {
		return errors.New("replay_memory: must not be negative")
	}
	for _, s := range h.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
			return fmt.Errorf("scope: %q is not a valid scope", s)
		}
	}
	return nil
}

// The smallest timeout and default_ttl accepted. Below them a value is
// almost surely a unit mistake (a bare JSON number is nanoseconds), and
// would make every token request time out or every token expire at once.
const (
	MinTimeout    = 100 * time.Millisecond
	MinDefaultTTL = time.Second
)

// checkDurationFloor rejects a duration option set below its floor (0
// means the default), with a message that shows the unit mistake.
func checkDurationFloor(field string, d caddy.Duration, floor time.Duration) error {
	if d == 0 || time.Duration(d) >= floor {
		return nil
	}
	if d < 0 {
		return fmt.Errorf("%s: must be positive, got %s", field, time.Duration(d))
	}
	return fmt.Errorf("%s: %s is below the %s minimum; durations in JSON config are nanoseconds unless written as a string like \"5m\"",
		field, time.Duration(d), floor)
}

// Cleanup releases this handler's hold on its token engine; the engine is
// closed when no handler holds it any more.
func (h *Handler) Cleanup() error {
	if h.ReplayMemory != nil {
		setReplayMemory(h, -1)
	}
	if h.transportKey != "" {
		_, _ = transports.Delete(h.transportKey)
		h.transportKey = ""
	}
	if h.key == "" {
		return nil
	}
	_, err := sources.Delete(h.key)
	h.key = ""
	return err
}

// ServeHTTP sets the token header and calls next. A request for which no
// token can be had is answered here and never forwarded. The status of
// every answer is watched: a 401 tells the token source that the token it
// carried was rejected, and, where the request can be sent again, it is
// replayed once with a new token.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(phSource, h.src.label)
	}
	tok, err := h.src.engine.Get(r.Context())
	if err != nil {
		h.metrics.request("unavailable")
		return h.unavailable(w, r, err)
	}
	value := h.setAuthorization(r, tok)
	if _, ok := r.Header["Connection"]; ok {
		h.keepTokenHeader(r)
	}

	// Decide whether this request could be replayed, and keep its body
	// for that if it has one.
	replay, outcome := h.replay, "injected"
	var body *replayBody
	if replay {
		switch up := r.Header["Upgrade"]; {
		case r.Method == http.MethodConnect || (len(up) > 0 && up[0] != ""):
			replay = false
		case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		case r.ContentLength > h.limit:
			replay = false
		default:
			if body = newReplayBody(r.Body, r.ContentLength, h.limit); body == nil {
				replay, outcome = false, "over_replay_budget"
			} else {
				defer body.release()
				r.Body = body
			}
		}
	}
	var saved headerSnapshot
	if replay {
		saved.take(w.Header())
	}
	ww := newWatchWriter(w, replay)
	err = next.ServeHTTP(ww, r)
	status, held := ww.status, ww.held
	if status != http.StatusSwitchingProtocols {
		defer ww.free() // an upgraded connection may outlive this call
	}
	if body != nil && body.skippedForBudget() {
		outcome = "over_replay_budget"
	}
	if err != nil || status != http.StatusUnauthorized {
		if status != 0 && status != http.StatusUnauthorized {
			tok.Accepted()
		}
		h.metrics.request(outcome)
		return err
	}

	// The upstream answered 401. It counts against the token only if the
	// request still carried it.
	carried := h.carries(r, value)
	if !held {
		// Not replayable (or the 401 was too large to hold): the client
		// gets it as it came, and the token source hears of it.
		if carried {
			h.src.engine.Invalidate(tok)
		}
		h.metrics.request(outcome)
		return nil
	}
	var again io.ReadCloser // the body for the replay
	if body != nil {
		var ok bool
		if again, ok = body.rewind(); !ok {
			if carried {
				h.src.engine.Invalidate(tok)
			}
			if body.skippedForBudget() {
				outcome = "over_replay_budget"
			}
			h.metrics.request(outcome)
			return ww.sendHeld()
		}
	}
	var fresh *Token
	if carried {
		fresh = h.src.engine.Replace(r.Context(), tok)
	}
	if fresh == nil {
		// No newer token: the 401 goes to the client as it came.
		h.metrics.request("replay_failed")
		h.logger.Debug("upstream answered 401 and no newer token is available; passing it through")
		return ww.sendHeld()
	}
	return h.replayWith(w, r, next, fresh, again, &saved)
}

// replayWith sends r once more with the fresh token, streaming the answer.
func (h *Handler) replayWith(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, fresh *Token, body io.ReadCloser, saved *headerSnapshot) error {
	// Undo what the first attempt wrote into the shared header map.
	saved.restoreInto(w.Header())
	if body != nil {
		r.Body = body
	}
	value := h.setAuthorization(r, fresh)
	ww := newWatchWriter(w, false)
	err := next.ServeHTTP(ww, r)
	status := ww.status
	if status != http.StatusSwitchingProtocols {
		defer ww.free()
	}
	switch {
	case err != nil:
		h.metrics.request("replay_failed")
		return err
	case status == http.StatusUnauthorized:
		if h.carries(r, value) {
			h.src.engine.Invalidate(fresh)
		}
		h.metrics.request("replay_failed")
		h.logger.Warn("upstream answered 401 again after a token refresh; passing it through",
			zap.String("method", r.Method), zap.String("uri", r.URL.Path))
		return nil
	}
	if status != 0 {
		fresh.Accepted()
	}
	h.metrics.request("replayed")
	return nil
}

// setAuthorization replaces every inbound value of the token header
// (Authorization unless configured otherwise) and returns the value set.
func (h *Handler) setAuthorization(r *http.Request, tok *Token) string {
	hv := h.hdrCache.Load()
	if hv == nil || hv.tok != tok {
		hv = &headerValue{tok: tok, value: h.prefix + tok.Value}
		h.hdrCache.Store(hv)
	}
	r.Header[h.header] = []string{hv.value}
	return hv.value
}

// carries reports whether r still holds the token header as set, so that a
// 401 to a request whose token something downstream removed or changed
// does not count against the token.
func (h *Handler) carries(r *http.Request, value string) bool {
	v := r.Header[h.header]
	return len(v) == 1 && v[0] == value
}

// keepTokenHeader removes the token header's name from the inbound
// Connection header: a client could otherwise mark it hop-by-hop, and
// reverse_proxy would strip the token before the upstream sees it.
func (h *Handler) keepTokenHeader(r *http.Request) {
	vals := r.Header["Connection"]
	var kept []string
	changed := false
	for _, v := range vals {
		var parts []string
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), h.header) {
				changed = true
				continue
			}
			parts = append(parts, f)
		}
		if len(parts) > 0 {
			kept = append(kept, strings.Join(parts, ","))
		}
	}
	if !changed {
		return
	}
	if len(kept) == 0 {
		delete(r.Header, "Connection")
		return
	}
	r.Header["Connection"] = kept
}

// headerSnapshot remembers what a response header map held, to restore it
// before a replay. It is a shallow copy, which is enough: handlers
// downstream (reverse_proxy) add keys and append values; they do not edit
// the existing value slices in place. Small maps (Caddy's has "Server" and
// little else at this point) are copied into arrays that stay on the stack.
type headerSnapshot struct {
	n     int
	keys  [8]string
	vals  [8][]string
	spill http.Header // for a larger map
}

func (s *headerSnapshot) take(h http.Header) {
	if len(h) > len(s.keys) {
		s.spill = maps.Clone(h)
		return
	}
	for k, v := range h {
		s.keys[s.n], s.vals[s.n] = k, v
		s.n++
	}
}

// restoreInto makes h hold exactly what was taken.
func (s *headerSnapshot) restoreInto(h http.Header) {
	clear(h)
	for k, v := range s.spill {
		h[k] = v
	}
	for i := range s.n {
		h[s.keys[i]] = s.vals[i]
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
