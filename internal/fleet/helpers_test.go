package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// The tests of this package run on the fake clock of testing/synctest
// wherever they can: token lifetimes, refreshes, backoffs, lock polling
// (certmagic.FileStorage waits with time.After and time.Sleep) and every
// deadline. The token endpoint is an in-memory http.RoundTripper, and the
// storages that hang on purpose block on channels of the bubble, which
// count as durably blocked. Only a goroutine blocked in real I/O (a read of
// a FIFO) keeps a bubble from ever idling; the one test that needs that runs
// on real time, with every wait bounded by await.

const (
	testTokenURL = "https://auth.example.test/v1.1/oauth/token"
	testClientID = "client-42"
	testSecret   = "s3cr3t-Client-Secret-value-0123456789"
	// testToken is a token that the entry tests store; the fleet tests'
	// token endpoint issues "tok-<n>" tokens instead.
	testToken = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJlLXZhbHVl"
)

var testScopes = []string{"read", "write"}

// testCreds returns a new pointer to the test credentials each time (an
// Entry caches what it derives for the last pointer it was given).
func testCreds() *token.Credentials {
	return &token.Credentials{ClientID: testClientID, ClientSecret: testSecret}
}

// testKey is the storage key of the test credentials' entry.
func testKey() string { return Key(testTokenURL, testClientID, testScopes, nil) }

// storedTok is a token with times that are easy to look for in raw bytes.
func storedTok() *token.Stored {
	obtained := time.Date(2031, 7, 14, 9, 26, 53, 0, time.UTC)
	return &token.Stored{AccessToken: testToken, Obtained: obtained, Expiry: obtained.Add(37 * time.Minute)}
}

// newEntry returns the entry of the test token URL and scopes in s.
func newEntry(t testing.TB, s certmagic.Storage) *Entry {
	t.Helper()
	e, err := New(s, testTokenURL, testScopes, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

// sealedFor returns what e derived for c: the entry's key, lock name and
// cipher.
func sealedFor(t testing.TB, e *Entry, c *token.Credentials) *sealed {
	t.Helper()
	s, err := e.sealFor(c)
	if err != nil {
		t.Fatalf("sealFor: %v", err)
	}
	return s
}

// sameToken reports whether a and b hold the same token and instants.
func sameToken(a, b *token.Stored) bool {
	return a != nil && b != nil && a.AccessToken == b.AccessToken && a.Obtained.Equal(b.Obtained) && a.Expiry.Equal(b.Expiry)
}

// assertClean fails if s holds the secret or the test token (or is empty).
func assertClean(t testing.TB, what, s string) {
	t.Helper()
	scrubtest.NewCheck(testClientID, testSecret, testToken).AssertNone(t, what, s)
}

// lockKeeperEnd is longer than certmagic.FileStorage's lock freshness
// interval (5 s): a lock's keeper goroutine, which refreshes the lock file
// that often, has noticed the file is gone and ended by then.
const lockKeeperEnd = 6 * time.Second

// bubbleDir returns a temporary directory for the FileStorages of a test
// in a bubble. At cleanup, after the directory is removed (and the
// sources closed), it lets lockKeeperEnd of fake time pass, so that the
// lock keepers end: a bubble whose root has returned cannot advance time,
// and a goroutine left asleep is a deadlock.
func bubbleDir(t *testing.T) string {
	t.Helper()
	t.Cleanup(func() {
		time.Sleep(lockKeeperEnd)
		synctest.Wait()
	})
	return t.TempDir()
}

// waitLimit bounds every real-time wait of the tests: an event that has
// not happened by then fails the test instead of hanging it. It is never a
// synchronisation device.
const waitLimit = 5 * time.Second

// await receives from ch, failing the test if nothing comes within
// waitLimit of real time. It is the tests' one bounded wait; in a bubble,
// where waitLimit would be fake time, tests block on ch directly (a wait
// that never ends is then a deadlock, which synctest reports).
func await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	limit := time.NewTimer(waitLimit)
	defer limit.Stop()
	select {
	case v := <-ch:
		return v
	case <-limit.C:
		t.Fatalf("gave up after %v waiting for %s", waitLimit, what)
		var zero T
		return zero
	}
}

// returnsWithin runs f and fails the test if it has not returned within
// waitLimit (the goroutine is then left behind: the binary ends soon).
func returnsWithin(t testing.TB, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	await(t, done, what+" to return")
}

// waitGateIdle waits until every abandoned call of g has returned. For
// real-time tests; a bubble uses synctest.Wait.
func waitGateIdle(t testing.TB, g *gate) {
	t.Helper()
	idle := make(chan struct{})
	go func() {
		defer close(idle)
		for {
			g.mu.Lock()
			n, changed := g.abandoned, g.changed
			g.mu.Unlock()
			if n == 0 {
				return
			}
			<-changed
		}
	}()
	await(t, idle, "the storage's stuck calls to return")
}

// ---------------------------------------------------------------------------
// Storages

// fakeStorage is an in-memory certmagic.Storage whose errors and lock
// behaviour tests choose.
type fakeStorage struct {
	mu                         sync.Mutex
	data                       map[string][]byte
	loadErr, storeErr, lockErr error
	unlockErr                  error
	lockGate                   chan struct{} // if set, Lock ignores ctx and waits for it to close
	unlocked                   chan string   // if set, receives each unlocked name
	locks                      int
	unlockCtxErr               error
	unlockHadDeadline          bool
}

// get returns a copy of the value at key, nil if there is none.
func (s *fakeStorage) get(key string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.data[key])
}

