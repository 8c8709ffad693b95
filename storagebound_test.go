package deskoauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Issue 11 point 1: every storage call of the shared cache runs under a
// deadline and a size bound, and a storage that does not answer never holds
// up a fetch. The deadlines here are the behaviour under test: each wait is
// a context deadline of the code, and every call the test makes is itself
// bounded by returnsWithin, so a regression fails instead of hanging.

// returnsWithin runs f and fails the test if it has not returned within d
// (the goroutine is then left behind: the test binary ends soon anyway).
func returnsWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s has not returned after %v", what, d)
	}
}

// waitUnstuck waits (bounded) until the gate's stuck call has returned.
func waitUnstuck(t *testing.T, g *storageGate) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); g.isStuck(); {
		if time.Now().After(deadline) {
			t.Fatal("the stuck storage call did not return after its storage answered")
		}
		time.Sleep(time.Millisecond)
	}
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

func (s *hangingStorage) count(method string) int64 {
	v, _ := s.calls.LoadOrStore(method, new(atomic.Int64))
	return v.(*atomic.Int64).Load()
}

func (s *hangingStorage) called(method string) int64 {
	v, _ := s.calls.LoadOrStore(method, new(atomic.Int64))
	return v.(*atomic.Int64).Add(1)
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

// TestSharedCacheLoadBoundedWhenStorageHangs: a Load (or a Stat) that never
// returns, whatever its context says, costs its caller its deadline; after
// that, while it is stuck, no load, store or lock calls the storage again,
// and all fail at once. When the storage answers, the cache works again.
func TestSharedCacheLoadBoundedWhenStorageHangs(t *testing.T) {
	for _, method := range []string{"Load", "Stat"} {
		t.Run(method, func(t *testing.T) {
			s := &hangingStorage{hangLoad: method == "Load", hangStat: method == "Stat", release: make(chan struct{})}
			c := newSC(t, s, scSecret)
			s.put(c.Key(), []byte("{}")) // an entry exists: Load is reached

			returnsWithin(t, 5*time.Second, "load from a hanging storage", func() {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				got, err := c.load(ctx)
				if got != nil || !errors.Is(err, context.DeadlineExceeded) || !storageUnresponsive(err) {
					t.Errorf("load = %v, %v; want context.DeadlineExceeded", got, err)
				}
				if err != nil {
					assertClean(t, "error", err.Error())
					if !strings.Contains(err.Error(), c.Key()) || !strings.Contains(err.Error(), "no answer from the storage within") {
						t.Errorf("error %q does not name the key and the wait", err)
					}
				}
			})
			if !c.gate.isStuck() {
				t.Fatal("the abandoned call is not recorded as stuck")
			}

			// While it is stuck: every operation fails at once, without a call.
			before := map[string]int64{}
			for _, m := range []string{"Load", "Stat", "Store", "Lock", "Unlock"} {
				before[m] = s.count(m)
			}
			returnsWithin(t, 5*time.Second, "operations while stuck", func() {
				ctx := context.Background() // no deadline: only the gate stops them
				if _, err := c.load(ctx); !errors.Is(err, errStorageStuck) || sharedErrResult(err, "x") != "timeout" {
					t.Errorf("second load = %v; want errStorageStuck", err)
				}
				if err := c.store(ctx, scTok()); !errors.Is(err, errStorageStuck) {
					t.Errorf("store = %v; want errStorageStuck", err)
				}
				if _, err := c.lock(ctx); !errors.Is(err, errStorageStuck) {
					t.Errorf("lock = %v; want errStorageStuck", err)
				}
			})
			for m, n := range before {
				if got := s.count(m); got != n {
					t.Errorf("storage.%s called %d times while a call was stuck", m, got-n)
				}
			}

			// The storage answers again: so does the cache.
			close(s.release)
			waitUnstuck(t, c.gate)
			if err := c.store(context.Background(), scTok()); err != nil {
				t.Fatalf("store after recovery: %v", err)
			}
			if got, err := c.load(context.Background()); err != nil || !sameToken(got, scTok()) {
				t.Fatalf("load after recovery = %v, %v", got, err)
			}
		})
	}
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

// TestSharedCacheUnlockBounded: unlock returns when Unlock outlives its
// timeout, reporting it; the gate stays stuck (nothing piles up behind the
// call) until the storage answers.
func TestSharedCacheUnlockBounded(t *testing.T) {
	s := &stubbornUnlockStorage{release: make(chan struct{})}
	c := newSC(t, s, scSecret)
	var reported atomic.Int64
	c.unlockFailed = func(err error) {
		if errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), c.Key()) {
			reported.Add(1)
		}
	}
	c.unlockTimeout = 50 * time.Millisecond
	unlock, err := c.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	returnsWithin(t, 5*time.Second, "unlock with a hanging Unlock", unlock)
	if reported.Load() != 1 {
		t.Errorf("%d unlock failures reported, want 1 (a deadline naming the key)", reported.Load())
	}
	if !c.gate.isStuck() {
		t.Error("the abandoned Unlock is not recorded as stuck")
	}
	if _, err := c.load(context.Background()); !errors.Is(err, errStorageStuck) {
		t.Errorf("load while Unlock is stuck = %v; want errStorageStuck", err)
	}
	close(s.release)
	waitUnstuck(t, c.gate)
	if s.unlocks.Load() != 1 {
		t.Errorf("Unlock returned %d times, want 1", s.unlocks.Load())
	}
}

