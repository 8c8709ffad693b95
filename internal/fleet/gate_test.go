package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zapcore"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// Every storage call of an entry runs under a deadline and a size bound,
// and a storage that does not answer never holds up a fetch. The deadlines
// are the behaviour under test: in a bubble each one is measured on the
// fake clock, exactly, and a regression that waits longer shows as a
// longer fake wait instead of a hang.

// TestGateLoadBoundedWhenStorageHangs: a Load (or a Stat) that never
// returns, whatever its context says, costs its caller its deadline; after
// that, while it is stuck, no Load, Save or Lock calls the storage again,
// and all fail at once. When the storage answers, the entry works again.
func TestGateLoadBoundedWhenStorageHangs(t *testing.T) {
	for _, method := range []string{"Load", "Stat"} {
		t.Run(method, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &hangingStorage{hangLoad: method == "Load", hangStat: method == "Stat", release: make(chan struct{})}
				e := newEntry(t, s)
				c := testCreds()
				s.put(testKey(), []byte("{}")) // an entry exists: Load is reached

				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				start := time.Now()
				got, err := e.Load(ctx, c)
				took := time.Since(start)
				cancel()
				if got != nil || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, token.ErrStoreUnresponsive) {
					t.Errorf("Load = %v, %v; want context.DeadlineExceeded and token.ErrStoreUnresponsive", got, err)
				}
				if took != 50*time.Millisecond {
					t.Errorf("Load from a hanging storage returned after %v; want its 50ms deadline", took)
				}
				if err != nil {
					assertClean(t, "error", err.Error())
					if !strings.Contains(err.Error(), testKey()) || !strings.Contains(err.Error(), "no answer from the storage within 50ms") {
						t.Errorf("error %q does not name the key and the wait", err)
					}
				}
				if !e.gate.isStuck() {
					t.Fatal("the abandoned call is not recorded as stuck")
				}

				// While it is stuck: every operation fails at once (no fake
				// time passes), without a call.
				before := s.counts()
				start = time.Now()
				ctx = context.Background() // no deadline: only the gate stops them
				if _, err := e.Load(ctx, c); !errors.Is(err, errStuck) || !errors.Is(err, token.ErrStoreUnresponsive) {
					t.Errorf("second Load = %v; want errStuck", err)
				}
				if err := e.Save(ctx, c, storedTok()); !errors.Is(err, errStuck) {
					t.Errorf("Save = %v; want errStuck", err)
				}
				if _, err := e.Lock(ctx, c); !errors.Is(err, errStuck) || !errors.Is(err, token.ErrStoreUnresponsive) {
					t.Errorf("Lock = %v; want errStuck", err)
				}
				if took := time.Since(start); took != 0 {
					t.Errorf("the operations while a call is stuck took %v; want no wait", took)
				}
				for m, n := range s.counts() {
					if n != before[m] {
						t.Errorf("storage.%s called %d times while a call was stuck", m, n-before[m])
					}
				}

				// The storage answers again: so does the entry.
				close(s.release)
				synctest.Wait()
				if e.gate.isStuck() {
					t.Fatal("the gate is still stuck after the storage answered")
				}
				if err := e.Save(context.Background(), c, storedTok()); err != nil {
					t.Fatalf("Save after recovery: %v", err)
				}
				if got, err := e.Load(context.Background(), c); err != nil || !sameToken(got, storedTok()) {
					t.Fatalf("Load after recovery = %v, %v", got, err)
				}
			})
		})
	}
}

// TestGateSucceed: an entry that succeeds another of the same token URL on
// a source takes over its gate; one for another token URL, or succeeding
// no entry, keeps its own.
func TestGateSucceed(t *testing.T) {
	s := &fakeStorage{}
	prev := newEntry(t, s)
	next := newEntry(t, &fakeStorage{}) // another storage module, as after a reload
	if next.gate == prev.gate {
		t.Fatal("two new entries share a gate")
	}
	own := next.gate
	next.Succeed(nil)
	if next.gate != own {
		t.Error("Succeed(nil) replaced the gate")
	}
	other, err := New(s, "https://other.example.test/token", testScopes, nil)
	if err != nil {
		t.Fatal(err)
	}
	next.Succeed(other)
	if next.gate != own {
		t.Error("the gate of an entry for another token URL was taken over")
	}
	next.Succeed(prev)
	if next.gate != prev.gate {
		t.Error("the gate of the entry succeeded was not taken over")
	}
}

