package deskoauth

import (
	"context"
	"io"
	"maps"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is one request's way through the handler once it has a token:
// the first attempt, and after an upstream 401 the report to the token
// source and the replay with a new token. The body is kept by
// replaybody.go, the 401 held by watchwriter.go.

// attempt is one request on its way upstream. ServeHTTP keeps it on its
// stack.
type attempt struct {
	h       *Handler
	b       *binding            // the source and how the request carries its token
	w       http.ResponseWriter // the client's writer
	r       *http.Request
	tok     *token.Token // the token the request carries
	value   string       // the token header's value, as set
	replay  bool         // the request may be sent again after a 401
	body    *replayBody  // the body kept for that, if it has one
	saved   headerSnapshot
	ww      *watchWriter // watches (and may hold back) the answer
	status  int          // the upstream's final status, 0 if none
	outcome outcome
}

// token decides whether the request could be replayed (keeping its body
// for that if it has one) and gets its token: a request that can be
// replayed does not wait for the replacement of a token another request's
// 401 rejected.
func (a *attempt) token() (*token.Token, error) {
	a.replay = a.h.replay && a.keepBody()
	if a.replay {
		return a.b.src.engine.GetReplayable(a.r.Context())
	}
	return a.b.src.engine.Get(a.r.Context())
}

// keepBody reports whether the request could be replayed, and wraps its
// body, if it has one, to keep it for that as it is read: within
// replay_body_limit, and within the memory budget as the bytes arrive.
func (a *attempt) keepBody() bool {
	r := a.r
	if up := r.Header["Upgrade"]; r.Method == http.MethodConnect || (len(up) > 0 && up[0] != "") {
		return false
	}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return true
	}
	limit := a.h.limit
	if r.ContentLength > 0 {
		if r.ContentLength > limit {
			return false
		}
		// Nothing is reserved from a length the client declares: the
		// budget is taken as the bytes arrive. A body larger than the
		// whole budget could never be kept.
		if r.ContentLength > replayMemory.limit.Load() {
			a.outcome = outcomeOverReplayBudget
			return false
		}
		limit = r.ContentLength
	}
	a.body = newReplayBody(r.Body, limit, tokenTrailers{r: r, name: a.b.header})
	r.Body = a.body
	return true
}

// forward sets the token header (and keeps the client from sending its own
// as a trailer) and sends the request on through next, watching the
// answer: a 401 is held back when the request may be replayed; any other
// answer gives the kept body's memory back at once.
func (a *attempt) forward(next caddyhttp.Handler, tok *token.Token) error {
	a.tok = tok
	a.value = a.b.setToken(a.r, tok)
	if _, ok := a.r.Header["Connection"]; ok {
		a.b.keepTokenHeader(a.r)
	}
	if mayCarryTrailers(a.r) {
		a.b.guardTrailers(a.r, a.body != nil)
	}
	if a.replay {
		a.saved.take(a.w.Header())
	}
	a.ww = newWatchWriter(a.w, a.replay)
	a.ww.body = a.body
	err := next.ServeHTTP(a.ww, a.r)
	a.status = a.ww.status
	if a.status != 0 && a.status != http.StatusUnauthorized {
		a.tok.Worked()
	}
	return err
}

// unauthorized handles an upstream 401: the token source hears of it if
// the request still carried the token, and the request is replayed once
// with a new token where it can be; else the 401 goes to the client as it
// came.
func (a *attempt) unauthorized(next caddyhttp.Handler) error {
	carried := a.b.carries(a.r, a.value)
	body, ok := a.rewind()
	if !ok {
		if carried {
			a.b.src.engine.Rejected(a.refusal(a.tok, false))
		}
		return a.ww.sendHeld()
	}
	var fresh *token.Token
	if carried {
		fresh = a.b.src.engine.Replace(a.r.Context(), a.refusal(a.tok, false))
	}
	if fresh == nil {
		a.outcome = outcomeReplayFailed
		a.b.log.Debug("upstream answered 401 and no newer token is available; passing it through")
		return a.ww.sendHeld()
	}
	return a.replayWith(next, fresh, body)
}

// refusal describes the upstream's 401 to this request carrying tok;
// replayed says that tok is the replay's fresh token.
func (a *attempt) refusal(tok *token.Token, replayed bool) token.Refusal {
	return token.Refusal{
		Token:    tok,
		Route:    a.r.Method + " " + a.r.Host + a.r.URL.Path,
		Said:     token.SignalOf(a.w.Header()),
		Replayed: replayed,
	}
}

// rewind returns the body for a replay; ok is false when the request
// cannot be replayed: its 401 was not held back, or its body was not kept
// whole.
func (a *attempt) rewind() (body io.ReadCloser, ok bool) {
	if !a.ww.held {
		return nil, false
	}
	if a.body == nil {
		return nil, true
	}
	return a.body.rewind()
}

// replayWith sends the request once more with the fresh token, streaming
// the answer.
func (a *attempt) replayWith(next caddyhttp.Handler, fresh *token.Token, body io.ReadCloser) error {
	// Undo what the first attempt wrote into the shared header map.
	a.saved.restoreInto(a.w.Header())
	// The first attempt's transport may still be dialing in the background,
	// reading the request's vars (reverse_proxy's dial hints); the replay's
	// reverse_proxy writes them. So the replay gets a copy of the vars: a
	// map read and written at once would crash the process.
	r := a.r
	if vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, maps.Clone(vars)))
	}
	if body != nil {
		r.Body = body
	}
	value := a.b.setToken(r, fresh)
	a.ww.reset()
	err := next.ServeHTTP(a.ww, r)
	a.status = a.ww.status
	switch {
	case err != nil:
		a.outcome = outcomeReplayFailed
		return err
	case a.status == http.StatusUnauthorized:
		if a.b.carries(r, value) {
			a.b.src.engine.Rejected(a.refusal(fresh, true))
		}
		a.outcome = outcomeReplayFailed
		a.b.log.Warn("upstream answered 401 again after a token refresh; passing it through",
			zap.String("method", r.Method), zap.String("uri", r.URL.Path))
		return nil
	}
	if a.status != 0 {
		fresh.Worked()
	}
	a.outcome = outcomeReplayed
	return nil
}

// end counts the request's outcome and gives back what the attempt holds:
// the kept body and the watcher (unless the connection was upgraded, which
// may outlive the handler).
func (a *attempt) end() {
	if a.body != nil {
		if a.outcome == outcomeInjected && a.body.skippedForBudget() {
			a.outcome = outcomeOverReplayBudget
		}
		a.body.release()
	}
	if a.ww != nil && a.status != http.StatusSwitchingProtocols {
		a.ww.free()
	}
	a.b.src.metrics.count(a.outcome)
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
