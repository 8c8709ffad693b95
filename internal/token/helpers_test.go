package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// The source tests run every timing decision inside a testing/synctest
// bubble, where time.Now, time.Sleep and the source's timer run on a fake
// clock that moves only when every goroutine of the bubble is blocked. The
// token endpoint is an in-memory http.RoundTripper (testNet) that calls a
// handler directly, so a request held by a test is a goroutine blocked on
// a channel of the bubble, which synctest.Wait can see. A test that waits
// for something that never comes deadlocks its bubble, which synctest
// reports. Only the tests that need a real peer (go-oauth2 on a socket, a
// real dial) or real monotonic readings run outside a bubble, on the real
// clock; they wait only in calls to the source, which its fetch timeout
// bounds.

const (
	tsClientID = "943e47a1-test-client"
	tsSecret   = "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB"
)

// settle advances the bubble's clock by d and waits until every goroutine
// of the bubble is blocked again: whatever the source's timer started in
// the meantime (a refresh, a retry) has run to its end, or to a request
// held by the test.
func settle(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// hasMonotonic reports whether t carries a monotonic clock reading (its
// String form then ends with "m=±<seconds>", as documented by package
// time). Times inside a synctest bubble never carry one, so the tests of
// monotonic readings run on the real clock.
func hasMonotonic(t time.Time) bool { return strings.Contains(t.String(), " m=") }

// leaksSecret reports whether s holds the client secret in any form the
// leak check finds, or any 6-character piece of it (a secret cut in half
// by a truncation is still a leak).
func leaksSecret(s string) bool {
	if scrubtest.NewCheck(tsClientID, tsSecret).Leaks(s) {
		return true
	}
	const piece = 6
	for i := 0; i+piece <= len(tsSecret); i++ {
		if strings.Contains(s, tsSecret[i:i+piece]) {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// The in-memory network

// testNet is an http.RoundTripper that hands each request to the handler
// registered for its host (see serveInMemory), in the caller's goroutine.
// An unknown host fails like a dial. It works inside and outside bubbles.
type testNet struct{}

// testHosts maps a host of the test network to its http.Handler.
var (
	testHosts    sync.Map
	testHostSeq  atomic.Int64
	testNetError = errors.New("no such host in the test network")
)

// testClient is the HTTP client of every source that talks to the test
// network.
var testClient = &http.Client{Transport: testNet{}}

// serveInMemory registers h on a new host of the test network for the
// rest of the test and returns its base URL.
func serveInMemory(t testing.TB, h http.Handler) string {
	host := fmt.Sprintf("token-%d.test", testHostSeq.Add(1))
	testHosts.Store(host, h)
	t.Cleanup(func() { testHosts.Delete(host) })
	return "http://" + host
}

// failInMemory registers a host of the test network, for the rest of the
// test, whose round trips all fail with err (as a transport's would: the
// client wraps it in a *url.Error), and returns its base URL.
func failInMemory(t testing.TB, err error) string {
	host := fmt.Sprintf("failing-%d.test", testHostSeq.Add(1))
	testHosts.Store(host, err)
	t.Cleanup(func() { testHosts.Delete(host) })
	return "http://" + host
}

// RoundTrip serves req as a server would see it: a copy with the request
// URI and host set, the same body, and the caller's context, so that a
// handler that holds a request gives up when the fetch times out. A host
// of failInMemory fails with its error.
func (testNet) RoundTrip(req *http.Request) (*http.Response, error) {
	h, ok := testHosts.Load(req.URL.Host)
	if err, isErr := h.(error); !ok || isErr {
		if req.Body != nil {
			req.Body.Close()
		}
		if isErr {
			return nil, err
		}
		return nil, fmt.Errorf("dial %s: %w", req.URL.Host, testNetError)
	}
	sr := req.Clone(req.Context())
	sr.RequestURI = req.URL.RequestURI()
	sr.Host = req.URL.Host
	sr.RemoteAddr = "192.0.2.1:1234"
	if sr.Body == nil {
		sr.Body = http.NoBody
	}
	rec := httptest.NewRecorder()
	h.(http.Handler).ServeHTTP(rec, sr)
	if err := req.Context().Err(); err != nil {
		return nil, err // the handler gave up with the caller
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// ---------------------------------------------------------------------------
// The scriptable token endpoint

// responder answers the n-th (1-based) token request.
type responder func(w http.ResponseWriter, r *http.Request, n int64)

// okToken issues opaque tokens "tok-<n>" that live expiresIn seconds. They
// are not JWTs on purpose, so that their lifetime is exactly expiresIn.
func okToken(expiresIn int) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":%d,"access_token":"tok-%d"}`, expiresIn, n)
	}
}

// answer always gives the same answer; headers are name, value pairs.
func answer(status int, contentType, body string, headers ...string) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// echoSecret answers status with a body built by format from the
// client_secret the JSON request carried (read from the request, as a
// careless server would).
func echoSecret(status int, contentType string, format func(secret string) string) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		var req struct {
			ClientSecret string `json:"client_secret"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		answer(status, contentType, format(req.ClientSecret))(w, r, n)
	}
}

// tokenServer is a scriptable token endpoint on the test network that
// counts its requests, notes when each arrived, and can hold them until
// the test releases them. Make it inside the bubble that uses it.
type tokenServer struct {
	url      string
	requests atomic.Int64

	mu      sync.Mutex
	respond responder
	hold    chan struct{}
	arrived []time.Time // when each request arrived, in order
}

// newTokenServer starts a token endpoint that answers with r.
func newTokenServer(t testing.TB, r responder) *tokenServer {
	s := &tokenServer{respond: r}
	s.url = serveInMemory(t, http.HandlerFunc(s.serve))
	return s
}

func (s *tokenServer) serve(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	s.mu.Lock()
	respond, hold := s.respond, s.hold
	s.arrived = append(s.arrived, time.Now())
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	respond(w, r, n)
}

// tokenURL is the endpoint's URL, on Desko's path.
func (s *tokenServer) tokenURL() string { return s.url + deskotest.TokenPath }

// setRespond changes the answer of the requests that arrive from now on.
func (s *tokenServer) setRespond(r responder) {
	s.mu.Lock()
	s.respond = r
	s.mu.Unlock()
}

// holdRequests makes requests that arrive from now on wait until release
// is called (release is idempotent and also runs at cleanup).
func (s *tokenServer) holdRequests(t testing.TB) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
	t.Cleanup(release)
	return release
}

// count is how many requests arrived.
func (s *tokenServer) count() int64 { return s.requests.Load() }

// arrivals returns when each request arrived, as offsets from start.
func (s *tokenServer) arrivals(start time.Time) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]time.Duration, len(s.arrived))
	for i, at := range s.arrived {
		out[i] = at.Sub(start)
	}
	return out
}

// ---------------------------------------------------------------------------
// Sources

// fixedRand pins the source's jitter.
func fixedRand(v float64) func() float64 { return func() float64 { return v } }

// testCreds are the test credentials.
func testCreds() *Static { return &Static{ClientID: tsClientID, ClientSecret: tsSecret} }

// static returns the Static credentials of c, for options to change.
func static(c *Config) *Static { return c.Credentials.(*Static) }

// newTestSource makes a source for tokenURL with the test credentials on
// the test network, and jitter pinned to the middle (Rand 0.5 makes
// backoff jitter exactly ×1 and refreshes happen at 77.5% of a token's
// lifetime); opts change that config. It is closed at cleanup.
func newTestSource(t testing.TB, tokenURL string, opts ...func(*Config)) *Source {
	t.Helper()
	cfg := Config{
		TokenURL:    tokenURL,
		Credentials: testCreds(),
		HTTPClient:  testClient,
		Rand:        fixedRand(0.5),
	}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// mustGet returns s's token, failing the test on an error. Outside a
// bubble the wait is bounded by the source's own fetch timeout.
func mustGet(t testing.TB, s *Source) *Token {
	t.Helper()
	tok, err := s.Get(t.Context())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if tok == nil || tok.Value == "" {
		t.Fatalf("Get returned an empty token")
	}
	return tok
}

// mustGetErr returns the *Error of s's Get, failing the test if Get
// returned a token or another error.
func mustGetErr(t testing.TB, s *Source) *Error {
	t.Helper()
	tok, err := s.Get(t.Context())
	if err == nil {
		t.Fatalf("Get returned token %q, want an error", tok.Value)
	}
	var te *Error
	if !errors.As(err, &te) {
		t.Fatalf("Get error %T %v is not a *Error", err, err)
	}
	return te
}

// mustReplace tells s that tok was rejected and returns its replacement.
func mustReplace(t testing.TB, s *Source, tok *Token) *Token {
	t.Helper()
	fresh := s.Replace(t.Context(), Refusal{Token: tok})
	if fresh == nil || fresh.Value == tok.Value {
		t.Fatalf("Replace(%q) found no newer token (status %+v)", tok.Value, s.Status())
	}
	return fresh
}

// peek returns s's current token if it is valid, without ever fetching
// (tests only: production code asks Get).
func peek(s *Source) *Token {
	if t := s.cur.Load(); t.Valid(time.Now()) {
		return t
	}
	return nil
}

// nextWake is how long until s's timer starts the next refresh or retry,
// read from the state its timer was armed from (scheduleLocked). It fails
// the test when no timer should be armed: a fetch in flight, nothing to
// refresh, or a closed source.
func nextWake(t testing.TB, s *Source) time.Duration {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var at time.Time
	switch cur := s.cur.Load(); {
	case s.closed || s.flight != nil:
		t.Fatalf("no timer is armed (closed %v, fetch in flight %v)", s.closed, s.flight != nil)
	case s.lastErr != nil:
		at = s.nextAttempt
	case cur != nil:
		at = s.refreshAtLocked(cur)
	default:
		t.Fatal("no timer is armed: no token and no failure")
	}
	return time.Until(at)
}

// inBubble runs f in a synctest bubble, as the subtest name when name is
// not empty (a bubble cannot start subtests of its own).
func inBubble(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if name == "" {
		synctest.Test(t, f)
		return
	}
	t.Run(name, func(t *testing.T) { synctest.Test(t, f) })
}