// TestGateSurvivesReload: a new Entry for the same source (a config
// reload) that succeeds the old one takes over its gate, so a stuck call
// is not joined by a second one.
func TestGateSurvivesReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		s := &hangingStorage{hangLoad: true, release: make(chan struct{})}
		t.Cleanup(func() { close(s.release) })
		a := newMember(t, srv, s, withTimeout(400*time.Millisecond)) // storage waits: 100ms
		s.put(testKey(), []byte("{}"))
		start := time.Now()
		mustGet(t, a.src)
		if took := time.Since(start); took != 100*time.Millisecond {
			t.Errorf("Get took %v with a hanging storage; want the 100ms storage wait", took)
		}
		if n := s.count("Load"); n != 1 {
			t.Fatalf("%d Loads, want 1", n)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 1})

		e2, err := New(s, a.cfg.TokenURL, a.cfg.Scopes, nil)
		if err != nil {
			t.Fatal(err)
		}
		e2.Succeed(a.src.CurrentStore())
		a.src.SetStore(e2)
		if a.src.CurrentStore() != e2 {
			t.Fatal("the source does not use the new entry")
		}
		if e2.gate != a.entry.gate {
			t.Fatal("the new entry did not take over the source's gate")
		}
		start = time.Now()
		if tok := mustRefresh(t, a.src); tok.Value != "tok-2" {
			t.Errorf("Refresh = %q; want tok-2 from a second token request", tok.Value)
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("Refresh took %v while a call is stuck; want no wait", took)
		}
		if n := s.count("Load"); n != 1 {
			t.Errorf("%d Loads after the reload, want still 1", n)
		}
		if n := srv.count(); n != 2 {
			t.Errorf("%d token requests, want 2", n)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 2})
	})
}

// TestGateStuckUnderLock: when the look under the lock hangs, the token
// fetched locally is handed out at once, not after the fetch's timeout:
// the lock's release (which waits for the stuck call) does not hold it
// back longer than a storage read. The lock is released once the stuck
// call returns.
func TestGateStuckUnderLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		s := &hangingStorage{hangStat: true, hangAfter: 1, release: make(chan struct{})}
		s.unlocked = make(chan string, 1)
		const timeout = 2 * time.Second // storage waits: 500 ms
		a := newMember(t, srv, s, withTimeout(timeout))
		// The first look finds nothing, the second (under the lock) hangs:
		// 500 ms, then the request, then at most 500 ms for the release.
		start := time.Now()
		tok := mustGet(t, a.src)
		if took := time.Since(start); took > 2*storageWaitFor(timeout) {
			t.Errorf("Get took %v; want at most a read's and a release's wait (%v)", took, 2*storageWaitFor(timeout))
		}
		if tok.Value != "tok-1" || srv.count() != 1 {
			t.Errorf("Get = %q after %d token requests; want tok-1 from one request", tok.Value, srv.count())
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 1})
		if n := s.count("Lock"); n != 1 {
			t.Errorf("%d Locks, want 1", n)
		}
		if n := s.count("Unlock"); n != 0 {
			t.Errorf("%d Unlocks while the look under the lock is stuck, want 0", n)
		}
		if n := s.count("Store"); n != 0 {
			t.Errorf("%d Stores while a call is stuck, want 0", n)
		}
		close(s.release)
		if name := <-s.unlocked; name != sealedFor(t, a.entry, a.creds).lockName {
			t.Errorf("unlocked %q", name)
		}
		synctest.Wait()
		if a.entry.gate.isStuck() {
			t.Error("the gate is still stuck after the storage answered")
		}
		if n := s.count("Unlock"); n != 1 {
			t.Errorf("%d Unlocks after the storage answered, want 1", n)
		}
	})
}

