package deskoauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// The engine tests run every timing decision on a fakeClock and synchronise
// with the engine's goroutines through channels, the fake clock's
// BlockUntil* helpers and a token endpoint that can hold requests. None of
// them sleeps.

const (
	tsClientID = "943e47a1-test-client"
	tsSecret   = "7gWtVs9P-s3cr3t-PEyjRVqz05QdyB"
)

// hasMonotonic reports whether t carries a monotonic clock reading (its
// String form then ends with "m=±<seconds>", as documented by package time).
func hasMonotonic(t time.Time) bool { return strings.Contains(t.String(), " m=") }

// leaksSecret reports whether s holds the client secret in any form the
// leak check finds, or any 6-character piece of it (a secret cut in half
// by a truncation is still a leak).
func leaksSecret(s string) bool {
	if lc := newLeakCheck(tsClientID, tsSecret); lc.sc.Scrub(s) != s {
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

// responder answers the n-th (1-based) token request.
type responder func(w http.ResponseWriter, r *http.Request, n int64)

// okToken issues opaque tokens "tok-<n>" that live expiresIn seconds. They
// are not JWTs on purpose, so that their lifetime is exactly expiresIn
// whatever the fake clock says.
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

// tokenServer is a scriptable token endpoint that counts its requests and
// can hold them until the test releases them.
type tokenServer struct {
	*httptest.Server
	t        testing.TB
	requests atomic.Int64
	arrived  chan int64 // the number of every request, as it arrives

	mu      sync.Mutex
	respond responder
	hold    chan struct{}
}

func newTokenServer(t testing.TB, r responder) *tokenServer {
	s := &tokenServer{t: t, respond: r, arrived: make(chan int64, 4096)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *tokenServer) serve(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	s.mu.Lock()
	respond, hold := s.respond, s.hold
	s.mu.Unlock()
	select {
	case s.arrived <- n:
	default:
	}
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	respond(w, r, n)
}

func (s *tokenServer) tokenURL() string { return s.URL + deskotest.TokenPath }

func (s *tokenServer) setRespond(r responder) {
	s.mu.Lock()
	s.respond = r
	s.mu.Unlock()
}

// holdRequests makes requests that arrive from now on wait until release
// is called (release is idempotent and also runs at cleanup, before the
// server closes).
func (s *tokenServer) holdRequests() (release func()) {
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
	s.t.Cleanup(release)
	return release
}

// waitArrival blocks until the n-th request has reached the handler.
func (s *tokenServer) waitArrival(n int64) {
	s.t.Helper()
	for {
		if got := waitChan(s.t, s.arrived, fmt.Sprintf("token request #%d", n)); got >= n {
			return
		}
	}
}

func (s *tokenServer) count() int64 { return s.requests.Load() }

func fixedRand(v float64) func() float64 { return func() float64 { return v } }

// newTestEngine starts an engine for tokenURL with the test credentials,
// clk, and jitter pinned to the middle (Rand 0.5 makes backoff jitter
// exactly ×1 and refreshes happen at 77.5% of a token's lifetime).
func newTestEngine(t testing.TB, tokenURL string, clk engineClock, opts ...func(*engineConfig)) *tokenEngine {
	t.Helper()
	cfg := engineConfig{
		TokenURL:     tokenURL,
		ClientID:     tsClientID,
		ClientSecret: tsSecret,
		Clock:        clk,
		Rand:         fixedRand(0.5),
	}
	for _, o := range opts {
		o(&cfg)
	}
	e, err := newTokenEngine(cfg)
	if err != nil {
		t.Fatalf("newTokenEngine: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), fakeWaitLimit)
	t.Cleanup(cancel)
	return ctx
}

func mustGet(t testing.TB, e *tokenEngine) *accessToken {
	t.Helper()
	tok, err := e.Get(testCtx(t))
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if tok == nil || tok.Value == "" {
		t.Fatalf("Get returned an empty token")
	}
	return tok
}

// mustReplace tells e that tok was rejected and returns its replacement.
func mustReplace(t testing.TB, e *tokenEngine, tok *accessToken) *accessToken {
	t.Helper()
	fresh := e.Replace(testCtx(t), tok)
	if fresh == nil || fresh.Value == tok.Value {
		t.Fatalf("Replace(%q) found no newer token (status %+v)", tok.Value, e.Status())
	}
	return fresh
}

func mustGetErr(t testing.TB, e *tokenEngine) *tokenError {
	t.Helper()
	tok, err := e.Get(testCtx(t))
	if err == nil {
		t.Fatalf("Get returned token %q, want an error", tok.Value)
	}
	var te *tokenError
	if !errors.As(err, &te) {
		t.Fatalf("Get error %T %v is not a *TokenError", err, err)
	}
	return te
}

// ---------------------------------------------------------------------------
// Request format

// ---------------------------------------------------------------------------
// Answer parsing

// ---------------------------------------------------------------------------
// Error shapes

// ---------------------------------------------------------------------------
// Single flight

// waitSignalCtx reports every call of Done on waiting: the engine calls it
// when a caller starts waiting for a fetch, which is how the tests know all
// callers have piled up on the same fetch.
type waitSignalCtx struct {
	context.Context
	waiting chan<- struct{}
}

func (c waitSignalCtx) Done() <-chan struct{} {
	c.waiting <- struct{}{}
	return c.Context.Done()
}

func TestEngineSingleFlight(t *testing.T) {
	const callers = 100
	srv := newTokenServer(t, okToken(3600))
	release := srv.holdRequests()
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))

	waiting := make(chan struct{}, 10*callers)
	ctx := waitSignalCtx{testCtx(t), waiting}
	type result struct {
		tok *accessToken
		err error
	}
	results := make(chan result, callers)
	for range callers {
		go func() {
			tok, err := e.Get(ctx)
			results <- result{tok, err}
		}()
	}
	for i := range callers {
		waitChan(t, waiting, fmt.Sprintf("caller %d to wait", i+1))
	}
	srv.waitArrival(1)
	if st := e.Status(); st.State != stateRefreshing {
		t.Errorf("State while fetching = %s, want %s", st.State, stateRefreshing)
	}
	release()
	var first *accessToken
	for range callers {
		r := waitChan(t, results, "a caller's result")
		if r.err != nil {
			t.Fatalf("Get: %v", r.err)
		}
		if first == nil {
			first = r.tok
		}
		if r.tok != first {
			t.Fatalf("callers got different tokens %q and %q", first.Value, r.tok.Value)
		}
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d callers caused %d token requests, want 1", callers, n)
	}
	if st := e.Status(); st.Fetches != 1 || st.State != stateFresh {
		t.Errorf("Status = %+v, want 1 fetch and state fresh", st)
	}
}

func TestEngineSingleFlightCancelledCaller(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	release := srv.holdRequests()
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))

	waiting := make(chan struct{}, 10)
	ctxA, cancelA := context.WithCancel(testCtx(t))
	defer cancelA()
	errA := make(chan error, 1)
	go func() {
		_, err := e.Get(waitSignalCtx{ctxA, waiting})
		errA <- err
	}()
	type result struct {
		tok *accessToken
		err error
	}
	resB := make(chan result, 1)
	go func() {
		tok, err := e.Get(waitSignalCtx{testCtx(t), waiting})
		resB <- result{tok, err}
	}()
	waitChan(t, waiting, "caller A to wait")
	waitChan(t, waiting, "caller B to wait")
	srv.waitArrival(1)

	cancelA()
	// A returns while the token request is still held by the server.
	err := waitChan(t, errA, "the cancelled caller to return")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v, want context.Canceled", err)
	}
	select {
	case r := <-resB:
		t.Fatalf("caller B returned (%v, %v) before the token request finished", r.tok, r.err)
	default:
	}

	release()
	r := waitChan(t, resB, "caller B's result")
	if r.err != nil || r.tok.Value != "tok-1" {
		t.Fatalf("caller B got %v, %v; want tok-1", r.tok, r.err)
	}
	if p := peek(e); p != r.tok {
		t.Fatalf("the fetch A gave up on did not fill the cache (Peek = %v)", p)
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

func TestEngineWarmUp(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	release := srv.holdRequests()
	e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
	e.WarmUp() // must not block although the server holds the request
	srv.waitArrival(1)
	e.WarmUp() // joins nothing, starts nothing: one is in flight
	release()
	if tok := mustGet(t, e); tok.Value != "tok-1" {
		t.Fatalf("Get = %q, want tok-1", tok.Value)
	}
	e.WarmUp() // a valid token is held: no fetch
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// ---------------------------------------------------------------------------
// Proactive refresh

// ---------------------------------------------------------------------------
// Backoff

// ---------------------------------------------------------------------------
// engineStatus

// ---------------------------------------------------------------------------
// Close

func TestEngineClose(t *testing.T) {
	t.Run("stops the refresher", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		clk := newFakeClock(t)
		e := newTestEngine(t, srv.tokenURL(), clk)
		tok := mustGet(t, e)
		clk.BlockUntilTimers(1)

		closed := make(chan error, 1)
		go func() { closed <- e.Close() }()
		if err := waitChan(t, closed, "Close to return"); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if p := clk.Pending(); len(p) != 0 {
			t.Fatalf("after Close timers are still armed: %v", p)
		}
		if err := e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		// A request still in flight during a reload gets the cached token.
		if got := mustGet(t, e); got != tok {
			t.Fatalf("Get after Close = %q, want the cached token", got.Value)
		}
		// No background refresh any more: time passes, nothing is fetched.
		clk.Advance(2 * time.Hour)
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests after Close, want 1", n)
		}
	})
	t.Run("empty engine still answers", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		e.Close()
		if tok := mustGet(t, e); tok.Value != "tok-1" {
			t.Fatalf("Get after Close = %q", tok.Value)
		}
	})
	t.Run("empty engine with a failing server still answers", func(t *testing.T) {
		srv := newTokenServer(t, answer(503, "", ""))
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		e.Close()
		if te := mustGetErr(t, e); te.Status != 503 {
			t.Fatalf("Get after Close error = %v", te)
		}
		mustGetErr(t, e) // fail fast, no panic
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests, want 1", n)
		}
	})
	t.Run("does not wait for a fetch in flight", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		release := srv.holdRequests()
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		e.WarmUp()
		srv.waitArrival(1)
		closed := make(chan error, 1)
		go func() { closed <- e.Close() }()
		waitChan(t, closed, "Close to return while a fetch is held")
		release()
		if tok := mustGet(t, e); tok.Value != "tok-1" {
			t.Fatalf("Get = %q, want tok-1", tok.Value)
		}
	})
}

