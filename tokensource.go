package deskoauth

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
	id       identity
	// hidden keeps a credentials_dir tenant's source out of the status
	// endpoint's list of sources (its tenants are listed, paged, apart).
	hidden bool
	// series is the label the source's series are counted under: its
	// own, or its tenant block's (a credentials_dir tenant's).
	series string
}

// credentialPoll is how often a source whose credentials come from files
// reads them again while the token endpoint refuses the ones it has.
const credentialPoll = time.Second

// Destruct closes the source when the last handler using it is cleaned up.
func (s *source) Destruct() error { return s.engine.Close() }

// sourceEnv is what a config gives the sources its handlers attach to: it
// is taken at Provision, and kept by a tenant block for the tenants it
// starts later, on their first request.
type sourceEnv struct {
	ctx    caddy.Context     // the events app; the warm-up's config
	logger *zap.Logger       // the handler's logger
	store  certmagic.Storage // the shared_cache storage, nil without one
}

// sourceEnv registers the collectors into this config's registry and
// loads the shared_cache storage, if any.
func (h *Handler) sourceEnv(ctx caddy.Context) (sourceEnv, error) {
	registerCollectors(ctx)
	env := sourceEnv{ctx: ctx, logger: h.logger}
	if h.SharedCache != nil {
		var err error
		if env.store, err = h.sharedStorage(ctx); err != nil {
			return env, err
		}
	}
	return env, nil
}