// storageWaitFor is how long a source with the given timeout waits for one
// storage read (token.storageWait: a quarter of the timeout, at most 2 s).
func storageWaitFor(timeout time.Duration) time.Duration { return min(timeout/4, 2*time.Second) }

// makeFIFO puts a FIFO at key in the FileStorage at dir, which os.ReadFile
// (FileStorage.Load) waits on for good, and unblocks any reader at the end
// of the test.
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

// TestGateFIFOEntry: with a FIFO at the entry's path of a real FileStorage
// (whose Load ignores its context), Get still returns a token within the
// fetch timeout, fetched locally; the store result is timeout, one WARN is
// logged; later fetches do not touch the storage while the read is stuck,
// and the entry is used again once the storage answers.
//
// Real time: the read of the FIFO blocks in a system call, which a bubble
// does not count as durably blocked, so its fake clock would never reach
// the storage wait. Every wait is bounded.
func TestGateFIFOEntry(t *testing.T) {
	srv := newTokenServer(okToken(3600))
	dir := t.TempDir()
	logger, logs := newLogs()
	const timeout = time.Second // storage waits: 250 ms
	a := newMember(t, srv, &certmagic.FileStorage{Path: dir}, withTimeout(timeout), withLogger(logger))
	fifo := makeFIFO(t, dir, testKey())

	// within fetches with f, which must answer within the timeout.
	within := func(what string, f func(context.Context) (*token.Token, error)) *token.Token {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var tok *token.Token
		returnsWithin(t, what, func() {
			var err error
			if tok, err = f(ctx); err != nil {
				t.Errorf("%s with a FIFO as the entry: %v", what, err)
			}
		})
		if tok == nil {
			t.FailNow()
		}
		return tok
	}
	tok1 := within("Get", a.src.Get)
	if n := srv.count(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
	a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 1})
	if !a.entry.gate.isStuck() {
		t.Error("the read of the FIFO is not recorded as stuck")
	}

	// Again, while the read is stuck: no wait this time.
	start := time.Now()
	tok2 := within("Refresh", a.src.Refresh)
	if tok2.Value == tok1.Value || srv.count() != 2 {
		t.Errorf("Refresh: %d token requests; want a new token from a second request", srv.count())
	}
	if took := time.Since(start); took >= storageWaitFor(timeout) {
		t.Errorf("Refresh took %v while the read is stuck; want no storage wait (%v)", took, storageWaitFor(timeout))
	}
	a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 2})
	warns := logs.FilterLevelExact(zapcore.WarnLevel)
	if warns.Len() != 1 {
		t.Errorf("%d WARN logs, want 1: %v", warns.Len(), logs.All())
	} else if msg := fmt.Sprint(warns.All()[0].ContextMap()["error"]); !strings.Contains(msg, "no answer from the storage") {
		t.Errorf("the WARN's error %q does not say the storage did not answer", msg)
	}
	assertLogsClean(t, logs, tok1.Value, tok2.Value)

	// The storage answers (the FIFO gives EOF) and the FIFO is removed:
	// the entry works again.
	unblockFIFO(fifo)
	waitGateIdle(t, a.entry.gate)
	if err := os.Remove(fifo); err != nil {
		t.Fatal(err)
	}
	tok3 := within("Refresh after recovery", a.src.Refresh)
	if st := a.load(t); st == nil || st.AccessToken != tok3.Value {
		t.Errorf("after recovery the entry is %+v; want the token fetched, %q", st, tok3.Value)
	}
	a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 2, token.StoreMiss: 1})
	if n := logs.FilterMessage("shared token cache available again").Len(); n != 1 {
		t.Errorf("%d INFOs saying the shared cache is back, want 1: %v", n, logs.All())
	}
}

// wedgedStorage is a fakeStorage whose Loads block, ignoring their
// context, while it is wedged: such a call stays blocked until the end of
// the test, even after the storage is unwedged (a read blocked on a FIFO
// that was removed meanwhile). Calls made after unwedge answer at once.
type wedgedStorage struct {
	fakeStorage
	mu     sync.Mutex
	wedged bool
	free   chan struct{} // closed at the end of the test
	loads  int
}

