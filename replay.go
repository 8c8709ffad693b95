package deskoauth

import (
	"context"
	"io"
	"maps"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// This file replays a request after an upstream 401: the header snapshot
// and the second attempt. The body is kept by replaybody.go, the 401 held
// by watchwriter.go.

// replayWith sends r once more with the fresh token, streaming the answer.
func (h *Handler) replayWith(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, fresh *accessToken, body io.ReadCloser, saved *headerSnapshot) error {
	// Undo what the first attempt wrote into the shared header map.
	saved.restoreInto(w.Header())
	// The first attempt's transport may still be dialing in the background,
	// reading the request's vars (reverse_proxy's dial hints); the replay's
	// reverse_proxy writes them. So the replay gets a copy of the vars: a
	// map read and written at once would crash the process.
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, maps.Clone(vars)))
	}
	if body != nil {
		r.Body = body
	}
	value := h.setAuthorization(r, fresh)
	ww := newWatchWriter(w, false)
	err := next.ServeHTTP(ww, r)
	status := ww.status
	if status != http.StatusSwitchingProtocols {
		defer ww.free()
	}
	switch {
	case err != nil:
		h.metrics.request("replay_failed")
		return err
	case status == http.StatusUnauthorized:
		if h.carries(r, value) {
			h.src.engine.Invalidate(fresh)
		}
		h.metrics.request("replay_failed")
		h.logger.Warn("upstream answered 401 again after a token refresh; passing it through",
			zap.String("method", r.Method), zap.String("uri", r.URL.Path))
		return nil
	}
	if status != 0 {
		fresh.Accepted()
	}
	h.metrics.request("replayed")
	return nil
}

// headerSnapshot remembers what a response header map held, to restore it
// before a replay. It is a shallow copy, which is enough: handlers
// downstream (reverse_proxy) add keys and append values; they do not edit
// the existing value slices in place. Small maps (Caddy's has "Server" and
// little else at this point) are copied into arrays that stay on the stack.
type headerSnapshot struct {
	n     int
	keys  [8]string
	vals  [8][]string
	spill http.Header // for a larger map
}

func (s *headerSnapshot) take(h http.Header) {
	if len(h) > len(s.keys) {
		s.spill = maps.Clone(h)
		return
	}
	for k, v := range h {
		s.keys[s.n], s.vals[s.n] = k, v
		s.n++
	}
}

// restoreInto makes h hold exactly what was taken.
func (s *headerSnapshot) restoreInto(h http.Header) {
	clear(h)
	for k, v := range s.spill {
		h[k] = v
	}
	for i := range s.n {
		h[s.keys[i]] = s.vals[i]
	}
}
