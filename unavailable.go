package deskoauth

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file answers the requests for which no token could be had.

// The fixed messages of the answers to clients that no token could be had
// for, one per kind of failure (see answerFor). They never hold what the
// token endpoint said, its address, or Go's error text: those go to the
// operator's log under the correlation ID.
const (
	msgRefused     = "could not obtain a Desko access token: the token endpoint refused this proxy's credentials"
	msgTLS         = "could not obtain a Desko access token: this proxy does not trust the token endpoint's certificate"
	msgRedirect    = "could not obtain a Desko access token: the token endpoint redirects this proxy's token requests"
	msgUnresolved  = "could not obtain a Desko access token: the token endpoint's address does not resolve; try again later"
	msgUnreachable = "could not obtain a Desko access token: the token endpoint cannot be reached; try again later"
	msgUnavailable = "could not obtain a Desko access token: the token endpoint is unavailable; try again later"
)

// answerFor is the status and fixed message of the answer to a client
// that no token could be had for because of an error of kind k: 502 for a
// configuration problem, which waiting will not mend; 503 (with
// Retry-After) for the others.
func answerFor(k token.Kind) (status int, msg string) {
	switch k {
	case token.KindRefused:
		return http.StatusBadGateway, msgRefused
	case token.KindTLS:
		return http.StatusBadGateway, msgTLS
	case token.KindRedirect:
		return http.StatusBadGateway, msgRedirect
	case token.KindDNS:
		return http.StatusServiceUnavailable, msgUnresolved
	case token.KindConnect:
		return http.StatusServiceUnavailable, msgUnreachable
	}
	return http.StatusServiceUnavailable, msgUnavailable
}

// The values of the errors option.
const (
	// ErrorsDesko answers 502/503 in Desko's error shape (the default).
	ErrorsDesko = "desko"
	// ErrorsCaddy returns the error to Caddy, so that handle_errors routes
	// answer it.
	ErrorsCaddy = "caddy"
)

// The placeholders the handler sets, for access logs and error routes.
const (
	// phSource is the source label of the request's credential set.
	phSource = "http.desko_auth.source"
	// phError is why no token could be had: a token.Kind's label
	// (transient, refused, invalid_answer, tls, redirect, dns, connect),
	// canceled, or unknown_tenant.
	phError = "http.desko_auth.error"
)

// msgUnknownTenant is the answer to a request whose tenant value names no
// credentials.
const msgUnknownTenant = "unknown tenant: this proxy holds no credentials for the tenant the request names"

// unbound answers a request that no source could serve: its tenant value
// named nothing (403), or its tenant could not be started (as unavailable
// does). It is counted under the tenant block's label.
func (h *Handler) unbound(w http.ResponseWriter, r *http.Request, err error) error {
	if !errors.Is(err, errUnknownTenant) {
		h.tenants.metrics.count(outcomeUnavailable)
		return h.unavailable(w, r, err, h.logger)
	}
	h.tenants.metrics.count(outcomeUnknownTenant)
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set(phError, "unknown_tenant")
	}
	return h.answer(w, correlationID(repl), http.StatusForbidden, msgUnknownTenant)
}

// unavailable answers a request that could not get a token, with the
// status and fixed message of the failure's kind (answerFor): 502 for a
// configuration problem, 503 with Retry-After for the others; in Desko's
// error shape, or through Caddy's handle_errors.
func (h *Handler) unavailable(w http.ResponseWriter, r *http.Request, err error, log *zap.Logger) error {
	status, msg := answerFor(token.KindTransient)
	why := token.KindTransient.String()
	var te *token.Error
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if errors.As(err, &te) {
		why = te.Kind.String()
		status, msg = answerFor(te.Kind)
		if status == http.StatusServiceUnavailable {
			secs := int((te.RetryAfter + time.Second - 1) / time.Second)
			w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		}
	} else if r.Context().Err() != nil {
		// The client went away while waiting; nobody reads this answer.
		if repl != nil {
			repl.Set(phError, "canceled")
		}
		return caddyhttp.Error(499, err)
	}
	if repl != nil {
		repl.Set(phError, why)
	}
	ref := correlationID(repl)
	log.Warn("request answered without a token",
		zap.String("correlation_id", ref),
		zap.Int("status", status),
		zap.String("kind", why),
		zap.String("error", err.Error()),
		zap.String("method", r.Method),
		zap.String("uri", r.URL.Path))
	return h.answer(w, ref, status, msg)
}

// answer answers the request here, in Desko's error shape, or returns the
// error to Caddy's handle_errors with only the fixed message (errors
// caddy): {http.error.message} may reach clients.
func (h *Handler) answer(w http.ResponseWriter, ref string, status int, msg string) error {
	if h.Errors == ErrorsCaddy {
		return caddyhttp.Error(status, errors.New(msg+" (correlation_id "+ref+")"))
	}
	body, _ := json.Marshal(struct {
		Error         int    `json:"error"`
		ID            string `json:"id"`
		Message       string `json:"message"`
		CorrelationID string `json:"correlation_id"`
	}{status, "desko_auth", msg, ref})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, werr := w.Write(append(body, '\n'))
	return werr
}

// correlationID is the request's Caddy UUID ({http.request.uuid}, which
// access logs can show too), or a random ID outside Caddy.
func correlationID(repl *caddy.Replacer) string {
	if repl != nil {
		if id, ok := repl.GetString("http.request.uuid"); ok && id != "" {
			return id
		}
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