func newWedgedStorage(t *testing.T) *wedgedStorage {
	s := &wedgedStorage{wedged: true, free: make(chan struct{})}
	t.Cleanup(func() { close(s.free) })
	return s
}

func (s *wedgedStorage) setWedged(b bool) {
	s.mu.Lock()
	s.wedged = b
	s.mu.Unlock()
}

func (s *wedgedStorage) loadCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

func (s *wedgedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	s.loads++
	wedged := s.wedged
	s.mu.Unlock()
	if wedged {
		<-s.free
	}
	return s.fakeStorage.Load(ctx, key)
}

func (s *wedgedStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	info, err := s.fakeStorage.Stat(ctx, key)
	if err == nil {
		info.Size = 0 // Load has the last word
	}
	return info, err
}

// loadWithin loads e's entry with a deadline of d.
func loadWithin(e *Entry, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := e.Load(ctx, testCreds())
	return err
}

// TestGateRecoversAfterWait: after a call that does not return, the gate
// leaves the storage alone for ten times that call's wait, then lets a
// call through: a storage that answers again is used again, although the
// first call never returns; the entry reports it as stuck.
func TestGateRecoversAfterWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newWedgedStorage(t)
		s.put(testKey(), []byte("{}"))
		e := newEntry(t, s)
		if err := loadWithin(e, 200*time.Millisecond); !errors.Is(err, token.ErrStoreUnresponsive) {
			t.Fatalf("Load from a wedged storage = %v; want unresponsive", err)
		}
		abandonedAt := time.Now()
		if n := e.StuckCalls(); n != 1 {
			t.Fatalf("StuckCalls = %d, want 1", n)
		}
		if _, since := e.gate.state(); !since.Equal(abandonedAt) {
			t.Errorf("the gate is stuck since %v, want %v", since, abandonedAt)
		}
		s.setWedged(false) // the storage answers again; the first read stays blocked

		// For 2 s (10 × 200 ms) the storage is left alone.
		time.Sleep(2*time.Second - time.Nanosecond)
		if err := loadWithin(e, time.Second); !errors.Is(err, errStuck) {
			t.Errorf("Load 1ns before the gate's wait ends = %v; want errStuck", err)
		}
		if n := s.loadCalls(); n != 1 {
			t.Errorf("%d storage Loads during the gate's wait, want 1", n)
		}
		time.Sleep(time.Nanosecond)
		if err := loadWithin(e, time.Second); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Load after the gate's wait = %v; want the storage's answer (a corrupt entry)", err)
		}
		if err := e.Save(context.Background(), testCreds(), storedTok()); err != nil {
			t.Fatalf("Save after the gate's wait: %v", err)
		}
		if got, err := e.Load(context.Background(), testCreds()); err != nil || !sameToken(got, storedTok()) {
			t.Fatalf("Load = %v, %v", got, err)
		}
		if n := e.StuckCalls(); n != 1 {
			t.Errorf("StuckCalls = %d, want still 1 (the first read never returns)", n)
		}
	})
}

// TestGateClosesAtMaxAbandoned: a storage that never answers gets one
// call per gate wait until maxAbandoned calls are stuck; then none at all,
// whatever the time, until one of them returns.
func TestGateClosesAtMaxAbandoned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newWedgedStorage(t)
		s.put(testKey(), []byte("{}"))
		e := newEntry(t, s)
		const wait = 100 * time.Millisecond // gate wait: 1 s (the floor)
		for i := 1; i <= maxAbandoned; i++ {
			if err := loadWithin(e, wait); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Load %d = %v; want its deadline", i, err)
			}
			if n := e.StuckCalls(); n != i {
				t.Fatalf("after %d abandoned Loads StuckCalls = %d", i, n)
			}
			if err := loadWithin(e, wait); !errors.Is(err, errStuck) && !errors.Is(err, errClosed) {
				t.Fatalf("Load right after = %v; want the gate to refuse it", err)
			}
			time.Sleep(minStuckWait)
		}
		time.Sleep(time.Hour)
		before := s.loadCalls()
		if err := loadWithin(e, wait); !errors.Is(err, errClosed) || !errors.Is(err, token.ErrStoreUnresponsive) {
			t.Fatalf("Load with %d calls stuck = %v; want errClosed", maxAbandoned, err)
		}
		if _, err := e.Lock(context.Background(), testCreds()); !errors.Is(err, errClosed) {
			t.Fatalf("Lock with %d calls stuck = %v; want errClosed", maxAbandoned, err)
		}
		if n := s.loadCalls(); n != before || before != maxAbandoned {
			t.Errorf("%d storage Loads in all, want %d", n, maxAbandoned)
		}
	})
}

