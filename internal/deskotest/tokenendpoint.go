package deskotest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// This file is the stand-in's token endpoint: Desko's client-credentials
// answers, in every mode, and the tokens it issues.

type tokenRequest struct {
	GrantType    string `json:"grant_type"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	Scope        string `json:"scope"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func deskoError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": status, "id": "oauth_server", "message": msg})
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.tokenRequests.Add(1)
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var asked struct {
		Scope string `json:"scope"`
	}
	_ = json.Unmarshal(body, &asked) // counted by scope as it arrives
	s.mu.Lock()
	if s.byScope == nil {
		s.byScope = map[string]int64{}
	}
	s.byScope[asked.Scope]++
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	defer func() { s.mu.Lock(); s.inFlight--; s.mu.Unlock() }()
	s.lastTokenReq, s.lastTokenBody = r.Clone(r.Context()), body
	mode, ttl, delay, retryAfter, omit, offset := s.mode, s.ttl, s.delay, s.retryAfter, s.omitExpiresIn, s.clockOffset
	s.mu.Unlock()
	if offset != 0 {
		w.Header().Set("Date", time.Now().Add(offset).UTC().Format(http.TimeFormat))
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	switch mode {
	case ModeReject:
		deskoError(w, http.StatusUnauthorized, "Client authentication failed")
		return
	case ModeRFCReject:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_client", "error_description": "Client authentication failed"})
		return
	case ModeDown:
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		deskoError(w, http.StatusInternalServerError, "Internal server error")
		return
	case ModeBusy:
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		deskoError(w, http.StatusTooManyRequests, "Too many requests")
		return
	case ModeHTML:
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html><body><h1>Maintenance</h1></body></html>")
		return
	}
	if r.Method != http.MethodPost {
		deskoError(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	var req tokenRequest
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") || json.Unmarshal(body, &req) != nil {
		deskoError(w, http.StatusBadRequest, "The request must be JSON")
		return
	}
	if req.GrantType != "client_credentials" {
		deskoError(w, http.StatusBadRequest, "Unsupported grant type")
		return
	}
	s.mu.Lock()
	ok := (req.ClientID == s.clientID && slices.Contains(s.secrets, req.ClientSecret)) || slices.Contains(s.others[req.ClientID], req.ClientSecret)
	dir := s.dir
	s.mu.Unlock()
	if !ok && dir != nil {
		ok = dir.accepts(req.ClientID, req.ClientSecret)
	}
	if !ok {
		deskoError(w, http.StatusUnauthorized, "Client authentication failed")
		return
	}
	tok := s.issue(req.ClientID, ttl, req.Scope)
	answer := map[string]any{"token_type": "Bearer", "access_token": tok}
	if !omit {
		answer["expires_in"] = int(ttl / time.Second)
	}
	writeJSON(w, http.StatusOK, answer)
}

// issue makes a JWT-shaped token (unsigned: the stand-in checks its own
// list), or an opaque one, and records it.
func (s *Server) issue(client string, ttl time.Duration, scope string) string {
	s.mu.Lock()
	offset, opaque := s.clockOffset, s.opaque
	s.mu.Unlock()
	var nonce [12]byte
	_, _ = rand.Read(nonce[:])
	now := time.Now()
	var tok string
	var expires time.Time // on the real clock
	if opaque {
		tok = "opaque-" + hex.EncodeToString(nonce[:])
		expires = now.Add(ttl)
	} else {
		// exp is in whole seconds on the endpoint's clock; round up so
		// that the claim and expires_in agree and the stand-in's own check
		// uses the same instant.
		exp := now.Add(offset + ttl)
		if t := exp.Truncate(time.Second); !t.Equal(exp) {
			exp = t.Add(time.Second)
		}
		enc := base64.RawURLEncoding
		header := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
		claims, _ := json.Marshal(map[string]any{
			"sub": client, "scope": scope, "exp": exp.Unix(), "jti": hex.EncodeToString(nonce[:]),
		})
		tok = header + "." + enc.EncodeToString(claims) + "." + enc.EncodeToString(nonce[:])
		expires = exp.Add(-offset)
	}
	s.mu.Lock()
	if s.revokePrevious {
		clear(s.tokens)
	}
	s.tokens[tok] = expires
	s.scopes[tok] = scope
	s.clients[tok] = client
	s.everIssued = append(s.everIssued, tok)
	s.mu.Unlock()
	return tok
}