// hugeStatStorage is a fakeStorage that says the entry is huge and fails
// the test if the entry is read anyway.
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

// TestSharedCacheHugeEntryNotRead: an entry larger than the cap is a
// corrupt miss, rejected from its size without being read: with a storage
// that reports the size, and with an 800 MB sparse file in a FileStorage.
// One whose size the storage does not report is rejected after the read.
func TestSharedCacheHugeEntryNotRead(t *testing.T) {
	ctx := context.Background()
	const huge = 800 << 20

	t.Run("fake", func(t *testing.T) {
		s := &hugeStatStorage{size: huge}
		c := newSC(t, s, scSecret)
		got, err := c.load(ctx)
		if got != nil || !errors.Is(err, errCacheCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(huge)) {
			t.Fatalf("load = %v, %v; want errCacheCorrupt giving the size", got, err)
		}
		if n := s.loads.Load(); n != 0 {
			t.Errorf("the huge entry was read %d times", n)
		}
	})

	t.Run("sparse file", func(t *testing.T) {
		dir := t.TempDir()
		s := &countingFileStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
		c := newSC(t, s, scSecret)
		path := filepath.Join(dir, filepath.FromSlash(c.Key()))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(huge); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, err := c.load(ctx)
		if got != nil || !errors.Is(err, errCacheCorrupt) {
			t.Fatalf("load = %v, %v; want errCacheCorrupt", got, err)
		}
		if n := s.loads.Load(); n != 0 {
			t.Errorf("the %d-byte entry was read %d times", huge, n)
		}
	})

	t.Run("size unknown", func(t *testing.T) {
		s := &hangingStorage{release: make(chan struct{})} // Stat says size 0
		c := newSC(t, s, scSecret)
		s.put(c.Key(), bytes.Repeat([]byte(" "), maxSharedEntryBytes+1))
		if got, err := c.load(ctx); got != nil || !errors.Is(err, errCacheCorrupt) {
			t.Fatalf("load = %v, %v; want errCacheCorrupt", got, err)
		}
	})
}

// makeFIFO replaces the entry of c in the FileStorage at dir with a FIFO,
// which os.ReadFile (FileStorage.Load) waits on for good, and unblocks any
// reader at the end of the test.
func makeFIFO(t *testing.T, dir, key string) string {
	t.Helper()
	path := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	t.Cleanup(func() { unblockFIFO(path) })
	return path
}