// put sets the value at key to a copy of v.
func (s *fakeStorage) put(key string, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.data == nil {
		s.data = map[string][]byte{}
	}
	s.data[key] = bytes.Clone(v)
}

// lockCalls is how many times Lock was called.
func (s *fakeStorage) lockCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.locks
}

func (s *fakeStorage) Lock(ctx context.Context, name string) error {
	s.mu.Lock()
	s.locks++
	gate := s.lockGate
	s.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return s.lockErr
}

func (s *fakeStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	s.unlockCtxErr = ctx.Err()
	_, s.unlockHadDeadline = ctx.Deadline()
	s.mu.Unlock()
	if s.unlocked != nil {
		s.unlocked <- name
	}
	return s.unlockErr
}

func (s *fakeStorage) Store(_ context.Context, key string, value []byte) error {
	if s.storeErr != nil {
		return s.storeErr
	}
	s.put(key, value)
	return nil
}

func (s *fakeStorage) Load(_ context.Context, key string) ([]byte, error) {
	if s.loadErr != nil {
		return nil, s.loadErr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return bytes.Clone(v), nil
}

func (s *fakeStorage) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.data, key)
	return nil
}

func (s *fakeStorage) Exists(_ context.Context, key string) bool {
	return s.get(key) != nil
}

func (s *fakeStorage) List(context.Context, string, bool) ([]string, error) {
	return nil, errors.New("not implemented")
}

