// Package deskoauth is a Caddy v2 HTTP handler that obtains OAuth2
// client-credentials tokens from Desko's token endpoint, keeps them fresh,
// and sets "Authorization: Bearer <token>" on every request it passes on.
package deskoauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// DefaultReplayBodyLimit is how large a request body may be and still be
// buffered for a replay after an upstream 401.
const DefaultReplayBodyLimit = 1 << 20

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
	// ReplayBodyLimit is the largest request body kept for that replay
	// (default 1 MiB, at most MaxReplayBodyLimit); 0 disables the replay.
	ReplayBodyLimit *int64 `json:"replay_body_limit,omitempty"`
	// ReplayMemory is the process-wide budget, shared by every credential
	// set, for request bodies kept for a replay (default 32 MiB, at most
	// MaxReplayMemory). It is taken as body bytes arrive, never from a
	// declared length, and given back once the upstream has answered
	// anything but a 401. A body that does not fit is forwarded without a
	// replay. When several handlers set it, the largest value applies; 0
	// keeps no body (bodiless requests are still replayed).
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
	// TokenConcurrency bounds the token requests in flight to one token
	// endpoint (scheme, host and port) across every source and tenant of
	// the process (default 8; the smallest setting of the blocks that use
	// an endpoint applies).
	TokenConcurrency int `json:"token_concurrency,omitempty"`

	// ClientKey is the PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)
	// that signs the client assertions of auth_style private_key_jwt,
	// given as {file./path} (or {env.NAME}); a literal PEM is refused.
	ClientKey string `json:"client_key,omitempty"`
	// ClientKeyID is the key ID (kid) sent in the assertions' header.
	ClientKeyID string `json:"client_key_id,omitempty"`
	// ClientKeyAlg chooses PS256 for an RSA ClientKey (default RS256);
	// the other keys' algorithm follows the key.
	ClientKeyAlg string `json:"client_key_alg,omitempty"`
	// ClientAssertionAudience is the aud claim of the client assertions
	// (default: the token URL), for servers that want their issuer.
	ClientAssertionAudience string `json:"client_assertion_audience,omitempty"`

	// Tenant is a placeholder (e.g. {http.request.header.X-Desko-Tenant})
	// whose value picks each request's credentials: a named credentials
	// block first, then CredentialsDir. A value that names nothing is
	// answered 403 and never forwarded.
	Tenant string `json:"tenant,omitempty"`
	// Credentials are the named tenants' credentials, by tenant name.
	Credentials map[string]*TenantCredentials `json:"credentials,omitempty"`
	// CredentialsDir is a folder of tenants: <dir>/<tenant>/client_id,
	// client_secret and, optionally, scope. A tenant's source starts with
	// its first request.
	CredentialsDir string `json:"credentials_dir,omitempty"`
	// TenantIdle releases a CredentialsDir tenant unused this long
	// (default: twice its token's lifetime, at least 10 minutes).
	TenantIdle caddy.Duration `json:"tenant_idle,omitempty"`
	// MaxTenants bounds the live CredentialsDir tenants of the block,
	// least recently used first out (default 10000).
	MaxTenants int `json:"max_tenants,omitempty"`

	tenantName   string     // the tenant these settings are for, if any
	dirTenant    string     // the credentials_dir of that tenant, if it is one of its
	tenants      *tenantSet // the block's tenants, in tenant mode
	tenantsKey   string     // the tenantSets entry this handler holds
	b            *binding   // the source and how requests carry its token, without tenants
	endpointKeys []string   // the endpoints this handler holds
	key          string     // the sources entry this handler holds
	transportKey string     // the transports entry this handler holds
	header       string     // canonical name of the header that carries the token
	prefix       string
	src          *source
	logger       *zap.Logger
	auth         token.AuthStyle // AuthStyle as Validate parsed it
	replay       bool
	limit        int64
}

// SharedCache configures cluster mode: the token of a credential set is
// kept, encrypted under a key derived from the client secret, in a Caddy
// storage shared by the fleet, so the fleet fetches one token per lifetime.
type SharedCache struct {
	// StorageRaw is the storage module to use; default: the config's
	// storage (the `storage` global option, else Caddy's file_system).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.desko_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision expands placeholders and attaches the handler to the shared
// token source of its credential set. It never waits on the network. When
// it fails, Caddy calls Cleanup, which releases what it acquired.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.Validate(); err != nil {
		return err
	}
	h.applyRequestOptions()
	env, err := h.sourceEnv(ctx)
	if err != nil {
		return err
	}
	if h.tenantMode() {
		return h.attachTenants(ctx, env)
	}
	return h.attachWith(env, nil, nil, "", h.WarmUp == nil || *h.WarmUp)
}

// Validate reports configuration errors, naming the subdirective. It only
// looks at the config as written, so `caddy validate` reports the same
// errors whether or not the placeholders are set.
func (h *Handler) Validate() error {
	style, err := token.ParseAuthStyle(h.AuthStyle)
	if err != nil {
		return fmt.Errorf("auth_style: %w", err)
	}
	h.auth = style
	if err := h.validateTenants(); err != nil {
		return err
	}
	if !h.tenantMode() && h.dirTenant == "" {
		if err := h.validateCredentials(); err != nil {
			return err
		}
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
	if err := checkSize("replay_body_limit", h.ReplayBodyLimit, MaxReplayBodyLimit); err != nil {
		return err
	}
	if h.Errors != "" && h.Errors != ErrorsDesko && h.Errors != ErrorsCaddy {
		return fmt.Errorf("errors: expected desko or caddy, got %q", h.Errors)
	}
	if err := checkSize("replay_memory", h.ReplayMemory, MaxReplayMemory); err != nil {
		return err
	}
	for _, s := range h.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
			return fmt.Errorf("scope: %q is not a valid scope", s)
		}
	}
	return nil
}

// Cleanup releases this handler's hold on its token source (or its tenant
// block); a source is closed when no handler holds it any more.
func (h *Handler) Cleanup() error {
	if h.ReplayMemory != nil {
		setReplayMemory(h, -1)
	}
	h.releaseEndpoints()
	if h.tenantsKey != "" {
		_, _ = tenantSets.Delete(h.tenantsKey)
		h.tenantsKey = ""
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
	b := h.b
	if h.tenants != nil {
		var err error
		if b, err = h.tenants.bind(r); err != nil {
			return h.unbound(w, r, err)
		}
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(phSource, b.src.label)
	}
	a := attempt{h: h, b: b, w: w, r: r}
	defer a.end() // counts the outcome, gives back what the attempt holds
	tok, err := a.token()
	if err != nil {
		a.outcome = outcomeUnavailable
		return h.unavailable(w, r, err, b.log)
	}
	if err := a.forward(next, tok); err != nil || a.status != http.StatusUnauthorized {
		return err
	}
	return a.unauthorized(next)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