// unblockFIFO lets a reader blocked on the FIFO at path go: opening it for
// reading and writing never blocks, and closing it gives the reader EOF.
func unblockFIFO(path string) {
	if f, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		f.Close()
	}
}

// TestSharedFleetFIFOEntry: with a FIFO at the entry's path of a real
// FileStorage (whose Load ignores its context), Get still returns a token
// within the token request timeout, fetched locally; the shared cache
// metric says timeout, one WARN is logged; later fetches do not touch the
// storage while the read is stuck, and the cache is used again once the
// storage answers.
func TestSharedFleetFIFOEntry(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	dir := t.TempDir()
	core, logs := observer.New(zapcore.DebugLevel)
	const timeout = 2 * time.Second // storageWait: 500 ms
	a := newCMMember(t, srv.tokenURL(), clk, cmStorage(dir), cmTimeout(timeout), cmLogger(zap.New(core)))
	fifo := makeFIFO(t, dir, a.sc.Key())

	// within fetches with f, which must answer within the timeout.
	within := func(what string, f func(context.Context) (*accessToken, error)) *accessToken {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		tok, err := f(ctx)
		if err != nil {
			t.Fatalf("%s with a FIFO as the entry: %v", what, err)
		}
		return tok
	}
	tok1 := within("Get", a.Get)
	if n := srv.count(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
	a.obs.wantCounts(t, "A", map[string]int{"timeout": 1})
	if !a.sc.gate.isStuck() {
		t.Error("the read of the FIFO is not recorded as stuck")
	}

	// Again, while the read is stuck: no wait at all this time.
	tok2 := within("Refresh", a.Refresh)
	if tok2.Value == tok1.Value || srv.count() != 2 {
		t.Errorf("Refresh: %d token requests; want a new token from a second request", srv.count())
	}
	a.obs.wantCounts(t, "A", map[string]int{"timeout": 2})
	warns := logs.FilterLevelExact(zapcore.WarnLevel)
	if warns.Len() != 1 {
		t.Errorf("%d WARN logs, want 1: %v", warns.Len(), logs.All())
	} else if msg := fmt.Sprint(warns.All()[0].ContextMap()["error"]); !strings.Contains(msg, "no answer from the storage") {
		t.Errorf("the WARN's error %q does not say the storage did not answer", msg)
	}
	assertCMLogsClean(t, logs, tok1.Value, tok2.Value)

	// The storage answers (the FIFO gives EOF) and the FIFO is removed:
	// the cache works again.
	unblockFIFO(fifo)
	waitUnstuck(t, a.sc.gate)
	if err := os.Remove(fifo); err != nil {
		t.Fatal(err)
	}
	within("Refresh after recovery", a.Refresh)
	if st, err := a.sc.load(testCtx(t)); err != nil || st == nil {
		t.Errorf("after recovery the entry is %v, %v; want the stored token", st, err)
	}
	if logs.FilterMessage("shared token cache available again").Len() != 1 {
		t.Errorf("no INFO saying the shared cache is back: %v", logs.All())
	}
}

// TestSharedFleetGateSurvivesReload: a new sharedCache for the same engine
// (a config reload) takes over the gate, so a stuck call is not joined by
// a second one.
func TestSharedFleetGateSurvivesReload(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	s := &hangingStorage{hangLoad: true, release: make(chan struct{})}
	t.Cleanup(func() { close(s.release) })
	a := newCMMember(t, srv.tokenURL(), clk, s, cmTimeout(400*time.Millisecond))
	s.put(a.sc.Key(), []byte("{}"))
	returnsWithin(t, 5*time.Second, "Get", func() { mustGet(t, a.tokenEngine) })
	if n := s.count("Load"); n != 1 {
		t.Fatalf("%d Loads, want 1", n)
	}
	sc2, err := newSharedCache(s, a.cfg.TokenURL, a.cfg.ClientID, a.cfg.Scopes, nil, a.cfg.ClientSecret)
	if err != nil {
		t.Fatal(err)
	}
	a.setShared(sc2)
	if sc2.gate != a.sc.gate {
		t.Fatal("the new sharedCache did not take over the engine's gate")
	}
	returnsWithin(t, 5*time.Second, "Refresh", func() {
		if _, err := a.Refresh(testCtx(t)); err != nil {
			t.Errorf("Refresh: %v", err)
		}
	})
	if n := s.count("Load"); n != 1 {
		t.Errorf("%d Loads after the reload, want still 1", n)
	}
}

// TestE2ESharedCacheFIFOEntry: through Caddy, with a FIFO at the entry's
// path in the shared_cache folder, a client request gets its answer (with a
// token fetched locally) within the token request timeout, so does POST
// /desko_auth/refresh, the metric counts timeouts, and the log has one WARN.
func TestE2ESharedCacheFIFOEntry(t *testing.T) {
	e := newE2E(t, time.Hour)
	dir := t.TempDir()
	makeFIFO(t, dir, sharedCacheKey(e.tokenURL(), testClientID, []string{"booking.show", "organization.show"}, nil))
	const timeout = 2 * time.Second
	e.load(fmt.Sprintf("warm_up off\n\t\ttimeout %s\n\t\tshared_cache {\n\t\t\tstorage file_system %s\n\t\t}", timeout, dir))

	start := time.Now()
	if s, _, body := e.do("GET", "/fifo", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("the request took %v; want its answer within the token request timeout (%v)", took, timeout)
	}
	returnsWithin(t, timeout+3*time.Second, "POST /desko_auth/refresh", func() {
		if s, body := adminDo(t, "POST", "/desko_auth/refresh"); s != 200 || strings.Contains(body, "refresh_error") {
			t.Errorf("refresh: status %d: %s", s, body)
		}
	})
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("%d token requests, want 2 (the request's, the refresh's)", n)
	}
	_, text := adminDo(t, "GET", "/metrics")
	src := e.label("booking.show", "organization.show")
	if got := metricValue(t, text, "desko_auth_shared_cache_total", map[string]string{"source": src, "result": "timeout"}); got != 2 {
		t.Errorf("shared cache timeouts = %v, want 2", got)
	}
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(logs), "shared token cache unavailable"); n != 1 {
		t.Errorf("%d WARNs about the shared cache, want 1", n)
	}
	e.assertNoLeaks()
}