func (s *fakeStorage) Stat(_ context.Context, key string) (certmagic.KeyInfo, error) {
	if s.loadErr != nil {
		return certmagic.KeyInfo{}, s.loadErr
	}
	v := s.get(key)
	if v == nil {
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	return certmagic.KeyInfo{Key: key, Size: int64(len(v)), IsTerminal: true}, nil
}

// probingStorage makes one attempt at the lock before waiting for it in
// FileStorage.Lock, and reports when that attempt was refused.
type probingStorage struct {
	*certmagic.FileStorage
	refused chan struct{}
}

func (s *probingStorage) Lock(ctx context.Context, name string) error {
	// TryLock with an ended context makes exactly one attempt: it returns
	// when it would otherwise wait for FileStorage's next poll.
	ended, cancel := context.WithCancel(ctx)
	cancel()
	if ok, _ := s.TryLock(ended, name); ok {
		return nil
	}
	s.refused <- struct{}{}
	return s.FileStorage.Lock(ctx, name)
}

// hangingStorage is a fakeStorage whose Load (or Stat) blocks, ignoring
// its context, until release is closed, and which counts every call.
type hangingStorage struct {
	fakeStorage
	hangLoad, hangStat bool
	hangAfter          int64 // calls up to this many answer at once
	release            chan struct{}
	calls              sync.Map // method name → *atomic.Int64
}

// count is how many times method was called.
func (s *hangingStorage) count(method string) int64 {
	v, _ := s.calls.LoadOrStore(method, new(atomic.Int64))
	return v.(*atomic.Int64).Load()
}

// called counts a call of method and returns the count.
func (s *hangingStorage) called(method string) int64 {
	v, _ := s.calls.LoadOrStore(method, new(atomic.Int64))
	return v.(*atomic.Int64).Add(1)
}

// counts returns the count of every method.
func (s *hangingStorage) counts() map[string]int64 {
	out := map[string]int64{}
	for _, m := range []string{"Load", "Stat", "Store", "Lock", "Unlock"} {
		out[m] = s.count(m)
	}
	return out
}

func (s *hangingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if n := s.called("Load"); s.hangLoad && n > s.hangAfter {
		<-s.release
	}
	return s.fakeStorage.Load(ctx, key)
}

func (s *hangingStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if n := s.called("Stat"); s.hangStat && n > s.hangAfter {
		<-s.release
	}
	info, err := s.fakeStorage.Stat(ctx, key)
	if err == nil {
		info.Size = 0 // a storage that does not know sizes
	}
	return info, err
}

func (s *hangingStorage) Store(ctx context.Context, key string, v []byte) error {
	s.called("Store")
	return s.fakeStorage.Store(ctx, key, v)
}

func (s *hangingStorage) Lock(ctx context.Context, name string) error {
	s.called("Lock")
	return s.fakeStorage.Lock(ctx, name)
}

func (s *hangingStorage) Unlock(ctx context.Context, name string) error {
	s.called("Unlock")
	return s.fakeStorage.Unlock(ctx, name)
}

// stubbornUnlockStorage is a fakeStorage whose Unlock blocks, ignoring its
// context, until release is closed.
type stubbornUnlockStorage struct {
	fakeStorage
	release chan struct{}
	unlocks atomic.Int64
}

func (s *stubbornUnlockStorage) Unlock(ctx context.Context, name string) error {
	<-s.release
	s.unlocks.Add(1)
	return nil
}

// hugeStatStorage is a fakeStorage that says the entry is huge and counts
// the reads of it.
type hugeStatStorage struct {
	fakeStorage
	size  int64
	loads atomic.Int64
}

func (s *hugeStatStorage) Stat(_ context.Context, key string) (certmagic.KeyInfo, error) {
	return certmagic.KeyInfo{Key: key, Size: s.size, IsTerminal: true}, nil
}

func (s *hugeStatStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.loads.Add(1)
	return s.fakeStorage.Load(ctx, key)
}

// countingFileStorage counts the Loads of a FileStorage.
type countingFileStorage struct {
	*certmagic.FileStorage
	loads atomic.Int64
}

func (s *countingFileStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.loads.Add(1)
	return s.FileStorage.Load(ctx, key)
}

var errStorageDown = errors.New("storage backend unreachable")

// downStorage is a storage that is unreachable: every call fails.
func downStorage() *fakeStorage {
	e := errStorageDown
	return &fakeStorage{loadErr: e, storeErr: e, lockErr: e, unlockErr: e}
}

// trapStorage counts its calls (which all fail) and, once armed, fails the
// test on any call.
type trapStorage struct {
	t     testing.TB
	calls atomic.Int64
	armed atomic.Bool
}

func (s *trapStorage) called(method string) error {
	s.calls.Add(1)
	if s.armed.Load() {
		s.t.Errorf("storage.%s called after SetStore(nil)", method)
	}
	return errStorageDown
}

func (s *trapStorage) Lock(context.Context, string) error          { return s.called("Lock") }
func (s *trapStorage) Unlock(context.Context, string) error        { return s.called("Unlock") }
func (s *trapStorage) Store(context.Context, string, []byte) error { return s.called("Store") }
func (s *trapStorage) Load(context.Context, string) ([]byte, error) {
	return nil, s.called("Load")
}
func (s *trapStorage) Delete(context.Context, string) error { return s.called("Delete") }
func (s *trapStorage) Exists(context.Context, string) bool {
	s.called("Exists")
	return false
}
func (s *trapStorage) List(context.Context, string, bool) ([]string, error) {
	return nil, s.called("List")
}
func (s *trapStorage) Stat(context.Context, string) (certmagic.KeyInfo, error) {
	return certmagic.KeyInfo{}, s.called("Stat")
}

var (
	_ certmagic.Storage = (*fakeStorage)(nil)
	_ certmagic.Storage = (*probingStorage)(nil)
	_ certmagic.Storage = (*hangingStorage)(nil)
	_ certmagic.Storage = (*stubbornUnlockStorage)(nil)
	_ certmagic.Storage = (*hugeStatStorage)(nil)
	_ certmagic.Storage = (*countingFileStorage)(nil)
	_ certmagic.Storage = (*trapStorage)(nil)
)

// ---------------------------------------------------------------------------
// Token endpoint

// responder answers the n-th (1-based) token request.
type responder func(w http.ResponseWriter, r *http.Request, n int64)

// okToken issues opaque tokens "tok-<n>" that live expiresIn seconds (not
// JWTs, so that their lifetime is exactly expiresIn).
func okToken(expiresIn int) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":%d,"access_token":"tok-%d"}`, expiresIn, n)
	}
}

