package deskoauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// These tests run the engine in cluster mode: two engines over one
// certmagic.FileStorage directory are two Caddy instances of a fleet. Each
// has its own FileStorage value and its own sharedCache over that directory,
// as two processes would. Token lifetimes and refreshes run on the fake
// clock; only the storage lock's bounded wait (TestSharedFleetLockTimeout)
// uses real time, and no test asserts on wall time.

// cmObserver is an Observer that records the shared cache results.
type cmObserver struct {
	mu     sync.Mutex
	shared []string
}

func (o *cmObserver) FetchDone(string, time.Duration) {}
func (o *cmObserver) TokenChanged(time.Time)          {}

func (o *cmObserver) SharedCache(result string) {
	o.mu.Lock()
	o.shared = append(o.shared, result)
	o.mu.Unlock()
}

// results returns the shared cache results so far, in order.
func (o *cmObserver) results() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.shared...)
}

// count returns how many times result was reported.
func (o *cmObserver) count(result string) int {
	n := 0
	for _, r := range o.results() {
		if r == result {
			n++
		}
	}
	return n
}

// wantCounts checks the exact number of each shared cache result; results
// not in want must not have been reported at all.
func (o *cmObserver) wantCounts(t *testing.T, who string, want map[string]int) {
	t.Helper()
	got := map[string]int{}
	for _, r := range o.results() {
		got[r]++
	}
	for _, r := range []string{"hit", "miss", "adopted", "lock_timeout", "timeout", "error"} {
		if got[r] != want[r] {
			t.Errorf("%s: shared cache results %v; want %d %q, got %d", who, o.results(), want[r], r, got[r])
		}
	}
}

// cmMember is one instance of a fleet: an engine in cluster mode and the
// observer that records what it did with the shared cache.
type cmMember struct {
	*tokenEngine
	obs *cmObserver
	sc  *sharedCache
}

// newCMMember starts an engine for tokenURL on clk (newTestEngine's
// defaults, then opts) and turns cluster mode on over storage with a
// sharedCache of the engine's own credentials.
func newCMMember(t *testing.T, tokenURL string, clk engineClock, storage certmagic.Storage, opts ...func(*engineConfig)) *cmMember {
	t.Helper()
	obs := &cmObserver{}
	opts = append([]func(*engineConfig){func(c *engineConfig) { c.Observer = obs }}, opts...)
	e := newTestEngine(t, tokenURL, clk, opts...)
	sc, err := newSharedCache(storage, e.cfg.TokenURL, e.cfg.ClientID, e.cfg.Scopes, nil, e.cfg.ClientSecret)
	if err != nil {
		t.Fatalf("newSharedCache: %v", err)
	}
	e.setShared(sc)
	return &cmMember{tokenEngine: e, obs: obs, sc: sc}
}

// cmStorage is one instance's view of the fleet's storage directory.
func cmStorage(dir string) *certmagic.FileStorage { return &certmagic.FileStorage{Path: dir} }

// cmFleet is the usual two-member fleet: A and B share one storage folder
// and one token server that issues tokens of expiresIn seconds, on one
// fake clock.
type cmFleet struct {
	srv  *tokenServer
	clk  *fakeClock
	a, b *cmMember
}

// newCMFleet starts it; aOpts and bOpts configure each member after
// newCMMember's defaults.
func newCMFleet(t *testing.T, expiresIn int, aOpts, bOpts []func(*engineConfig)) cmFleet {
	t.Helper()
	srv := newTokenServer(t, okToken(expiresIn))
	clk := newFakeClock(t)
	dir := t.TempDir()
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir), aOpts...)
	b := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir), bOpts...)
	return cmFleet{srv: srv, clk: clk, a: a, b: b}
}

func cmRand(v float64) func(*engineConfig)          { return func(c *engineConfig) { c.Rand = fixedRand(v) } }
func cmLogger(l *zap.Logger) func(*engineConfig)    { return func(c *engineConfig) { c.Logger = l } }
func cmTimeout(d time.Duration) func(*engineConfig) { return func(c *engineConfig) { c.Timeout = d } }
func cmSecret(secret string) func(*engineConfig) {
	return func(c *engineConfig) { c.ClientSecret = secret }
}