// TestSharedFleetStuckUnderLock: when the look under the lock hangs, the
// token fetched locally is handed out at once, not after the fetch's
// timeout: the lock's release (which waits for the stuck call) does not
// hold it back longer than a storage read.
func TestSharedFleetStuckUnderLock(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	clk := newFakeClock(t)
	s := &hangingStorage{hangStat: true, hangAfter: 1, release: make(chan struct{})}
	const timeout = 2 * time.Second // storageWait: 500 ms
	a := newCMMember(t, srv.tokenURL(), clk, s, cmTimeout(timeout))
	// The first look finds nothing, the second (under the lock) hangs:
	// 500 ms, then the request, then at most 500 ms for the release.
	ctx, cancel := context.WithTimeout(context.Background(), timeout*3/4)
	defer cancel()
	if _, err := a.Get(ctx); err != nil {
		t.Fatalf("Get: %v", err)
	}
	a.obs.wantCounts(t, "A", map[string]int{"timeout": 1})
	if n := s.count("Lock"); n != 1 {
		t.Errorf("%d Locks, want 1", n)
	}
	close(s.release)
	waitUnstuck(t, a.sc.gate)
	// The lock is released once the stuck call has returned.
	for deadline := time.Now().Add(5 * time.Second); s.count("Unlock") != 1; {
		if time.Now().After(deadline) {
			t.Fatal("the lock was not released after the storage answered")
		}
		time.Sleep(time.Millisecond)
	}
}