// answer always gives the same JSON answer.
func answer(status int, body string) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// tokenServer is an in-memory token endpoint: an http.RoundTripper that
// calls its responder directly (no socket, so it works in a bubble) and
// counts the token requests.
type tokenServer struct {
	requests atomic.Int64
	mu       sync.Mutex
	respond  responder
}

func newTokenServer(r responder) *tokenServer { return &tokenServer{respond: r} }

// RoundTrip implements http.RoundTripper.
func (s *tokenServer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	rec := httptest.NewRecorder()
	if req.URL.String() != testTokenURL || req.Method != http.MethodPost {
		http.NotFound(rec, req)
		return rec.Result(), nil
	}
	n := s.requests.Add(1)
	s.mu.Lock()
	respond := s.respond
	s.mu.Unlock()
	respond(rec, req, n)
	return rec.Result(), nil
}

func (s *tokenServer) setRespond(r responder) {
	s.mu.Lock()
	s.respond = r
	s.mu.Unlock()
}

// count is how many token requests arrived.
func (s *tokenServer) count() int64 { return s.requests.Load() }

// ---------------------------------------------------------------------------
// Fleet members

// recorder is a token.Observer that records the store results.
type recorder struct {
	mu     sync.Mutex
	stored []token.StoreResult
}

func (o *recorder) Fetched(*token.Error, time.Duration) {}
func (o *recorder) TokenChanged(time.Time)              {}

func (o *recorder) StoreUsed(r token.StoreResult) {
	o.mu.Lock()
	o.stored = append(o.stored, r)
	o.mu.Unlock()
}

// results returns the store results so far, in order.
func (o *recorder) results() []token.StoreResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]token.StoreResult(nil), o.stored...)
}

// wantCounts checks the exact number of each store result; results not in
// want must not have been reported at all.
func (o *recorder) wantCounts(t testing.TB, who string, want map[token.StoreResult]int) {
	t.Helper()
	got := map[token.StoreResult]int{}
	for _, r := range o.results() {
		got[r]++
	}
	for _, r := range []token.StoreResult{token.StoreHit, token.StoreMiss, token.StoreAdopted,
		token.StoreLockTimeout, token.StoreTimeout, token.StoreError} {
		if got[r] != want[r] {
			t.Errorf("%s: store results %v; want %d %q, got %d", who, o.results(), want[r], r, got[r])
		}
	}
}

// member is one instance of a fleet: a token.Source with an Entry of its
// own over the fleet's storage, as a Caddy instance has.
type member struct {
	src   *token.Source
	obs   *recorder
	entry *Entry
	cfg   token.Config
	// creds is what src hands the store (token.Static's Current returns
	// the same pointer every time).
	creds *token.Credentials
}

// option changes a member's token.Config.
type option func(*token.Config)