var errCMStorageDown = errors.New("storage backend unreachable")

// cmDownStorage is a storage that is unreachable: every call the shared
// cache makes fails.
func cmDownStorage() *fakeStorage {
	e := errCMStorageDown
	return &fakeStorage{loadErr: e, storeErr: e, lockErr: e, unlockErr: e}
}

// cmTrapStorage counts its calls (which all fail) and, once armed,
// fails the test on any call.
type cmTrapStorage struct {
	t     *testing.T
	calls atomic.Int64
	armed atomic.Bool
}

func (s *cmTrapStorage) called(method string) error {
	s.calls.Add(1)
	if s.armed.Load() {
		s.t.Errorf("storage.%s called while cluster mode is off", method)
	}
	return errCMStorageDown
}

func (s *cmTrapStorage) Lock(context.Context, string) error   { return s.called("Lock") }
func (s *cmTrapStorage) Unlock(context.Context, string) error { return s.called("Unlock") }
func (s *cmTrapStorage) Store(context.Context, string, []byte) error {
	return s.called("Store")
}
func (s *cmTrapStorage) Load(context.Context, string) ([]byte, error) {
	return nil, s.called("Load")
}
func (s *cmTrapStorage) Delete(context.Context, string) error { return s.called("Delete") }
func (s *cmTrapStorage) Exists(context.Context, string) bool {
	s.called("Exists")
	return false
}
func (s *cmTrapStorage) List(context.Context, string, bool) ([]string, error) {
	return nil, s.called("List")
}
func (s *cmTrapStorage) Stat(context.Context, string) (certmagic.KeyInfo, error) {
	return certmagic.KeyInfo{}, s.called("Stat")
}

var (
	_ certmagic.Storage = (*cmTrapStorage)(nil)
)

// assertCMLogsClean fails if any log entry (message or field) holds the
// client secret or one of the tokens.
func assertCMLogsClean(t *testing.T, logs *observer.ObservedLogs, tokens ...string) {
	t.Helper()
	if len(logs.All()) == 0 {
		t.Error("nothing was logged: the leak check would prove nothing")
	}
	lc := newLeakCheck(tsClientID, tsSecret, tokens...)
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if leaksSecret(line) {
			t.Errorf("log %q holds the client secret", line)
		}
		lc.assertNone(t, "log", line)
	}
}

// ---------------------------------------------------------------------------

// TestSharedFleetAdopts: the second instance of a fleet adopts the token the
// first one fetched and stored, without a token request of its own.
func TestSharedFleetAdopts(t *testing.T) {
	f := newCMFleet(t, 3600, nil, nil)
	srv, clk, a, b := f.srv, f.clk, f.a, f.b

	ta := mustGet(t, a.tokenEngine)
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests after A's Get, want 1", n)
	}
	a.obs.wantCounts(t, "A", map[string]int{"miss": 1})
	st, err := b.sc.load(testCtx(t))
	if err != nil || st == nil || st.AccessToken != ta.Value {
		t.Fatalf("after A's Get the stored entry is %+v, %v; want A's token", st, err)
	}

	tb := mustGet(t, b.tokenEngine)
	if n := srv.count(); n != 1 {
		t.Fatalf("%d token requests after B's Get, want still 1 (B adopts)", n)
	}
	if tb.Value != ta.Value {
		t.Fatalf("B got %q, want A's token %q", tb.Value, ta.Value)
	}
	b.obs.wantCounts(t, "B", map[string]int{"hit": 1})
	if !tb.wallExpiry.Equal(ta.wallExpiry) {
		t.Errorf("B's token expires at %v, want A's %v", tb.wallExpiry, ta.wallExpiry)
	}
	if got, want := tb.expiry.Sub(clk.Now()), ta.expiry.Sub(clk.Now()); got != want {
		t.Errorf("B's token has %v left, want A's %v", got, want)
	}
	if got := b.Status(); got.Fetches != 0 || got.State != stateFresh {
		t.Errorf("B's status %+v, want fresh with 0 fetches", got)
	}
	// The adopted token keeps its age: B refreshes it at 77.5% of its life
	// counted from when A obtained it.
	if !tb.obtained.Equal(ta.obtained) {
		t.Errorf("B's token was obtained at %v, want A's %v", tb.obtained, ta.obtained)
	}
	if d := tb.refreshAt.Sub(tb.obtained) - 2790*time.Second; d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("B refreshes %v into the token's life, want 2790s (77.5%%)", tb.refreshAt.Sub(tb.obtained))
	}
	clk.BlockUntilTimerAt(tb.refreshAt)
}

