package deskoauth

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file holds the steps of Provision: the token request's settings
// expanded into the token source's configuration, and the request options.
// The attachment to the shared token source is in tokensource.go.

// requestConfig expands the placeholders of the token request's settings
// other than the credentials and returns the token source's configuration,
// with the defaults applied, and the fingerprint of the TLS files read. It
// holds the handler's transport and token endpoint until Cleanup.
func (h *Handler) requestConfig() (token.Config, string, error) {
	var cfg token.Config
	var err error
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
		h.logger.Warn("insecure_http: the client secret and tokens cross the network in clear text", zap.String("token_url", token.RedactURL(cfg.TokenURL)))
	}
	cfg.Scopes = h.Scopes
	cfg.Timeout = time.Duration(h.Timeout)
	cfg.DefaultTTL = time.Duration(h.DefaultTTL)
	cfg.Auth = h.auth
	cfg.AssertionAudience = h.ClientAssertionAudience
	// Defaults now, so that a source's identity is the same whether a
	// default is written out or not.
	cfg = cfg.WithDefaults()
	client, tlsFingerprint, err := h.acquireTransport()
	if err != nil {
		return cfg, "", err
	}
	cfg.HTTPClient = client
	cfg.Endpoint = h.acquireEndpoint(cfg.TokenURL)
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
	h.warnLiterals()
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

// literalWarning ends every WARN about a credential written into the
// config.
const literalWarning = "anyone who can read the admin API's /config/ can see it; use {env.NAME} or {file./path} instead " +
	"(a Caddyfile {$NAME} is substituted into the config and is literal too)"

// warnLiterals warns about credentials written into the config as they
// are: the client secret, and the token URL's query parameters, param
// values and token_header values whose names look like credentials.
func (h *Handler) warnLiterals() {
	if h.ClientSecret != "" && !placeholderRE.MatchString(h.ClientSecret) {
		h.logger.Warn("client_secret is a literal value: " + literalWarning)
	}
	if u, err := url.Parse(h.TokenURL); err == nil && !placeholderRE.MatchString(h.TokenURL) {
		for name, vals := range u.Query() {
			if credentialName(name) && slices.ContainsFunc(vals, func(v string) bool { return v != "" }) {
				h.logger.Warn("token_url has a query parameter that looks like a credential, written as it is: "+literalWarning,
					zap.String("parameter", name))
			}
		}
	}
	for field, m := range map[string]map[string]string{"param": h.Params, "token_header": h.TokenHeaders} {
		for name, v := range m {
			if credentialName(name) && v != "" && !placeholderRE.MatchString(v) {
				h.logger.Warn(field+" looks like a credential and is a literal value: "+literalWarning, zap.String("name", name))
			}
		}
	}
}

// credentialWords are the parts of a name that mark a credential.
var credentialWords = []string{"key", "secret", "token", "passw", "pwd", "auth", "signature", "sig", "credential", "session", "cookie", "bearer"}

// credentialName reports whether a parameter or header name looks like it
// carries a credential (api_key, X-Api-Key, client_assertion, access_token,
// password…).
func credentialName(name string) bool {
	n := strings.ToLower(name)
	if n == "client_assertion" {
		return true
	}
	return slices.ContainsFunc(credentialWords, func(w string) bool { return strings.Contains(n, w) })
}
