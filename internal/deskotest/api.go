package deskotest

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// This file is the stand-in's API: it accepts only the tokens the token
// endpoint issued, and echoes what it got.

// Valid reports whether tok was issued here, is not revoked and has not
// expired.
func (s *Server) Valid(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	return ok && time.Now().Before(exp)
}

// serveAPI is the echo API: it answers 401 in Desko's shape unless the
// request carries exactly one valid bearer token, and otherwise echoes the
// method, path and body as JSON.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	s.apiRequests.Add(1)
	if strings.HasPrefix(r.URL.Path, SlowPrefix) {
		select {
		case <-time.After(SlowDelay):
		case <-r.Context().Done():
			return
		}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil { // a truncated body is never accepted
		deskoError(w, http.StatusBadRequest, "incomplete request body")
		return
	}
	auth := r.Header.Values("Authorization")
	tok, ok := "", len(auth) == 1 && strings.HasPrefix(auth[0], "Bearer ")
	if ok {
		tok = strings.TrimPrefix(auth[0], "Bearer ")
	}
	if n := s.unauthFirst.Load(); n > 0 && s.unauthFirst.CompareAndSwap(n, n-1) {
		ok = false
	}
	denied := strings.HasPrefix(r.URL.Path, DeniedPrefix)
	if !ok || denied || !s.Valid(tok) {
		s.apiRejected.Add(1)
		challenge := InvalidTokenChallenge
		if denied {
			s.mu.Lock()
			if s.deniedSet {
				challenge = s.deniedChal
			}
			s.mu.Unlock()
		}
		if challenge != "" {
			w.Header().Set("WWW-Authenticate", challenge)
		}
		w.Header().Set("X-Attempt-Rejected", "yes")
		deskoError(w, http.StatusUnauthorized, "Unauthenticated.")
		return
	}
	s.mu.Lock()
	s.bodies = append(s.bodies, string(body))
	scope, client := s.scopes[tok], s.clients[tok]
	serial := slices.Index(s.everIssued, tok) + 1
	s.mu.Unlock()
	w.Header().Set("X-Upstream", "desko-standin")
	writeJSON(w, http.StatusOK, map[string]any{
		"ok":     true,
		"method": r.Method,
		"path":   r.URL.Path,
		"body":   string(body),
		"token":  fmt.Sprintf("valid (%d chars)", len(tok)),
		// Which token it was, without showing it: the n-th issued, and
		// the scope it was issued for.
		"token_serial": serial,
		"client_id":    client,
		"scope":        scope,
	})
}