// TestSharedFleetRefresh: over ten token lifetimes, two instances that
// refresh at different points of a token's life make the requests of one:
// the earlier one refreshes and stores, the later one adopts.
func TestSharedFleetRefresh(t *testing.T) {
	// A refreshes at 77.5% of a token's life, B at 79.5%: 60 ms later.
	f := newCMFleet(t, 3, []func(*engineConfig){cmRand(0.5)}, []func(*engineConfig){cmRand(0.9)})
	srv, clk, a, b := f.srv, f.clk, f.a, f.b

	t1 := mustGet(t, a.tokenEngine)
	if got := mustGet(t, b.tokenEngine); got.Value != t1.Value {
		t.Fatalf("B got %q, want A's %q", got.Value, t1.Value)
	}
	clk.BlockUntilTimers(2) // both refreshers asleep

	// Move from one refresh to the next until 30 s (ten lifetimes).
	refreshes := map[*tokenEngine]int{}
	for step := 0; ; step++ {
		p := clk.Pending()
		if len(p) != 2 {
			t.Fatalf("step %d: armed timers fire in %v, want one per engine", step, p)
		}
		d := min(p[0], p[1])
		if clk.Since()+d > 30*time.Second {
			break
		}
		prevA, prevB := peek(a.tokenEngine), peek(b.tokenEngine)
		if fired := clk.Advance(d); fired != 1 {
			t.Fatalf("step %d: %d timers fired at +%v, want exactly one", step, fired, clk.Since())
		}
		clk.BlockUntilTimers(2) // the refresh is done and its engine asleep again
		ta, tb := mustGet(t, a.tokenEngine), mustGet(t, b.tokenEngine)
		for _, tok := range []*accessToken{ta, tb} {
			if !tok.Valid(clk.Now()) {
				t.Fatalf("step %d: at +%v Get returned a token that is not valid", step, clk.Since())
			}
		}
		switch {
		case ta != prevA && tb == prevB:
			refreshes[a.tokenEngine]++
			if ta.Value == prevA.Value {
				t.Fatalf("step %d: A's refresh kept %q", step, ta.Value)
			}
		case tb != prevB && ta == prevA:
			refreshes[b.tokenEngine]++
			if tb.Value != ta.Value {
				t.Fatalf("step %d: B refreshed to %q, want A's new %q", step, tb.Value, ta.Value)
			}
		default:
			t.Fatalf("step %d: want exactly one engine to have refreshed", step)
		}
	}
	// A fetches at 0 s and every 2.325 s after (12 refreshes until 27.9 s);
	// B adopts each of those tokens 60 ms after A stored it.
	if refreshes[a.tokenEngine] != 12 || refreshes[b.tokenEngine] != 12 {
		t.Errorf("refreshes: A %d, B %d; want 12 each", refreshes[a.tokenEngine], refreshes[b.tokenEngine])
	}
	if n := srv.count(); n != 13 {
		t.Errorf("%d token requests over ten 3 s lifetimes for two instances, want 13 (one instance's worth)", n)
	}
	if got := b.Status().Fetches; got != 0 {
		t.Errorf("B made %d token requests, want 0", got)
	}
	a.obs.wantCounts(t, "A", map[string]int{"miss": 13})
	b.obs.wantCounts(t, "B", map[string]int{"hit": 13})
}

