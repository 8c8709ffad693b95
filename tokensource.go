package deskoauth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/fleet"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is the Caddy side of the shared token source: the pool of
// sources, what identifies one, its label, and the observer that feeds its
// metrics and events.

// sources holds one token source per credential set, shared by every
// handler (in this config and the next one, during a reload) that uses it.
var sources = caddy.NewUsagePool()

// source is one shared token source and what operators may see of it.
type source struct {
	key      string
	engine   *token.Source
	obs      *sourceObserver
	metrics  *sourceMetrics
	label    string
	clientID string
	tokenURL string
	scopes   []string
}

// Destruct closes the source when the last handler using it is cleaned up.
func (s *source) Destruct() error { return s.engine.Close() }

// attachSource attaches the handler to the shared token source of its
// credential set (creating it if this is the first handler to use it),
// with this config's metrics, events and shared storage.
func (h *Handler) attachSource(ctx caddy.Context, cfg token.Config, creds *token.Credentials, tlsFingerprint string) error {
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
	h.key = sourceKey(cfg, creds, shared, tlsFingerprint)
	label := sourceLabel(cfg, creds)
	metrics := registerMetrics(ctx, label)
	// The source outlives this config: it gets a logger that does not
	// depend on the Provision ctx, and never uses ctx for its requests.
	logger := sourceLogger(h.logger, label, creds.ClientID, cfg.TokenURL)
	val, _, err := sources.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		obs := &sourceObserver{metrics: metrics, label: label}
		cfg.Logger, cfg.Observer = logger, obs
		e, err := token.New(cfg)
		if err != nil {
			return nil, err
		}
		return &source{key: h.key, engine: e, obs: obs, metrics: metrics, label: label,
			clientID: creds.ClientID, tokenURL: token.RedactURL(cfg.TokenURL), scopes: cfg.Scopes}, nil
	})
	if err != nil {
		return fmt.Errorf("starting the token source: %w", err)
	}
	h.src = val.(*source)
	h.logger = logger
	if err := h.src.obs.useEvents(ctx); err != nil {
		return fmt.Errorf("loading the events app: %w", err)
	}
	if store != nil {
		entry, err := fleet.New(store, cfg.TokenURL, cfg.Scopes, func(err error) {
			logger.Warn("releasing the shared token cache lock", zap.Error(err))
		})
		if err != nil {
			return fmt.Errorf("shared_cache: %w", err)
		}
		// The newest config's storage: a storage module of the old config
		// may be cleaned up after a reload.
		entry.Succeed(h.src.engine.CurrentStore())
		h.src.engine.SetStore(entry)
	}
	if h.WarmUp == nil || *h.WarmUp {
		warmUpWaiters.Add(1)
		go warmUpWhenRunning(ctx, h.src.engine)
	}
	return nil
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

// sourceLogger adds the source's stable, non-secret fields to every line.
func sourceLogger(l *zap.Logger, label, clientID, tokenURL string) *zap.Logger {
	return l.With(
		zap.String("source", label),
		zap.String("client_id", clientID),
		zap.String("token_url", token.RedactURL(tokenURL)),
	)
}

// sourceKey identifies a credential set and its fetch settings; the secret
// enters only as its SHA-256.
func sourceKey(c token.Config, creds *token.Credentials, shared, tls string) string {
	secret := sha256.Sum256([]byte(creds.ClientSecret))
	b, _ := json.Marshal([]any{c.TokenURL, creds.ClientID, hex.EncodeToString(secret[:]), c.Scopes, c.Timeout, c.DefaultTTL,
		c.Auth, creds.Params, creds.Headers, shared, tls})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// sourceLabel is the non-secret name of a source in metrics, logs and the
// admin API: the client ID and a short hash of the token URL and scopes.
func sourceLabel(c token.Config, creds *token.Credentials) string {
	sum := sha256.Sum256([]byte(c.TokenURL + "\x00" + strings.Join(c.Scopes, " ")))
	return creds.ClientID + "@" + hex.EncodeToString(sum[:4])
}

// sourceObserver is a source's token.Observer: it counts into the metrics and
// emits events through the newest config's events app.
type sourceObserver struct {
	metrics *sourceMetrics
	label   string
	emit    emitterRef
}

// Fetched implements token.Observer: metrics, then an event.
func (o *sourceObserver) Fetched(err *token.Error, took time.Duration) {
	result := fetchOK
	if err != nil {
		result = err.Kind.String()
	}
	o.metrics.fetched(result, took)
	o.emit.fetched(o.label, err, result, took)
}

// TokenChanged implements token.Observer.
func (o *sourceObserver) TokenChanged(expiry time.Time) { o.metrics.expiry.Set(float64(expiry.Unix())) }

// StoreUsed implements token.Observer.
func (o *sourceObserver) StoreUsed(r token.StoreResult) {
	o.metrics.shared.WithLabelValues(string(r)).Inc()
}
