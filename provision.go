package deskoauth

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// This file holds the steps of Provision: the token request's settings
// expanded into the engine's configuration, the request options, and the
// attachment to the shared token source.

// engineConfig expands the placeholders of the token request's settings
// and returns the engine's configuration, with the defaults applied, and
// the fingerprint of the TLS files read.
func (h *Handler) engineConfig() (engineConfig, string, error) {
	var cfg engineConfig
	var err error
	if cfg.ClientID, err = expand("client_id", h.ClientID); err != nil {
		return cfg, "", err
	}
	if cfg.ClientSecret, err = expand("client_secret", h.ClientSecret); err != nil {
		return cfg, "", err
	}
	if h.TokenURL != "" {
		if cfg.TokenURL, err = expand("token_url", h.TokenURL); err != nil {
			return cfg, "", err
		}
		if err := checkTokenURL(cfg.TokenURL); err != nil {
			return cfg, "", err
		}
	}
	if u, _ := url.Parse(cfg.TokenURL); u.Scheme == "http" && !isLoopbackHost(u) {
		if !h.InsecureHTTP {
			return cfg, "", fmt.Errorf("token_url: http:// to %s would send the client secret in clear text; use https, or add insecure_http if you must", u.Host)
		}
		h.logger.Warn("insecure_http: the client secret and tokens cross the network in clear text", zap.String("token_url", redactURL(cfg.TokenURL)))
	}
	var paramSecrets, headerSecrets []string
	if cfg.Params, paramSecrets, err = expandValues("param", h.Params); err != nil {
		return cfg, "", err
	}
	if cfg.Headers, headerSecrets, err = expandValues("token_header", h.TokenHeaders); err != nil {
		return cfg, "", err
	}
	for k, v := range cfg.Headers {
		if !httpguts.ValidHeaderFieldValue(v) {
			return cfg, "", fmt.Errorf("token_header %s: the expanded value holds control characters (a line break in a file?)", k)
		}
	}
	cfg.Secrets = append(paramSecrets, headerSecrets...)
	cfg.Scopes = h.Scopes
	cfg.Timeout = time.Duration(h.Timeout)
	cfg.DefaultTTL = time.Duration(h.DefaultTTL)
	cfg.AuthStyle, _ = parseAuthStyle(h.AuthStyle) // Validate checked it
	// Defaults now, so that a source's identity (sourceKey) is the same
	// whether a default is written out or not.
	cfg = cfg.withDefaults()
	client, tlsFingerprint, err := h.acquireTransport()
	if err != nil {
		return cfg, "", err
	}
	cfg.HTTPClient = client
	return cfg, tlsFingerprint, nil
}

// applyRequestOptions sets how requests carry the token and whether they
// are replayed, with the defaults applied, and warns about risky settings.
func (h *Handler) applyRequestOptions() {
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
}

// attachSource attaches the handler to the shared token source of its
// credential set (creating it if this is the first handler to use it),
// with this config's metrics, events and shared storage, and starts the
// warm-up.
func (h *Handler) attachSource(ctx caddy.Context, cfg engineConfig, tlsFingerprint string) error {
	var store certmagic.Storage
	shared := "" // part of the source's identity: cluster mode or not, and where
	if h.SharedCache != nil {
		var err error
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
	engineLog := sourceLogger(h.logger, label, cfg.ClientID, cfg.TokenURL)
	val, _, err := sources.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		obs := &sourceObserver{sourceMetrics: h.metrics, label: label}
		cfg.Logger = engineLog
		cfg.Observer = obs
		e, err := newTokenEngine(cfg)
		if err != nil {
			return nil, err
		}
		return &source{key: h.key, engine: e, obs: obs, label: label, clientID: cfg.ClientID, tokenURL: redactURL(cfg.TokenURL), scopes: h.Scopes}, nil
	})
	if err != nil {
		return fmt.Errorf("starting the token engine: %w", err)
	}
	h.src = val.(*source)
	h.logger = engineLog
	if err := h.src.obs.useEvents(ctx); err != nil {
		return fmt.Errorf("loading the events app: %w", err)
	}
	if store != nil {
		sc, err := newSharedCache(store, cfg.TokenURL, cfg.ClientID, h.Scopes, sharedIdentity(cfg), cfg.ClientSecret)
		if err != nil {
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
