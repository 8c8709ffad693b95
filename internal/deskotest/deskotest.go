// Package deskotest is a stand-in for Desko: a token endpoint that speaks
// Desko's documented client-credentials format and an API that accepts only
// the tokens it issued. Tests, the offline demo and the load bench use it.
package deskotest

import (
	"maps"
	"net/http"
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
