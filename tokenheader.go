package deskoauth

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file sets the token header on a request and keeps a client from
// having it removed on the way to the upstream, or from sending its own as
// a trailer.

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
	unlist(r.Header, "Connection", b.header)
}

// unlist removes name (in any case) from the comma-separated values of the
// header field, and the field itself when nothing is left in it.
func unlist(hdr http.Header, field, name string) {
	vals := hdr[field]
	var kept []string
	changed := false
	for _, v := range vals {
		var parts []string
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), name) {
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
		delete(hdr, field)
		return
	}
	hdr[field] = kept
}

// A client may send header fields after a chunked (or HTTP/2) body, as
// trailers. net/http merges them into the request's Trailer map when the
// body reaches its end (every trailer for HTTP/1.1, announced or not, as
// long as one was announced; the announced ones for HTTP/2), and
// reverse_proxy copies that map to the upstream request at the same moment
// and announces its keys up front. A trailer named like the token header
// would reach the upstream beside the token: the client's own credential.

// mayCarryTrailers reports whether r can bring trailers, or announces any:
// a request with no body, no announcement and no Trailer map brings none,
// and costs nothing here.
func mayCarryTrailers(r *http.Request) bool {
	return r.Trailer != nil || r.ContentLength != 0
}

// guardTrailers takes the token header out of r's announced trailers (the
// Trailer map's keys and the Trailer header field) and, for a body that can
// still bring trailers and is not kept for a replay (a replayBody guards
// itself), wraps the body to take it out again at the body's end.
func (b *binding) guardTrailers(r *http.Request, kept bool) {
	if _, ok := r.Header["Trailer"]; ok {
		unlist(r.Header, "Trailer", b.header)
	}
	tt := tokenTrailers{r: r, name: b.header}
	tt.strip()
	if kept || r.Body == nil || r.Body == http.NoBody || (r.Trailer == nil && r.ContentLength >= 0) {
		return
	}
	r.Body = &trailerGuard{ReadCloser: r.Body, trailers: tt}
}

// tokenTrailers removes the token header from a request's trailers.
type tokenTrailers struct {
	r    *http.Request // the request passed on: its Trailer map is shared with the server's
	name string        // the token header, canonical
}

// strip deletes the token header from the trailers, under its canonical
// name and under any other spelling.
func (t tokenTrailers) strip() {
	if t.r == nil || len(t.r.Trailer) == 0 {
		return
	}
	tr := t.r.Trailer
	delete(tr, t.name)
	for k := range tr {
		if strings.EqualFold(k, t.name) {
			delete(tr, k)
		}
	}
}

// trailerGuard is a request body that takes the token header out of the
// trailers when it reaches its end, before the reader above sees io.EOF.
type trailerGuard struct {
	io.ReadCloser
	trailers tokenTrailers
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if err == io.EOF {
		g.trailers.strip()
	}
	return n, err
}