// TestSharedFleetOldEntryNotAdopted: a stored token past 75% of its life
// (the earliest point at which any instance refreshes) is not adopted: an
// instance that starts then fetches and stores a new one, which the
// instance that held the old token adopts at its own refresh.
func TestSharedFleetOldEntryNotAdopted(t *testing.T) {
	f := newCMFleet(t, 100, nil, nil)
	srv, clk, a, b := f.srv, f.clk, f.a, f.b

	ta1 := mustGet(t, a.tokenEngine)
	clk.BlockUntilTimers(1)
	clk.Advance(76 * time.Second) // past 75%, before A's refresh at 77.5%

	tb := mustGet(t, b.tokenEngine)
	if tb.Value == ta1.Value {
		t.Fatalf("B adopted %q at 76%% of its life", ta1.Value)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d token requests, want 2", n)
	}
	b.obs.wantCounts(t, "B", map[string]int{"miss": 1})
	clk.BlockUntilTimers(2)

	// A's refresh adopts B's token.
	if fired := clk.Advance(1500 * time.Millisecond); fired != 1 {
		t.Fatalf("%d timers fired at A's refresh point, want 1", fired)
	}
	clk.BlockUntilTimers(2)
	if ta2 := mustGet(t, a.tokenEngine); ta2.Value != tb.Value {
		t.Errorf("A's refresh got %q, want B's %q", ta2.Value, tb.Value)
	}
	if n := srv.count(); n != 2 {
		t.Errorf("%d token requests after A's refresh, want still 2", n)
	}
	a.obs.wantCounts(t, "A", map[string]int{"miss": 1, "hit": 1})
}

// TestSharedFleetForcedRefresh: an operator's Refresh fetches a new token
// even though the stored one is the instance's own, fresh token; another
// instance's Refresh then adopts that new token.
func TestSharedFleetForcedRefresh(t *testing.T) {
	f := newCMFleet(t, 3600, nil, nil)
	srv, a, b := f.srv, f.a, f.b
	t1 := mustGet(t, a.tokenEngine)
	mustGet(t, b.tokenEngine)

	t2, err := a.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("A.Refresh: %v", err)
	}
	if t2.Value == t1.Value || srv.count() != 2 {
		t.Fatalf("A.Refresh got %q after %d token requests; want a new token from a second request", t2.Value, srv.count())
	}
	tb, err := b.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("B.Refresh: %v", err)
	}
	if tb.Value != t2.Value || srv.count() != 2 {
		t.Errorf("B.Refresh got %q after %d token requests; want A's new %q and no request", tb.Value, srv.count(), t2.Value)
	}
	a.obs.wantCounts(t, "A", map[string]int{"miss": 2})
	b.obs.wantCounts(t, "B", map[string]int{"hit": 2})
}

// TestSharedFleetInvalidate: when the upstream rejects the fleet's token,
// the first instance to hear of it fetches and stores a new one; the next
// instance told of the same rejection adopts that one.
func TestSharedFleetInvalidate(t *testing.T) {
	f := newCMFleet(t, 3600, nil, nil)
	srv, clk, a, b := f.srv, f.clk, f.a, f.b

	ta1, tb1 := mustGet(t, a.tokenEngine), mustGet(t, b.tokenEngine)
	if ta1.Value != tb1.Value || srv.count() != 1 {
		t.Fatalf("A has %q, B has %q after %d requests; want one shared token", ta1.Value, tb1.Value, srv.count())
	}
	clk.Advance(time.Minute) // the token is not brand new any more

	ta2 := mustReplace(t, a.tokenEngine, ta1) // A's upstream answered 401
	if ta2.Value == ta1.Value {
		t.Fatalf("A still serves the rejected %q", ta1.Value)
	}
	if n := srv.count(); n != 2 {
		t.Fatalf("%d token requests after A's Invalidate, want 2", n)
	}
	st, err := a.sc.load(testCtx(t))
	if err != nil || st == nil || st.AccessToken != ta2.Value {
		t.Fatalf("after A's Invalidate the stored entry is %+v, %v; want %q", st, err, ta2.Value)
	}

	tb2 := mustReplace(t, b.tokenEngine, tb1) // B's upstream rejects the same token
	if tb2.Value != ta2.Value {
		t.Fatalf("after its Invalidate B got %q, want A's new %q", tb2.Value, ta2.Value)
	}
	if n := srv.count(); n != 2 {
		t.Errorf("%d token requests after B's Invalidate, want still 2 (B adopts)", n)
	}
	if got := b.Status().Fetches; got != 0 {
		t.Errorf("B made %d token requests, want 0", got)
	}
	a.obs.wantCounts(t, "A", map[string]int{"miss": 2})
	b.obs.wantCounts(t, "B", map[string]int{"hit": 2})

	// Another 401 with the old token (a request that was in flight) changes
	// nothing.
	b.Invalidate(tb1)
	if got := mustGet(t, b.tokenEngine); got != tb2 {
		t.Errorf("a stale Invalidate replaced B's token")
	}
}