// attachWith attaches h to the shared token source of its credential set,
// starting it if h is the first to use it. creds and cs, when given, are
// the credentials and their source (a credentials_dir tenant's); else h's
// values are expanded. metricsLabel, when given, is the label the
// source's series are counted under (the tenant block's) instead of its
// own. With warmUp, the first token is fetched once the config runs.
func (h *Handler) attachWith(env sourceEnv, creds *token.Credentials, cs token.CredentialSource, metricsLabel string, warmUp bool) error {
	values := h.credentialValues()
	if creds == nil {
		var err error
		if creds, err = values.expand(); err != nil {
			return err
		}
	}
	cfg, tlsFingerprint, err := h.requestConfig()
	if err != nil {
		return err
	}
	id := h.identity(cfg, h.sharedIdentity(), tlsFingerprint)
	h.key = id.key()
	label := id.label(creds.ClientID)
	metrics := metricsFor(cmp.Or(metricsLabel, label))
	// The source outlives this config: it gets a logger that does not
	// depend on the Provision ctx, and never uses ctx for its requests.
	logger := sourceLogger(env.logger, label, creds.ClientID, cfg.TokenURL)
	val, _, err := sources.LoadOrNew(h.key, func() (caddy.Destructor, error) {
		obs := &sourceObserver{metrics: metrics, label: label, pooled: metricsLabel != ""}
		cfg.Credentials = cs
		if cs == nil {
			cfg.Credentials = credentialSource(values, creds, logger, metrics)
		}
		if _, static := cfg.Credentials.(*token.Static); !static {
			cfg.PollCredentials = credentialPoll
		}
		cfg.Logger, cfg.Observer = logger, obs
		e, err := token.New(cfg)
		if err != nil {
			return nil, err
		}
		return &source{key: h.key, engine: e, obs: obs, metrics: metrics, label: label, hidden: metricsLabel != "", series: cmp.Or(metricsLabel, label),
			clientID: creds.ClientID, tokenURL: token.RedactURL(cfg.TokenURL), scopes: cfg.Scopes, id: id}, nil
	})
	if err != nil {
		return fmt.Errorf("starting the token source: %w", err)
	}
	h.src = val.(*source)
	h.logger = logger
	h.b = &binding{src: h.src, header: h.header, prefix: h.prefix, log: logger}
	if err := h.src.obs.useEvents(env.ctx); err != nil {
		return fmt.Errorf("loading the events app: %w", err)
	}
	if env.store != nil {
		entry, err := fleet.New(env.store, cfg.TokenURL, cfg.Scopes, func(err error) {
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
	if warmUp {
		warmUpWaiters.Add(1)
		go warmUpWhenRunning(env.ctx, h.src.engine)
	}
	return nil
}

// sharedIdentity is the part of a source's identity that says whether it
// shares its tokens, and through which storage.
func (h *Handler) sharedIdentity() string {
	switch {
	case h.SharedCache == nil:
		return ""
	case h.SharedCache.StorageRaw == nil:
		return "storage:default"
	}
	return "storage:" + string(h.SharedCache.StorageRaw)
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

// identity is what makes a source a source of its own: two blocks share
// one only when all of it is the same, after defaults. Credential values
// enter as configured — a placeholder, not the value it expands to, whose
// file may change while the source runs — and every value as its SHA-256,
// so that a literal secret is never in clear; the token URL and scopes,
// which do not change, as expanded.
type identity struct {
	TokenURL     string            `json:"token_url"`
	ClientID     string            `json:"client_id"`
	ClientSecret string            `json:"client_secret"`
	ClientKey    string            `json:"client_key"`
	Audience     string            `json:"client_assertion_audience"`
	Scopes       []string          `json:"scopes"`
	Timeout      time.Duration     `json:"timeout"`
	DefaultTTL   time.Duration     `json:"default_ttl"`
	AuthStyle    string            `json:"auth_style"`
	Params       map[string]string `json:"params"`
	TokenHeaders map[string]string `json:"token_headers"`
	SharedCache  string            `json:"shared_cache"`
	TLS          string            `json:"tls"`
}

func (h *Handler) identity(cfg token.Config, shared, tlsFingerprint string) identity {
	clientID, clientSecret, clientKey := h.ClientID, h.ClientSecret, h.ClientKey
	if h.dirTenant != "" { // a credentials_dir tenant: its files, as placeholders would name them
		clientID = "dir:" + h.dirTenant + "/" + h.tenantName + "/" + dirClientID
		clientSecret = "dir:" + h.dirTenant + "/" + h.tenantName + "/" + dirClientSecret
	}
	hashed := func(m map[string]string) map[string]string {
		out := make(map[string]string, len(m))
		for k, v := range m {
			out[k] = sha256Hex(v)
		}
		return out
	}
	return identity{
		TokenURL:     cfg.TokenURL,
		ClientID:     sha256Hex(clientID),
		ClientSecret: sha256Hex(clientSecret),
		ClientKey:    sha256Hex(clientKey + "\x00" + h.ClientKeyID + "\x00" + h.ClientKeyAlg),
		Audience:     h.ClientAssertionAudience,
		Scopes:       cfg.Scopes,
		Timeout:      cfg.Timeout,
		DefaultTTL:   cfg.DefaultTTL,
		AuthStyle:    cfg.Auth.String(),
		Params:       hashed(h.Params),
		TokenHeaders: hashed(h.TokenHeaders),
		SharedCache:  shared,
		TLS:          tlsFingerprint,
	}
}

// key is the sources pool's key of the identity: its SHA-256, in hex.
func (id identity) key() string {
	b, err := json.Marshal(id)
	if err != nil {
		panic("desko_auth: encoding a source identity: " + err.Error()) // strings, maps and durations always encode
	}
	return sha256Hex(string(b))
}

// label is the non-secret name of a source in metrics, logs and the admin
// API: the client ID it was started with and the first 8 hex digits of
// its key. It is the same across reloads and restarts for the same
// configuration.
func (id identity) label(clientID string) string { return clientID + "@" + id.key()[:8] }

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// sourceObserver is a source's token.Observer: it counts into the metrics and
// emits events through the newest config's events app.
type sourceObserver struct {
	metrics *sourceMetrics
	label   string
	emit    emitterRef
	// pooled is set for a credentials_dir tenant, counted under its
	// block's label with every other tenant of the block: one expiry
	// gauge cannot say when each of their tokens expires, and the last
	// one set would stay after its tenant is released (an alert on it
	// would fire for a tenant gone idle). The block's gauge stays 0.
	pooled bool
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
func (o *sourceObserver) TokenChanged(expiry time.Time) {
	if !o.pooled {
		o.metrics.expiry.Set(float64(expiry.Unix()))
	}
}

// StoreUsed implements token.Observer.
func (o *sourceObserver) StoreUsed(r token.StoreResult) {
	o.metrics.shared.WithLabelValues(string(r)).Inc()
}

// CredentialsChanged implements token.CredentialsObserver: a metric and an
// event.
func (o *sourceObserver) CredentialsChanged() {
	o.metrics.credentials[credentialsChanged].Inc()
	o.emit.credentialsChanged(o.label)
}

var _ token.CredentialsObserver = (*sourceObserver)(nil)
