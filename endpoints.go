package deskoauth

import (
	"net"
	"net/url"
	"strings"
	"sync"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file shares one token.Endpoint per token endpoint (scheme, host and
// port) across every source of the process, so that token_concurrency
// bounds the token requests in flight to an endpoint whatever the number
// of blocks and tenants, and a Retry-After pauses them all.

// endpoints are the token endpoints in use, with the handlers that use
// them and the token_concurrency each asked for.
var endpoints = struct {
	sync.Mutex
	by map[string]*endpointUse
}{by: map[string]*endpointUse{}}

type endpointUse struct {
	ep    *token.Endpoint
	users map[*Handler]int // 0: no token_concurrency set
}

// endpointKey is scheme://host:port of a token URL.
func endpointKey(tokenURL string) string {
	u, err := url.Parse(tokenURL)
	if err != nil {
		return tokenURL
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// acquireEndpoint returns the shared Endpoint of tokenURL for h, and sets
// its limit: the smallest token_concurrency any handler that uses it set,
// else token.DefaultEndpointLimit. releaseEndpoints gives it back.
func (h *Handler) acquireEndpoint(tokenURL string) *token.Endpoint {
	key := endpointKey(tokenURL)
	endpoints.Lock()
	defer endpoints.Unlock()
	use := endpoints.by[key]
	if use == nil {
		use = &endpointUse{ep: token.NewEndpoint(0), users: map[*Handler]int{}}
		endpoints.by[key] = use
	}
	use.users[h] = h.TokenConcurrency
	h.endpointKeys = append(h.endpointKeys, key)
	use.setLimit()
	return use.ep
}

// releaseEndpoints gives back what acquireEndpoint gave h.
func (h *Handler) releaseEndpoints() {
	endpoints.Lock()
	defer endpoints.Unlock()
	for _, key := range h.endpointKeys {
		use := endpoints.by[key]
		if use == nil {
			continue
		}
		delete(use.users, h)
		if len(use.users) == 0 {
			delete(endpoints.by, key)
			continue
		}
		use.setLimit()
	}
	h.endpointKeys = nil
}

// setLimit applies the smallest token_concurrency set; endpoints is held.
func (u *endpointUse) setLimit() {
	limit := 0
	for _, n := range u.users {
		if n > 0 && (limit == 0 || n < limit) {
			limit = n
		}
	}
	u.ep.SetLimit(limit)
}