// TestSharedFleetOtherSecretMisses: an entry encrypted under another client
// secret is unreadable: an instance with a different secret (same token
// URL, client ID and scopes, so the same entry) misses, fetches its own
// token and overwrites the entry.
func TestSharedFleetOtherSecretMisses(t *testing.T) {
	srv := newTokenServer(t, okToken(3600)) // accepts any credentials
	clk := newFakeClock(t)
	dir := t.TempDir()
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir))
	const otherSecret = "rotated-Secret-4b1c9e7f2a0d"
	c := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir), cmSecret(otherSecret))
	if c.sc.Key() != a.sc.Key() {
		t.Fatalf("the secret changed the entry's key: %s vs %s", c.sc.Key(), a.sc.Key())
	}

	ta := mustGet(t, a.tokenEngine)
	tc := mustGet(t, c.tokenEngine)
	if tc.Value == ta.Value {
		t.Fatalf("the instance with another secret adopted %q", ta.Value)
	}
	if n := srv.count(); n != 2 {
		t.Errorf("%d token requests, want 2 (one per secret)", n)
	}
	c.obs.wantCounts(t, "other secret", map[string]int{"miss": 1})

	// Its store replaced the entry, which the first secret cannot read.
	if st, err := a.sc.load(testCtx(t)); st != nil || err != nil {
		t.Errorf("load under the first secret = %+v, %v; want a miss", st, err)
	}
	if st, err := c.sc.load(testCtx(t)); err != nil || st == nil || st.AccessToken != tc.Value {
		t.Errorf("load under the other secret = %+v, %v; want %q", st, err, tc.Value)
	}
}

// TestSharedFleetCorruptEntry: garbage at the entry's key is a local fetch
// for the instance, not an error for its clients, with one WARN that holds
// neither the secret nor the token; the fetched token replaces the garbage.
func TestSharedFleetCorruptEntry(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	dir := t.TempDir()
	core, logs := observer.New(zapcore.DebugLevel)
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir), cmLogger(zap.New(core)))
	if err := cmStorage(dir).Store(testCtx(t), a.sc.Key(), []byte("garbage")); err != nil {
		t.Fatalf("Store: %v", err)
	}

	tok := mustGet(t, a.tokenEngine)
	if n := srv.count(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
	if a.obs.count("error") == 0 || a.obs.count("hit")+a.obs.count("adopted") != 0 {
		t.Errorf("shared cache results %v; want an error and no adoption", a.obs.results())
	}
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 {
		t.Fatalf("%d WARN logs, want exactly 1: %v", len(warns), warns)
	}
	if msg := fmt.Sprint(warns[0].ContextMap()["error"]); !strings.Contains(msg, "corrupt") {
		t.Errorf("the WARN's error %q does not say the entry is corrupt", msg)
	}
	assertCMLogsClean(t, logs, tok.Value)

	// The engine stored its token over the garbage.
	if st, err := a.sc.load(testCtx(t)); err != nil || st == nil || st.AccessToken != tok.Value {
		t.Errorf("after the fetch the entry is %+v, %v; want %q", st, err, tok.Value)
	}
}