func withRand(v float64) option          { return func(c *token.Config) { c.Rand = fixedRand(v) } }
func withTimeout(d time.Duration) option { return func(c *token.Config) { c.Timeout = d } }
func withLogger(l *zap.Logger) option    { return func(c *token.Config) { c.Logger = l } }
func withSecret(secret string) option {
	return func(c *token.Config) {
		c.Credentials = &token.Static{ClientID: testClientID, ClientSecret: secret}
	}
}

// newLogs returns a logger that records every entry, and the record.
func newLogs() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

func fixedRand(v float64) func() float64 { return func() float64 { return v } }

// newMember starts a source for the test credentials whose token requests
// go to srv, with jitter pinned to the middle (Rand 0.5: refreshes at 77.5%
// of a token's life, backoffs exactly 1 s, 2 s…), then opts, and shares
// its tokens through a new Entry over storage. Unlock failures fail the
// test.
func newMember(t testing.TB, srv *tokenServer, storage certmagic.Storage, opts ...option) *member {
	t.Helper()
	obs := &recorder{}
	cfg := token.Config{
		TokenURL:    testTokenURL,
		Credentials: &token.Static{ClientID: testClientID, ClientSecret: testSecret},
		Scopes:      testScopes,
		HTTPClient:  &http.Client{Transport: srv},
		Observer:    obs,
		Rand:        fixedRand(0.5),
	}
	for _, o := range opts {
		o(&cfg)
	}
	src, err := token.New(cfg)
	if err != nil {
		t.Fatalf("token.New: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	var unlockErrs atomic.Int64
	entry, err := New(storage, cfg.TokenURL, cfg.Scopes, func(err error) { unlockErrs.Add(1) })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if n := unlockErrs.Load(); n != 0 {
			t.Errorf("%d failures to release the fleet's lock", n)
		}
	})
	src.SetStore(entry)
	return &member{src: src, obs: obs, entry: entry, cfg: cfg, creds: cfg.Credentials.Current()}
}

// load reads m's entry as m's source would.
func (m *member) load(t testing.TB) *token.Stored {
	t.Helper()
	st, err := m.entry.Load(context.Background(), m.creds)
	if err != nil {
		t.Fatalf("loading the entry: %v", err)
	}
	return st
}

// mustGet returns src's token; in a bubble a Get that never returns is a
// deadlock, which synctest reports.
func mustGet(t testing.TB, src *token.Source) *token.Token {
	t.Helper()
	tok, err := src.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if tok == nil || tok.Value == "" {
		t.Fatal("Get returned an empty token")
	}
	return tok
}

// mustRefresh forces a new fetch of src and returns its token.
func mustRefresh(t testing.TB, src *token.Source) *token.Token {
	t.Helper()
	tok, err := src.Refresh(context.Background())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	return tok
}

// mustReplace tells src that tok was rejected and returns its replacement.
func mustReplace(t testing.TB, src *token.Source, tok *token.Token) *token.Token {
	t.Helper()
	fresh := src.Replace(context.Background(), token.Refusal{Token: tok})
	if fresh == nil || fresh.Value == tok.Value {
		t.Fatalf("Replace(%q) found no newer token (status %+v)", tok.Value, src.Status())
	}
	return fresh
}

// leaksSecret reports whether s holds the client secret in any form the
// leak check finds, or any 6-character piece of it (a secret cut in half
// by a truncation is still a leak).
func leaksSecret(s string) bool {
	if scrubtest.NewCheck(testClientID, testSecret).Leaks(s) {
		return true
	}
	const piece = 6
	for i := 0; i+piece <= len(testSecret); i++ {
		if strings.Contains(s, testSecret[i:i+piece]) {
			return true
		}
	}
	return false
}

// assertLogsClean fails if nothing was logged, or if a log entry (message
// or field) holds the client secret or one of the tokens.
func assertLogsClean(t testing.TB, logs *observer.ObservedLogs, tokens ...string) {
	t.Helper()
	if logs.Len() == 0 {
		t.Error("nothing was logged: the leak check would prove nothing")
	}
	check := scrubtest.NewCheck(testClientID, testSecret, tokens...)
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if leaksSecret(line) {
			t.Errorf("log %q holds the client secret", line)
		}
		check.AssertNone(t, "log", line)
	}
}
