package deskoauth

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is the configuration of a block that serves many tenants: the
// credentials each tenant has (named blocks, or files in a folder), the
// checks of a tenant's name, and a tenant's settings as the block's with
// its own on top.

// TenantCredentials are one tenant's credentials and the token-request
// settings it sets for itself; what it leaves out comes from its block.
type TenantCredentials struct {
	// ClientID is the tenant's client ID. Accepts {env.*} and {file.*}.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret is the tenant's client secret. Accepts {env.*} and
	// {file.*}.
	ClientSecret string `json:"client_secret,omitempty"`
	// ClientKey is the PEM private key for auth_style private_key_jwt,
	// given as {file./path} or {env.NAME}.
	ClientKey string `json:"client_key,omitempty"`
	// ClientKeyID is the key ID (kid) of ClientKey's assertions.
	ClientKeyID string `json:"client_key_id,omitempty"`
	// ClientKeyAlg chooses PS256 over RS256 for an RSA ClientKey.
	ClientKeyAlg string `json:"client_key_alg,omitempty"`
	// ClientAssertionAudience is the aud of the assertions (default: the
	// token URL).
	ClientAssertionAudience string `json:"client_assertion_audience,omitempty"`
	// Scopes are requested joined by single spaces.
	Scopes []string `json:"scopes,omitempty"`
	// TokenURL is the tenant's token endpoint.
	TokenURL string `json:"token_url,omitempty"`
	// Timeout bounds one token request.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// DefaultTTL is the lifetime assumed for a token whose answer gives
	// none.
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`
	// AuthStyle is how the tenant's client authenticates.
	AuthStyle string `json:"auth_style,omitempty"`
	// Params are extra token request parameters, added to the block's.
	Params map[string]string `json:"params,omitempty"`
	// TokenHeaders are extra token request headers, added to the
	// block's.
	TokenHeaders map[string]string `json:"token_headers,omitempty"`
	// Header is the request header that carries the tenant's token.
	Header string `json:"header,omitempty"`
	// Prefix goes before the token in that header.
	Prefix *string `json:"prefix,omitempty"`
}

// maxTenantName is the longest tenant value that can name a tenant.
const maxTenantName = 128

// errUnknownTenant is the error of a request whose tenant value names no
// credentials.
var errUnknownTenant = errors.New("unknown tenant")

// validTenantName reports whether v may name a tenant: 1 to 128 bytes of
// ASCII letters, digits, '.', '_' and '-', not starting with a dot. Such a
// name is also a single path element that cannot leave its folder: no '/',
// no "..", no NUL, nothing percent-encoded, no look-alike Unicode.
func validTenantName(v string) bool {
	if v == "" || len(v) > maxTenantName || v[0] == '.' {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// tenantMode reports whether the block serves many tenants.
func (h *Handler) tenantMode() bool { return h.Tenant != "" }

// validateTenants checks the tenant settings of the block.
func (h *Handler) validateTenants() error {
	if !h.tenantMode() {
		switch {
		case len(h.Credentials) > 0:
			return errors.New("credentials: needs tenant (the placeholder whose value picks the credentials)")
		case h.CredentialsDir != "":
			return errors.New("credentials_dir: needs tenant (the placeholder whose value picks the credentials)")
		case h.TenantIdle != 0 || h.MaxTenants != 0:
			return errors.New("tenant_idle, max_tenants: need tenant")
		}
		return nil
	}
	if !placeholderRE.MatchString(h.Tenant) && !strings.Contains(h.Tenant, "{") {
		return fmt.Errorf("tenant: %q is not a placeholder; give the request value that picks the credentials, e.g. {http.request.header.X-Desko-Tenant}", h.Tenant)
	}
	if len(h.Credentials) == 0 && h.CredentialsDir == "" {
		return errors.New("tenant: needs credentials blocks or a credentials_dir")
	}
	if h.ClientID != "" || h.ClientSecret != "" || h.ClientKey != "" {
		return errors.New("client_id, client_secret, client_key: with tenant, give them in credentials blocks or credentials_dir")
	}
	if h.TenantIdle < 0 {
		return errors.New("tenant_idle: must be positive")
	}
	if h.MaxTenants < 0 {
		return errors.New("max_tenants: must be positive")
	}
	for _, name := range slices.Sorted(maps.Keys(h.Credentials)) {
		if !validTenantName(name) {
			return fmt.Errorf("credentials %q: a tenant name is 1 to %d ASCII letters, digits, '.', '_' or '-', not starting with '.'", name, maxTenantName)
		}
		th := h.forTenant(name, h.Credentials[name])
		if err := th.Validate(); err != nil {
			return fmt.Errorf("credentials %s: %w", name, err)
		}
	}
	return nil
}

// forTenant returns the block's settings for one tenant: the block's, with
// what the tenant sets on top (its params and token headers added to the
// block's), and no tenant settings of its own.
func (h *Handler) forTenant(name string, tc *TenantCredentials) *Handler {
	th := *h
	th.Tenant, th.Credentials, th.CredentialsDir, th.TenantIdle, th.MaxTenants = "", nil, "", 0, 0
	th.ReplayMemory = nil // a block-level setting, counted once for the block
	th.tenantName = name
	// What the block holds is the block's to give back, not the tenant's.
	th.key, th.transportKey, th.src, th.tenants, th.tenantsKey, th.endpointKeys, th.b = "", "", nil, nil, "", nil, nil
	if tc == nil {
		return &th
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&th.ClientID, tc.ClientID)
	set(&th.ClientSecret, tc.ClientSecret)
	set(&th.ClientKey, tc.ClientKey)
	set(&th.ClientKeyID, tc.ClientKeyID)
	set(&th.ClientKeyAlg, tc.ClientKeyAlg)
	set(&th.ClientAssertionAudience, tc.ClientAssertionAudience)
	set(&th.TokenURL, tc.TokenURL)
	set(&th.AuthStyle, tc.AuthStyle)
	set(&th.Header, tc.Header)
	if len(tc.Scopes) > 0 {
		th.Scopes = tc.Scopes
	}
	if tc.Timeout != 0 {
		th.Timeout = tc.Timeout
	}
	if tc.DefaultTTL != 0 {
		th.DefaultTTL = tc.DefaultTTL
	}
	if tc.Prefix != nil {
		th.Prefix = tc.Prefix
	}
	th.Params = mergeMaps(h.Params, tc.Params)
	th.TokenHeaders = mergeMaps(h.TokenHeaders, tc.TokenHeaders)
	return &th
}

// mergeMaps returns a's entries with b's on top (nil when both are empty).
func mergeMaps(a, b map[string]string) map[string]string {
	if len(a) == 0 && len(b) == 0 {
		return nil
	}
	out := maps.Clone(a)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, b)
	return out
}

// validateCredentials checks that the block (or a named tenant) has the
// credentials its auth style needs, and that a key is a placeholder.
func (h *Handler) validateCredentials() error {
	if strings.TrimSpace(h.ClientID) == "" {
		return errors.New("client_id: is required")
	}
	switch {
	case h.auth == token.AuthPrivateKeyJWT && strings.TrimSpace(h.ClientKey) == "":
		return errors.New("client_key: auth_style private_key_jwt needs the client's private key, e.g. client_key {file./etc/caddy/desko.key}")
	case h.auth == token.AuthPrivateKeyJWT && h.ClientSecret != "":
		// It would not be sent, and the shared cache would derive its key
		// from it rather than from the private key.
		return errors.New("client_secret: auth_style private_key_jwt authenticates with client_key and sends no secret; remove client_secret")
	case h.auth != token.AuthPrivateKeyJWT && strings.TrimSpace(h.ClientSecret) == "":
		return errors.New("client_secret: is required")
	case h.auth != token.AuthPrivateKeyJWT && (h.ClientKey != "" || h.ClientKeyID != "" || h.ClientKeyAlg != ""):
		return fmt.Errorf("client_key: only auth_style private_key_jwt signs with a key (auth_style is %s)", h.auth)
	case !h.auth.Signs() && h.ClientAssertionAudience != "":
		return fmt.Errorf("client_assertion_audience: only the private_key_jwt and client_secret_jwt styles send assertions (auth_style is %s)", h.auth)
	case h.ClientKeyAlg != "" && h.ClientKeyAlg != "PS256" && h.ClientKeyAlg != "RS256":
		return fmt.Errorf("client_key_alg: %q is not RS256 or PS256 (the other keys' algorithm follows the key)", h.ClientKeyAlg)
	}
	switch {
	case strings.Contains(h.ClientKey, "-----BEGIN"):
		return errors.New("client_key: a literal PEM key would be visible in the admin API's /config/; give it as {file./path}")
	case h.ClientKey != "" && !placeholderRE.MatchString(h.ClientKey):
		// A path written without {file.*}, most likely; the value is not
		// quoted, in case it is a key after all.
		return errors.New("client_key: give the key's PEM file as {file./path} (or a variable as {env.NAME}); the value has no placeholder")
	}
	return nil
}