// TestSharedFleetStorageDown: with the storage unreachable, Get still
// returns a token, fetched locally; the failure is counted and logged once.
func TestSharedFleetStorageDown(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	core, logs := observer.New(zapcore.DebugLevel)
	a := newCMMember(t, srv.tokenURL(), clk, cmDownStorage(), cmLogger(zap.New(core)))

	tok1 := mustGet(t, a.tokenEngine)
	if n := srv.count(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
	if a.obs.count("error") == 0 {
		t.Errorf("shared cache results %v; want an error", a.obs.results())
	}
	for _, r := range a.obs.results() {
		if r != "error" {
			t.Errorf("shared cache results %v; want only errors", a.obs.results())
			break
		}
	}

	// A second fetch works the same, and the outage is not logged again.
	tok2, err := a.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("Refresh with the storage down: %v", err)
	}
	if tok2.Value == tok1.Value || srv.count() != 2 {
		t.Errorf("Refresh got %q after %d requests; want a new token from a second request", tok2.Value, srv.count())
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Errorf("%d WARN logs for one outage, want 1: %v", n, logs.All())
	}
	if msg := fmt.Sprint(logs.FilterLevelExact(zapcore.WarnLevel).All()[0].ContextMap()["error"]); !strings.Contains(msg, errCMStorageDown.Error()) {
		t.Errorf("the WARN's error %q does not give the storage's error", msg)
	}
	assertCMLogsClean(t, logs, tok1.Value, tok2.Value)
}

// TestSharedFleetLockTimeout: while another instance holds the entry's lock
// too long, an instance that needs a token waits at most half its timeout,
// then fetches on its own.
func TestSharedFleetLockTimeout(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	dir := t.TempDir()
	// The lock wait is real time: Timeout/2 = 400 ms, leaving 400 ms for the
	// (local) token request.
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir), cmTimeout(800*time.Millisecond))

	holder, err := newSharedCache(cmStorage(dir), a.cfg.TokenURL, a.cfg.ClientID, a.cfg.Scopes, nil, tsSecret)
	if err != nil {
		t.Fatalf("newSharedCache: %v", err)
	}
	unlock, err := holder.lock(testCtx(t))
	if err != nil {
		t.Fatalf("taking the lock: %v", err)
	}
	t.Cleanup(unlock)

	tok := mustGet(t, a.tokenEngine)
	if n := srv.count(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
	a.obs.wantCounts(t, "A", map[string]int{"lock_timeout": 1})
	if !tok.Valid(clk.Now()) {
		t.Errorf("Get returned a token that is not valid")
	}
}

// TestSharedFleetEntryHoldsNoPlaintext: nothing in the storage directory
// (entry, lock files, file names) holds the token, the secret, the client
// ID or the token's expiry in clear.
func TestSharedFleetEntryHoldsNoPlaintext(t *testing.T) {
	const tokenPrefix = "fleet-token-Zq8vR2mKx7Lp-"
	srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":3600,"access_token":"%s%d"}`, tokenPrefix, n)
	})
	clk := newFakeClock(t)
	dir := t.TempDir()
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir))
	tok := mustGet(t, a.tokenEngine)
	if !strings.HasPrefix(tok.Value, tokenPrefix) {
		t.Fatalf("token %q", tok.Value)
	}

	raw, err := cmStorage(dir).Load(testCtx(t), a.sc.Key())
	if err != nil {
		t.Fatalf("loading the entry: %v", err)
	}
	expiry := []string{
		tok.wallExpiry.Format("2006-01-02T15:04:05"),
		tok.wallExpiry.UTC().Format("2006-01-02T15:04:05"),
		fmt.Sprint(tok.wallExpiry.Unix()),
	}
	check := func(what string, b []byte) {
		t.Helper()
		s := string(b)
		if strings.Contains(s, tokenPrefix) || strings.Contains(s, tok.Value) {
			t.Errorf("%s holds the token: %q", what, s)
		}
		if leaksSecret(s) {
			t.Errorf("%s holds the client secret: %q", what, s)
		}
		if strings.Contains(s, tsClientID) {
			t.Errorf("%s holds the client ID: %q", what, s)
		}
	}
	check("the entry", raw)
	for _, e := range expiry {
		if bytes.Contains(raw, []byte(e)) {
			t.Errorf("the entry holds the expiry %q: %q", e, raw)
		}
	}

	files := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		check("path "+path, []byte(path))
		if d.IsDir() {
			return nil
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		check("file "+path, b)
		return nil
	})
	if err != nil {
		t.Fatalf("walking the storage: %v", err)
	}
	if files == 0 {
		t.Fatal("no file in the storage")
	}
}