// ---------------------------------------------------------------------------
// Monotonic time

// TestEngineExpiryUsesMonotonicClock checks what can honestly be checked
// about wall-clock jumps.
//
// A wall-clock jump cannot be simulated here: the engine compares times
// with time.Time.Before/Sub, which use the monotonic reading when both
// sides have one, and package time offers no way to build a time whose
// wall and monotonic readings disagree (Add moves both), while a test
// cannot move the machine's wall clock. What the engine must do to be
// immune is keep the monotonic reading on every time it compares
// (obtained, expiry, refreshAt, next attempt): Round(0), UTC(), In(),
// Truncate() or a JSON round trip on that path would strip it, and these
// assertions would fail. The second half checks that validity follows the
// clock's offsets to the nanosecond.
func TestEngineExpiryUsesMonotonicClock(t *testing.T) {
	srv := newTokenServer(t, okToken(100))
	clk := newFakeClock(t)
	if !hasMonotonic(clk.Now()) {
		t.Fatal("the fake clock lost the monotonic reading")
	}
	e := newTestEngine(t, srv.tokenURL(), clk)
	tok := mustGet(t, e)
	for name, v := range map[string]time.Time{"obtained": tok.obtained, "expiry": tok.expiry, "refreshAt": tok.refreshAt} {
		if !hasMonotonic(v) {
			t.Errorf("token %s = %v has no monotonic reading", name, v)
		}
	}
	if hasMonotonic(tok.wallExpiry) {
		t.Errorf("wallExpiry %v carries a monotonic reading (it is for display)", tok.wallExpiry)
	}
	if d := tok.expiry.Sub(tok.obtained); d != 100*time.Second {
		t.Fatalf("lifetime = %v, want 100s", d)
	}
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(500, "", ""))
	clk.Advance(100*time.Second - time.Nanosecond) // the refresh at 77.5s fails
	clk.BlockUntilTimers(1)
	e.mu.Lock()
	next := e.nextAttempt
	e.mu.Unlock()
	if !hasMonotonic(next) {
		t.Errorf("next attempt %v has no monotonic reading", next)
	}
	if p := peek(e); p != tok {
		t.Fatalf("1ns before expiry Peek = %v, want the token", p)
	}
	clk.Advance(time.Nanosecond)
	if p := peek(e); p != nil {
		t.Fatalf("at expiry Peek still returns the token")
	}
}
