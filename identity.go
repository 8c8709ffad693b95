package deskoauth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// This file says what identifies a source (which handlers share one) and
// how it is named in logs, metrics and the admin API, without its secret.

// sharedIdentity is what, besides the token URL, client ID and scopes, sets
// apart the tokens of a credential set in the shared cache: its extra
// parameters and token request headers (an audience, a tenant…).
func sharedIdentity(c engineConfig) map[string]string {
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

// sourceLogger adds the source's stable, non-secret fields to every line.
func sourceLogger(l *zap.Logger, label, clientID, tokenURL string) *zap.Logger {
	return l.With(
		zap.String("source", label),
		zap.String("client_id", clientID),
		zap.String("token_url", redactURL(tokenURL)),
	)
}

// sourceKey identifies a credential set and its fetch settings; the secret
// enters only as its SHA-256.
func sourceKey(c engineConfig, shared, tls string) string {
	secret := sha256.Sum256([]byte(c.ClientSecret))
	b, _ := json.Marshal([]any{c.TokenURL, c.ClientID, hex.EncodeToString(secret[:]), c.Scopes, c.Timeout, c.DefaultTTL,
		c.AuthStyle, c.Params, c.Headers, shared, tls})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// sourceLabel is the non-secret name of a source in metrics, logs and the
// admin API: the client ID and a short hash of the token URL and scopes.
func sourceLabel(c engineConfig) string {
	sum := sha256.Sum256([]byte(c.TokenURL + "\x00" + strings.Join(c.Scopes, " ")))
	return c.ClientID + "@" + hex.EncodeToString(sum[:4])
}