// TestSharedFleetOff: setShared(nil) turns cluster mode off: the engine
// never touches the storage again and reports no shared cache result.
func TestSharedFleetOff(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	trap := &cmTrapStorage{t: t}
	a := newCMMember(t, srv.tokenURL(), clk, trap)

	// On: the storage is used (and fails, so the engine fetches locally).
	mustGet(t, a.tokenEngine)
	if trap.calls.Load() == 0 {
		t.Fatal("cluster mode on, but the storage was never called")
	}
	before := len(a.obs.results())

	a.setShared(nil)
	trap.armed.Store(true)
	tok, err := a.Refresh(testCtx(t))
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	mustReplace(t, a.tokenEngine, tok)
	if n := srv.count(); n != 3 {
		t.Errorf("%d token requests, want 3", n)
	}
	if got := a.obs.results(); len(got) != before {
		t.Errorf("shared cache results after setShared(nil): %v", got[before:])
	}

	// An engine that never had cluster mode does not touch it either.
	other := newTestEngine(t, srv.tokenURL(), clk)
	other.setShared(nil)
	mustGet(t, other)
}

// TestSharedFleetRetryAfterFailedReplacement: when the fetch that replaces a
// rejected token fails, the backoff retry runs as a plain refresh with no
// current token; in cluster mode it must not adopt the rejected token back
// from the shared cache (it is not past 75% of its life there).
func TestSharedFleetRetryAfterFailedReplacement(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(t.TempDir()))
	t1 := mustGet(t, a.tokenEngine)
	clk.BlockUntilTimers(1)

	srv.setRespond(answer(http.StatusServiceUnavailable, "application/json", `{"error":"unavailable"}`))
	// The upstream answered 401; the replacement fetch fails, and the
	// token A had stays in use (a 401 never leaves it worse off).
	if fresh := a.Replace(testCtx(t), t1); fresh != nil {
		t.Fatalf("Replace returned %q while the token endpoint is down", fresh.Value)
	}
	if got := mustGet(t, a.tokenEngine); got != t1 {
		t.Fatalf("after a failed replacement A serves %q, want the token it had", got.Value)
	}
	clk.BlockUntilTimerAt(clk.Now().Add(time.Second)) // the retry is armed (1 s backoff)

	srv.setRespond(okToken(3600)) // the token endpoint is back
	clk.Advance(time.Second)
	clk.BlockUntilTimers(1) // the retry is done
	if got := mustGet(t, a.tokenEngine); got.Value == t1.Value {
		t.Errorf("the retry after a failed replacement serves the rejected token %q again (results %v, %d token requests)",
			t1.Value, a.obs.results(), srv.count())
	}
}

// TestSharedFleetRepeatedPeerRevocations: a server that revokes a client's
// previous token whenever a peer refreshes makes B's token rejected again
// and again, each time shortly after B adopted it. Adopting a peer's newer
// token costs no token request, so Invalidate's guard against 401 storms
// must not hold B back: every rejection is answered by adoption at once.
func TestSharedFleetRepeatedPeerRevocations(t *testing.T) {
	f := newCMFleet(t, 3600, nil, nil)
	clk, a, b := f.clk, f.a, f.b
	mustGet(t, a.tokenEngine)
	tb := mustGet(t, b.tokenEngine)
	for i := range 5 {
		clk.Advance(100 * time.Millisecond) // far younger than any guard step
		fresh, err := a.Refresh(testCtx(t)) // a peer refreshes; the server revokes tb
		if err != nil {
			t.Fatal(err)
		}
		next := b.Replace(testCtx(t), tb)
		if next == nil {
			t.Fatalf("rejection %d: B found no replacement (held back by the guard or the budget?)", i+1)
		}
		if next.Value != fresh.Value {
			t.Fatalf("rejection %d: B serves %q, want the peer's newer %q (held back by the guard?)", i+1, next.Value, fresh.Value)
		}
		tb = next
	}
	if got := b.Status().Fetches; got != 0 {
		t.Errorf("B made %d token requests, want 0", got)
	}
}