// TestGateReleaseAfterWait: a lock taken before the look under it got
// stuck is released once the gate's wait ends, although the stuck call
// never returns.
func TestGateReleaseAfterWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newWedgedStorage(t)
		s.setWedged(false)
		s.unlocked = make(chan string, 1)
		e := newEntry(t, s)
		unlock, err := e.Lock(context.Background(), testCreds())
		if err != nil {
			t.Fatal(err)
		}
		s.put(testKey(), []byte("{}"))
		s.setWedged(true)
		if err := loadWithin(e, 500*time.Millisecond); !errors.Is(err, token.ErrStoreUnresponsive) {
			t.Fatalf("Load = %v; want unresponsive", err)
		}
		start := time.Now()
		go unlock()
		synctest.Wait()
		if len(s.unlocked) != 0 {
			t.Fatal("unlocked while the gate leaves the storage alone")
		}
		if name := <-s.unlocked; name != sealedFor(t, e, testCreds()).lockName {
			t.Errorf("unlocked %q", name)
		}
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("unlocked after %v, want the gate's 5 s wait (10 × 500 ms)", took)
		}
	})
}

// TestFleetRecoversFromWedgedStorage: through a source, a storage that
// stops answering puts the shared cache in an outage (degraded, one WARN,
// a stuck call) without holding up the fetches; once it answers again the
// first fetch after the gate's wait uses it, and the outage ends (one
// INFO), with the first call still stuck in it.
func TestFleetRecoversFromWedgedStorage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		s := newWedgedStorage(t)
		logger, logs := newLogs()
		a := newMember(t, srv, s, withTimeout(400*time.Millisecond), withLogger(logger)) // storage waits: 100 ms; gate: 1 s
		s.put(testKey(), []byte("{}"))
		start := time.Now()
		mustGet(t, a.src)
		st := a.src.Status().SharedCache
		if st == nil || st.State != token.SharedCacheDegraded || !st.Since.Equal(start.Add(100*time.Millisecond)) || st.StuckCalls != 1 {
			t.Fatalf("shared cache %+v; want degraded since the read's deadline, one stuck call", st)
		}
		s.setWedged(false) // and what blocked it is gone, as a FIFO removed
		s.Delete(context.Background(), testKey())
		mustRefresh(t, a.src) // within the gate's wait: not tried
		if n := s.loadCalls(); n != 1 {
			t.Fatalf("%d Loads within the gate's wait, want 1", n)
		}
		time.Sleep(time.Second)
		tok := mustRefresh(t, a.src)
		if got := a.load(t); got == nil || got.AccessToken != tok.Value {
			t.Errorf("the entry is %+v after the recovery; want the token fetched", got)
		}
		st = a.src.Status().SharedCache
		if st == nil || st.State != token.SharedCacheOK || st.StuckCalls != 1 {
			t.Errorf("shared cache %+v after the recovery; want ok with the first read still stuck", st)
		}
		if w, i := logs.FilterMessage("shared token cache unavailable; fetching tokens locally").Len(),
			logs.FilterMessage("shared token cache available again").Len(); w != 1 || i != 1 {
			t.Errorf("%d WARNs and %d INFOs for one outage, want 1 and 1", w, i)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreTimeout: 2, token.StoreMiss: 1})
	})
}
