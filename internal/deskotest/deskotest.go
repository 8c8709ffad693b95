// Package deskotest is a stand-in for Desko: a token endpoint that speaks
// Desko's documented client-credentials format and an API that accepts only
// the tokens it issued. Tests, the offline demo and the load bench use it.
package deskotest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TokenPath is the token endpoint's path, as on api.desko.com.br.
const TokenPath = "/v1.1/oauth/token"

// SlowPrefix is a path prefix on which the API answers after SlowDelay, for
// requests that must be in flight while something else happens.
const SlowPrefix = "/slow/"

// SlowDelay is how long the API holds a request under SlowPrefix.
const SlowDelay = 1500 * time.Millisecond

// DeniedPrefix is a path prefix on which the API answers 401 whatever the
// token, as a path guarded by some other authorisation would. Its 401s say
// that the token is invalid (InvalidTokenChallenge), as a careless upstream
// would: the worst case for a client that reads WWW-Authenticate. Change
// that with SetDeniedChallenge.
const DeniedPrefix = "/denied/"

// InvalidTokenChallenge is the WWW-Authenticate field the API sends with
// its 401s (RFC 6750 §3.1), those under DeniedPrefix included unless
// SetDeniedChallenge changed them.
const InvalidTokenChallenge = `Bearer error="invalid_token"`

// StatsPath answers the stand-in's counters as JSON (for scripts):
// token_requests, token_requests_by_scope (by the JSON scope they asked
// for, as they arrive), api_requests, api_rejected.
const StatsPath = "/_standin/stats"

// Mode says how the token endpoint answers.
type Mode int

// Token endpoint modes.
const (
	ModeOK        Mode = iota // issue tokens to the right credentials
	ModeReject                // 401 in Desko's shape, whatever the credentials
	ModeDown                  // 500 with a JSON body
	ModeHTML                  // 200 with an HTML page
	ModeRFCReject             // 400 invalid_client in RFC 6749's shape
	ModeBusy                  // 429 with the Retry-After set by SetRetryAfter
)

// Server is the Desko stand-in. It is safe for concurrent use; change it
// with the setters.
type Server struct {
	clientID string

	mu             sync.Mutex
	secrets        []string            // the client secrets accepted
	others         map[string][]string // more clients: ID → secrets
	dir            *clientsDir         // more clients, in a folder (nil: none)
	clients        map[string]string   // token → the client it was issued to
	inFlight       int                 // token requests being answered
	maxInFlight    int
	mode           Mode
	ttl            time.Duration
	delay          time.Duration
	revokePrevious bool
	retryAfter     string
	omitExpiresIn  bool
	clockOffset    time.Duration
	opaque         bool
	deniedSet      bool                 // deniedChal replaces InvalidTokenChallenge
	deniedChal     string               // on DeniedPrefix's 401s; "" sends none
	tokens         map[string]time.Time // token → expiry
	scopes         map[string]string    // token → scope it was issued for
	everIssued     []string
	bodies         []string // request bodies the API received
	lastTokenReq   *http.Request
	lastTokenBody  []byte
	tokenRequests  atomic.Int64
	byScope        map[string]int64 // token requests by the scope they asked for
	apiRequests    atomic.Int64
	apiRejected    atomic.Int64
	unauthFirst    atomic.Int64 // answer this many API requests 401 regardless
}

// New returns a stand-in that issues tokens of the given lifetime to id and
// secret.
func New(id, secret string, ttl time.Duration) *Server {
	return &Server{clientID: id, secrets: []string{secret}, ttl: ttl, tokens: map[string]time.Time{}, scopes: map[string]string{},
		others: map[string][]string{}, clients: map[string]string{}}
}

// SetClientSecret changes the secret the token endpoint accepts. Tokens
// already issued stay valid.
func (s *Server) SetClientSecret(secret string) { s.SetClientSecrets(secret) }

// AddClient makes the token endpoint issue tokens to another client too
// (a tenant): the API tells whose token a request carried.
func (s *Server) AddClient(id, secret string) {
	s.mu.Lock()
	s.others[id] = append(s.others[id], secret)
	s.mu.Unlock()
}

// IssuedTo is how many tokens were issued to client.
func (s *Server) IssuedTo(client string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.clients {
		if c == client {
			n++
		}
	}
	return n
}

