package deskoauth

import (
	"net/http"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file sets the token header on a request and keeps a client from
// having it removed on the way to the upstream.

// binding is a token source as a handler (or one of its tenants) uses
// it: the source, and how requests carry its token.
type binding struct {
	src    *source
	header string // canonical name of the header that carries the token
	prefix string
	log    *zap.Logger // the source's fields
	// cache holds the header value built for the current token, so that
	// the hot path does not concatenate strings.
	cache atomic.Pointer[headerValue]
}

// headerValue is a token header value and the token it was built for.
type headerValue struct {
	tok   *token.Token
	value string
}

// setToken replaces every inbound value of the token header
// (Authorization unless configured otherwise) and returns the value set.
func (b *binding) setToken(r *http.Request, tok *token.Token) string {
	hv := b.cache.Load()
	if hv == nil || hv.tok != tok {
		hv = &headerValue{tok: tok, value: b.prefix + tok.Value}
		b.cache.Store(hv)
	}
	r.Header[b.header] = []string{hv.value}
	return hv.value
}

// carries reports whether r still holds the token header as set, so that a
// 401 to a request whose token something downstream removed or changed
// does not count against the token.
func (b *binding) carries(r *http.Request, value string) bool {
	v := r.Header[b.header]
	return len(v) == 1 && v[0] == value
}

// keepTokenHeader removes the token header's name from the inbound
// Connection header: a client could otherwise mark it hop-by-hop, and
// reverse_proxy would strip the token before the upstream sees it.
func (b *binding) keepTokenHeader(r *http.Request) {
	vals := r.Header["Connection"]
	var kept []string
	changed := false
	for _, v := range vals {
		var parts []string
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), b.header) {
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
