package deskoauth

import (
	"net/http"
	"strings"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file sets the token header on a request and keeps a client from
// having it removed on the way to the upstream.

// headerValue caches the Authorization value built for one token, so the
// hot path does not concatenate strings.
type headerValue struct {
	tok   *token.Token
	value string
}

// setToken replaces every inbound value of the token header
// (Authorization unless configured otherwise) and returns the value set.
func (h *Handler) setToken(r *http.Request, tok *token.Token) string {
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
