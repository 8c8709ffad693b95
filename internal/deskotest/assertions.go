package deskotest

import (
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// AssertionServer is a token endpoint for clients that authenticate with
// a signed JWT (RFC 7523 §2.2: private_key_jwt and client_secret_jwt). It
// verifies each assertion with golang-jwt — a library other than the one
// the module signs with — against the keys registered for the client
// (SetKey, AddKey; each for one algorithm): the signature and its
// algorithm, iss = sub = client_id, aud, exp (at most MaxAssertionLifetime
// after iat, and not passed), and a jti never seen before. It answers like
// Desko: a JSON token, or 401 in Desko's shape with the reason. It is safe
// for concurrent use.
type AssertionServer struct {
	clientID string
	audience string
	ttl      time.Duration

	mu       sync.Mutex
	keys     []registeredKey // the keys the client may sign with
	seen     map[string]bool // jti
	last     string          // the last assertion received
	tokens   []string        // every token issued
	now      func() time.Time
	issued   atomic.Int64
	requests atomic.Int64
	refused  atomic.Int64
	reasons  []string
}

// registeredKey is a key registered for the client, with the algorithm it
// verifies: *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey, or a
// []byte for HS256.
type registeredKey struct {
	public any
	alg    string
}

// MaxAssertionLifetime is the longest exp − iat the server accepts.
const MaxAssertionLifetime = 60 * time.Second

// NewAssertionServer returns a token endpoint for clientID whose
// assertions must be signed by the private key that goes with public (or
// with the shared secret, as a []byte, for HS256) and name audience; alg
// is the algorithm expected (RS256, PS256, ES256, ES384, EdDSA, HS256).
func NewAssertionServer(clientID, audience string, public crypto.PublicKey, alg string, ttl time.Duration) *AssertionServer {
	return &AssertionServer{clientID: clientID, audience: audience, keys: []registeredKey{{public, alg}}, ttl: ttl,
		seen: map[string]bool{}, now: time.Now}
}

// SetKey registers public (for alg) as the client's only key, as a
// server does when a key is replaced at once: assertions signed with any
// other key are refused from now on.
func (s *AssertionServer) SetKey(public crypto.PublicKey, alg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = []registeredKey{{public, alg}}
}

// AddKey registers public (for alg) beside the client's other keys, as
// during the overlap of a rotation: assertions signed with either are
// accepted.
func (s *AssertionServer) AddKey(public crypto.PublicKey, alg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, registeredKey{public, alg})
}

// Tokens returns every token issued so far.
func (s *AssertionServer) Tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokens...)
}

// SetClock makes the server judge exp and iat against now().
func (s *AssertionServer) SetClock(now func() time.Time) { s.mu.Lock(); s.now = now; s.mu.Unlock() }

// Requests, Issued and Refused count the token requests and their fate.
func (s *AssertionServer) Requests() int64 { return s.requests.Load() }

// Issued is how many tokens the server issued.
func (s *AssertionServer) Issued() int64 { return s.issued.Load() }

// Refused is how many token requests the server refused.
func (s *AssertionServer) Refused() int64 { return s.refused.Load() }

// Reasons lists why each refused request was refused.
func (s *AssertionServer) Reasons() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.reasons...)
}

// LastAssertion is the last client_assertion received.
func (s *AssertionServer) LastAssertion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// ServeHTTP answers token requests at TokenPath.
func (s *AssertionServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if r.URL.Path != TokenPath || r.Method != http.MethodPost {
		deskoError(w, http.StatusNotFound, "Not found")
		return
	}
	if err := r.ParseForm(); err != nil {
		s.refuse(w, "the request is not a form")
		return
	}
	f := r.PostForm
	switch {
	case f.Get("grant_type") != "client_credentials":
		s.refuse(w, "unsupported grant_type")
		return
	case f.Has("client_secret"):
		s.refuse(w, "a client_secret was sent with a client assertion")
		return
	case f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
		s.refuse(w, "wrong client_assertion_type")
		return
	case f.Has("client_id") && f.Get("client_id") != s.clientID:
		s.refuse(w, "unknown client_id")
		return
	}
	assertion := f.Get("client_assertion")
	s.mu.Lock()
	s.last = assertion
	s.mu.Unlock()
	if err := s.Verify(assertion); err != nil {
		s.refuse(w, err.Error())
		return
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	s.mu.Lock()
	tok := fmt.Sprintf("assertion-token-%d-%s", len(s.tokens)+1, hex.EncodeToString(nonce[:]))
	s.tokens = append(s.tokens, tok)
	s.mu.Unlock()
	s.issued.Add(1)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type": "Bearer", "expires_in": int(s.ttl / time.Second),
		"access_token": tok, "scope": f.Get("scope"),
	})
}

// Valid reports whether tok is a token the server issued.
func (s *AssertionServer) Valid(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.tokens, tok)
}

// Verify checks an assertion as ServeHTTP does, recording its jti.
func (s *AssertionServer) Verify(assertion string) error {
	s.mu.Lock()
	now, keys := s.now, s.keys
	s.mu.Unlock()
	var methods []string
	for _, k := range keys {
		methods = append(methods, k.alg)
	}
	// The keys registered for the assertion's algorithm: golang-jwt tries
	// each.
	keyFor := func(t *jwt.Token) (any, error) {
		var set jwt.VerificationKeySet
		for _, k := range keys {
			if k.alg == t.Method.Alg() {
				set.Keys = append(set.Keys, k.public)
			}
		}
		return set, nil
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(assertion, &claims, keyFor,
		jwt.WithValidMethods(methods), jwt.WithAudience(s.audience), jwt.WithIssuer(s.clientID),
		jwt.WithSubject(s.clientID), jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(now))
	if err != nil {
		return fmt.Errorf("invalid assertion: %w", err)
	}
	if claims.IssuedAt == nil || claims.ExpiresAt.Sub(claims.IssuedAt.Time) > MaxAssertionLifetime {
		return errors.New("invalid assertion: it lives longer than 60 s")
	}
	if claims.ID == "" {
		return errors.New("invalid assertion: no jti")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[claims.ID] {
		return errors.New("invalid assertion: replayed (jti seen before)")
	}
	s.seen[claims.ID] = true
	return nil
}

func (s *AssertionServer) refuse(w http.ResponseWriter, why string) {
	s.refused.Add(1)
	s.mu.Lock()
	s.reasons = append(s.reasons, why)
	s.mu.Unlock()
	deskoError(w, http.StatusUnauthorized, "Client authentication failed: "+why)
}