// MaxInFlight is the most token requests the endpoint answered at once.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInFlight
}

// SetClientSecrets makes the token endpoint accept any of these secrets,
// as during a rotation with a grace period. Tokens already issued stay
// valid.
func (s *Server) SetClientSecrets(secrets ...string) {
	s.mu.Lock()
	s.secrets = append([]string(nil), secrets...)
	s.mu.Unlock()
}

// SetMode changes how the token endpoint answers.
func (s *Server) SetMode(m Mode) { s.mu.Lock(); s.mode = m; s.mu.Unlock() }

// SetTTL changes the lifetime of the tokens issued from now on.
func (s *Server) SetTTL(d time.Duration) { s.mu.Lock(); s.ttl = d; s.mu.Unlock() }

// SetDelay makes the token endpoint wait d before answering.
func (s *Server) SetDelay(d time.Duration) { s.mu.Lock(); s.delay = d; s.mu.Unlock() }

// SetRetryAfter sets the Retry-After header sent with ModeDown answers.
func (s *Server) SetRetryAfter(v string) { s.mu.Lock(); s.retryAfter = v; s.mu.Unlock() }

// SetOmitExpiresIn leaves expires_in out of token answers (the JWT exp
// claim still carries the lifetime).
func (s *Server) SetOmitExpiresIn(b bool) { s.mu.Lock(); s.omitExpiresIn = b; s.mu.Unlock() }

// SetClockOffset makes the token endpoint's clock run d ahead of the real
// one (behind if d is negative): its Date header and the exp claims of its
// tokens are on that clock. The tokens still live ttl.
func (s *Server) SetClockOffset(d time.Duration) { s.mu.Lock(); s.clockOffset = d; s.mu.Unlock() }

// SetOpaqueTokens makes the token endpoint issue opaque tokens (not JWTs),
// which the API accepts for exactly ttl after they were issued, to the
// nanosecond: only expires_in tells a client their lifetime. JWTs, the
// default, are accepted until their exp claim, in whole seconds, rounded
// up.
func (s *Server) SetOpaqueTokens(b bool) { s.mu.Lock(); s.opaque = b; s.mu.Unlock() }

// SetRevokePrevious makes each new token revoke all earlier ones, as some
// OAuth servers do.
func (s *Server) SetRevokePrevious(b bool) { s.mu.Lock(); s.revokePrevious = b; s.mu.Unlock() }

// SetDeniedChallenge sets the WWW-Authenticate field of the 401s under
// DeniedPrefix: v as is, or none if v is "". (The default is
// InvalidTokenChallenge.) Other 401s keep InvalidTokenChallenge.
func (s *Server) SetDeniedChallenge(v string) {
	s.mu.Lock()
	s.deniedSet, s.deniedChal = true, v
	s.mu.Unlock()
}

// RevokeAll makes every token issued so far invalid for the API.
func (s *Server) RevokeAll() { s.mu.Lock(); clear(s.tokens); s.mu.Unlock() }

// RejectNextAPIRequests makes the API answer the next n requests with 401.
func (s *Server) RejectNextAPIRequests(n int64) { s.unauthFirst.Store(n) }

// TokenRequests is how many token requests arrived.
func (s *Server) TokenRequests() int64 { return s.tokenRequests.Load() }

// APIRequests is how many API requests arrived, accepted or not.
func (s *Server) APIRequests() int64 { return s.apiRequests.Load() }

// APIRejected is how many API requests were answered 401.
func (s *Server) APIRejected() int64 { return s.apiRejected.Load() }

// Bodies returns the request bodies the API accepted, in order.
func (s *Server) Bodies() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// LastTokenRequest returns the last token request and its body.
func (s *Server) LastTokenRequest() (*http.Request, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastTokenReq, s.lastTokenBody
}

// Issued returns every token issued so far, valid or not.
func (s *Server) Issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.everIssued...)
}

// ServeHTTP routes the token endpoint and the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case TokenPath:
		s.serveToken(w, r)
		return
	case StatsPath:
		s.mu.Lock()
		byScope := maps.Clone(s.byScope)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{
			"token_requests":          s.TokenRequests(),
			"token_requests_by_scope": byScope,
			"api_requests":            s.APIRequests(),
			"api_rejected":            s.APIRejected(),
		})
		return
	}
	s.serveAPI(w, r)
}

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
