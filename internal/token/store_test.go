package token

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A source's side of a fleet, against an in-memory store whose failures
// the tests choose: when the store is in an outage and what is logged of
// it, and how a stored token is judged on this instance's clock. The
// fleet's real store (internal/fleet) is tested there.

// memStore is a Store in memory. Its errors, set by the tests, fail the
// calls; stuck is what it reports as StuckCalls.
type memStore struct {
	mu                        sync.Mutex
	entry                     *Stored
	loadErr, lockErr, saveErr error
	stuck                     int
	loads, locks, saves       int
}

func (m *memStore) Load(context.Context, *Credentials) (*Stored, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loads++
	if m.loadErr != nil {
		return nil, m.loadErr
	}
	if m.entry == nil {
		return nil, nil
	}
	cp := *m.entry
	return &cp, nil
}

func (m *memStore) Save(_ context.Context, _ *Credentials, t *Stored) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saves++
	if m.saveErr != nil {
		return m.saveErr
	}
	cp := *t
	m.entry = &cp
	return nil
}

func (m *memStore) Lock(context.Context, *Credentials) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.locks++
	if m.lockErr != nil {
		return nil, m.lockErr
	}
	return func() {}, nil
}

func (m *memStore) StuckCalls() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stuck
}

// set changes the store under its lock.
func (m *memStore) set(f func(m *memStore)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m)
}

// stored returns a copy of the entry, nil if there is none.
func (m *memStore) stored() *Stored {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entry == nil {
		return nil
	}
	cp := *m.entry
	return &cp
}

// newStoreSource is a source for srv that shares its tokens through st,
// logging into the returned record.
func newStoreSource(t *testing.T, srv *tokenServer, st Store, opts ...func(*Config)) (*Source, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	s := newTestSource(t, srv.tokenURL(), append([]func(*Config){func(c *Config) { c.Logger = zap.New(core) }}, opts...)...)
	s.SetStore(st)
	return s, logs
}

// mustRefresh forces a fetch of s and returns its token.
func mustRefresh(t testing.TB, s *Source) *Token {
	t.Helper()
	tok, err := s.Refresh(t.Context())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	return tok
}

// count is how many log entries have the message msg.
func count(logs *observer.ObservedLogs, msg string) int { return logs.FilterMessage(msg).Len() }

const (
	msgStoreDown = "shared token cache unavailable; fetching tokens locally"
	msgStoreBack = "shared token cache available again"
)

// TestStoreOutageOncePerOutage: a store that reads but cannot be written
// (a read-only storage: the lock cannot be taken) is one outage, however
// many fetches see it: one WARN, the status degraded since the first
// failure, and no "available again" from the reads that work. The outage
// ends with the first fetch that goes through a full round with the store
// (one INFO).
func TestStoreOutageOncePerOutage(t *testing.T) {
	inBubble(t, "", func(t *testing.T) {
		srv := newTokenServer(t, okToken(4))
		st := &memStore{lockErr: errors.New("mkdir /shared/locks: read-only file system")}
		s, logs := newStoreSource(t, srv, st)
		if got := s.Status().SharedCache; got == nil || got.State != SharedCacheOK || !got.Since.IsZero() || got.StuckCalls != 0 {
			t.Fatalf("before any fetch the shared cache is %+v; want ok, never failed", got)
		}

		start := time.Now()
		mustGet(t, s)
		settle(20 * time.Second) // about six refreshes of 4 s tokens
		if n := srv.count(); n < 6 {
			t.Fatalf("%d token requests in 20 s of 4 s tokens", n)
		}
		if n := count(logs, msgStoreDown); n != 1 {
			t.Errorf("%d WARNs for one outage of %d fetches, want 1", n, srv.count())
		}
		if n := count(logs, msgStoreBack); n != 0 {
			t.Errorf("%d INFOs saying the cache is back while every lock fails, want 0", n)
		}
		got := s.Status().SharedCache
		if got == nil || got.State != SharedCacheDegraded || !got.Since.Equal(start) || !strings.Contains(got.LastError, "read-only file system") {
			t.Fatalf("during the outage the shared cache is %+v; want degraded since %v, with the error", got, start)
		}

		// The storage can be written again: the next fetch ends the outage.
		st.set(func(m *memStore) { m.lockErr = nil })
		settle(4 * time.Second)
		if n := count(logs, msgStoreBack); n != 1 {
			t.Errorf("%d INFOs after the storage recovered, want 1", n)
		}
		if st.stored() == nil {
			t.Error("nothing stored after the storage recovered")
		}
		got = s.Status().SharedCache
		if got == nil || got.State != SharedCacheOK || got.LastError != "" || got.Since.Before(start.Add(20*time.Second)) {
			t.Errorf("after the recovery the shared cache is %+v; want ok since the recovery", got)
		}
		if n := count(logs, msgStoreDown); n != 1 {
			t.Errorf("%d WARNs in all, want 1", n)
		}
	})
}

// TestStoreFailedWriteIsOutage: a store whose reads work and whose writes
// fail is in an outage too, even though each fetch starts with a read
// that works.
func TestStoreFailedWriteIsOutage(t *testing.T) {
	inBubble(t, "", func(t *testing.T) {
		srv := newTokenServer(t, okToken(4))
		st := &memStore{saveErr: errors.New("write /shared/entry: read-only file system")}
		s, logs := newStoreSource(t, srv, st)
		mustGet(t, s)
		settle(12 * time.Second)
		if n, w, i := srv.count(), count(logs, msgStoreDown), count(logs, msgStoreBack); n < 4 || w != 1 || i != 0 {
			t.Errorf("%d fetches: %d WARNs, %d INFOs; want one WARN and no INFO", n, w, i)
		}
		if got := s.Status().SharedCache; got.State != SharedCacheDegraded {
			t.Errorf("the shared cache is %+v; want degraded", got)
		}
	})
}

// TestStoreLockTimeoutIsNoOutage: a lock that a peer holds for long makes
// the instance fetch on its own (counted), but is no outage: no WARN, the
// state stays ok.
func TestStoreLockTimeoutIsNoOutage(t *testing.T) {
	inBubble(t, "", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		st := &memStore{lockErr: fmt.Errorf("locking: %w", context.DeadlineExceeded)}
		obs := &recordingObserver{}
		s, logs := newStoreSource(t, srv, st, func(c *Config) { c.Observer = obs })
		mustGet(t, s)
		mustRefresh(t, s)
		if n := count(logs, msgStoreDown); n != 0 {
			t.Errorf("%d WARNs for a lock held elsewhere, want 0", n)
		}
		if got := s.Status().SharedCache; got.State != SharedCacheOK {
			t.Errorf("the shared cache is %+v; want ok", got)
		}
		obs.mu.Lock()
		defer obs.mu.Unlock()
		if fmt.Sprint(obs.store) != "[lock_timeout lock_timeout]" {
			t.Errorf("store results %v, want two lock_timeouts", obs.store)
		}
	})
}

// TestStoreStatus: the status shows the store's stuck calls (from a store
// that reports them), and no shared cache section without a store.
func TestStoreStatus(t *testing.T) {
	inBubble(t, "", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())
		if got := s.Status().SharedCache; got != nil {
			t.Fatalf("without a store the status has a shared cache: %+v", got)
		}
		st := &memStore{stuck: 2}
		s.SetStore(st)
		mustGet(t, s)
		if got := s.Status().SharedCache; got == nil || got.State != SharedCacheOK || got.StuckCalls != 2 {
			t.Fatalf("the shared cache is %+v; want ok with 2 stuck calls", got)
		}
		s.SetStore(nil)
		if got := s.Status().SharedCache; got != nil {
			t.Fatalf("after SetStore(nil) the status has a shared cache: %+v", got)
		}
	})
}

// storedNow is an entry for tok as a peer whose clock is off by peerSkew
// would store it, having obtained it now (on the real clock) with the
// given lifetime.
func storedNow(tok string, life, peerSkew time.Duration) *Stored {
	obtained := time.Now().Add(peerSkew)
	return &Stored{AccessToken: tok, Obtained: obtained, Expiry: obtained.Add(life)}
}

// TestAdoptPeerClock: a token stored by a peer whose clock is ahead lives
// here at most the lifetime its issuer gave it, counted from its adoption
// (and at most what its JWT exp says); one stored by a peer whose clock is
// behind looks old, so it is a miss. A token within its safety margin is
// never adopted.
func TestAdoptPeerClock(t *testing.T) {
	inBubble(t, "peer 10 min ahead", func(t *testing.T) {
		srv := newTokenServer(t, okToken(4))
		st := &memStore{entry: storedNow("peer-token", 4*time.Second, 10*time.Minute)}
		s := newTestSource(t, srv.tokenURL())
		s.SetStore(st)
		tok := mustGet(t, s)
		if tok.Value != "peer-token" || srv.count() != 0 {
			t.Fatalf("Get = %q after %d token requests; want the peer's token adopted", tok.Value, srv.count())
		}
		// 4 s from now (not 10 min 4 s), used until 200 ms before.
		if !tok.Expiry().Equal(time.Now().Add(4 * time.Second)) {
			t.Errorf("the adopted token expires in %v, want 4s", time.Until(tok.Expiry()))
		}
		if got := nextWake(t, s); got != 3100*time.Millisecond {
			t.Errorf("refresh in %v, want 3.1s (77.5%% of 4 s)", got)
		}
		// The token endpoint fails: the adopted token is served until its
		// safety margin, 3.8 s from its adoption, and not after.
		srv.setRespond(answer(503, "", ""))
		settle(3800*time.Millisecond - time.Nanosecond)
		if p := peek(s); p != tok {
			t.Fatalf("1ns before its safety margin peek = %v, want the adopted token", p)
		}
		settle(time.Nanosecond)
		if p := peek(s); p != nil {
			t.Fatalf("the adopted token is still served 3.8 s after its adoption")
		}
	})
	inBubble(t, "peer 10 min ahead, JWT exp sooner", func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		// The peer stored a 100 s token it obtained "now" on its clock; its
		// exp says it dies in 50 s: it is 50 s old.
		jwt := makeJWT(fmt.Sprintf(`{"exp":%d}`, time.Now().Add(50*time.Second).Unix()))
		st := &memStore{entry: storedNow(jwt, 100*time.Second, 10*time.Minute)}
		s := newTestSource(t, srv.tokenURL())
		s.SetStore(st)
		tok := mustGet(t, s)
		if tok.Value != jwt {
			t.Fatalf("Get = %q; want the peer's token adopted", tok.Value)
		}
		if got := time.Until(tok.Expiry()); got != 50*time.Second {
			t.Errorf("the adopted token expires in %v, want the 50 s of its exp", got)
		}
		// It is 50 s old of 100: its refresh point is 27.5 s away.
		if got := nextWake(t, s); got != 27500*time.Millisecond {
			t.Errorf("refresh in %v, want 27.5s", got)
		}
	})
	inBubble(t, "peer 10 min behind", func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		st := &memStore{entry: storedNow("peer-token", time.Hour, -10*time.Minute)}
		s := newTestSource(t, srv.tokenURL())
		s.SetStore(st)
		// 10 min of 60 are gone on this clock: adopted, with 50 min left.
		if tok := mustGet(t, s); tok.Value != "peer-token" || time.Until(tok.Expiry()) != 50*time.Minute {
			t.Fatalf("Get = %q expiring in %v; want the peer's token with 50 min left", tok.Value, time.Until(tok.Expiry()))
		}
		// A 4 s token from a peer 10 min behind is dead here: a miss.
		st.set(func(m *memStore) { m.entry = storedNow("peer-token-2", 4*time.Second, -10*time.Minute) })
		if tok := mustRefresh(t, s); tok.Value != "tok-1" {
			t.Fatalf("Refresh = %q; want a token of its own", tok.Value)
		}
	})
	inBubble(t, "within the safety margin", func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		// 100 s token with 5 s left: exactly its margin.
		st := &memStore{entry: storedNow("old-token", 100*time.Second, -95*time.Second)}
		s := newTestSource(t, srv.tokenURL())
		s.SetStore(st)
		if tok := mustGet(t, s); tok.Value != "tok-1" {
			t.Fatalf("Get = %q; want a token of its own, not one within its safety margin", tok.Value)
		}
		if tok := mustReplace(t, s, peek(s)); tok.Value != "tok-2" {
			t.Fatalf("a replacement adopted %q within its safety margin", tok.Value)
		}
	})
}

// dated answers with a token and a Date header skew ahead of the real
// clock; the token is a JWT whose exp is life after the endpoint's now,
// and the answer has no expires_in.
func dated(skew, life time.Duration) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		now := time.Now().Add(skew)
		w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
		jwt := makeJWT(fmt.Sprintf(`{"exp":%d,"n":%d}`, now.Add(life).Unix(), n))
		answer(200, "application/json", `{"token_type":"Bearer","access_token":"`+jwt+`"}`)(w, r, n)
	}
}

// TestDateSkew: the JWT exp of a token endpoint whose clock is off is read
// on its clock, from its Date header: a token is used for its real life,
// whether the endpoint is ahead or behind; a skew over 30 s is logged once
// (WARN, the skew and no token); one under 2 s is taken for none. The
// entries a source stores are on the endpoint's clock.
func TestDateSkew(t *testing.T) {
	for _, skew := range []time.Duration{10 * time.Minute, -10 * time.Minute} {
		inBubble(t, fmt.Sprintf("endpoint %v", skew), func(t *testing.T) {
			srv := newTokenServer(t, dated(skew, 100*time.Second))
			core, logs := observer.New(zapcore.DebugLevel)
			st := &memStore{}
			s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Logger = zap.New(core) })
			s.SetStore(st)
			tok := mustGet(t, s)
			// Its real 100 s, less up to a second: the Date header's second
			// is taken to have ended.
			if got := time.Until(tok.Expiry()); got != 99*time.Second {
				t.Fatalf("the token expires in %v, want 99s", got)
			}
			// The endpoint's clock as the source reads it: a second late.
			read := skew + time.Second
			if e := st.stored(); e == nil || !e.Obtained.Equal(time.Now().Add(read)) || !e.Expiry.Equal(time.Now().Add(read+99*time.Second)) {
				t.Errorf("stored %+v; want the times on the endpoint's clock (%v ahead)", e, read)
			}
			settle(5 * time.Minute) // a few refreshes
			warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
			if len(warns) != 1 || !strings.Contains(warns[0].Message, "clock") || warns[0].ContextMap()["skew"] != skew+time.Second {
				t.Fatalf("WARNs %v; want one about the clock, with the skew %v", warns, skew)
			}
			for _, e := range logs.All() {
				if strings.Contains(e.Message+fmt.Sprint(e.ContextMap()), tok.Value) {
					t.Errorf("log %q holds the token", e.Message)
				}
			}
			// Another instance whose clock is as far from the endpoint's
			// reads the same instants from the entry, to the resolution of
			// the Date header (a second): never later.
			other := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Logger = zap.New(core) })
			other.SetStore(st)
			other.noteSkew(time.Now().Add(skew).UTC().Format(http.TimeFormat), time.Now())
			cur := peek(s)
			if got := mustGet(t, other); got.Value != cur.Value || got.Expiry().After(cur.Expiry()) || cur.Expiry().Sub(got.Expiry()) >= time.Second {
				t.Errorf("another instance with the same skew adopted a token expiring at %v; want %v, within a second before", got.Expiry(), cur.Expiry())
			}
		})
	}
	inBubble(t, "mid-second", func(t *testing.T) {
		// The answer comes half a second into a second: its Date reads the
		// second's start. The token must not look longer-lived than its exp.
		time.Sleep(500 * time.Millisecond)
		srv := newTokenServer(t, dated(10*time.Minute, 100*time.Second))
		s := newTestSource(t, srv.tokenURL())
		tok := mustGet(t, s)
		real := time.Unix(time.Now().Add(10*time.Minute+100*time.Second).Unix(), 0).Add(-10 * time.Minute) // the exp, on this clock
		if got := tok.Expiry(); got.After(real) || real.Sub(got) > time.Second {
			t.Errorf("the token expires at %v; want at most its exp (%v), within a second", got, real)
		}
	})
	inBubble(t, "a second off", func(t *testing.T) {
		srv := newTokenServer(t, dated(-time.Second, 100*time.Second))
		core, logs := observer.New(zapcore.WarnLevel)
		s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Logger = zap.New(core) })
		tok := mustGet(t, s)
		// The exp, one second behind, is read on this clock: 99 s.
		if got := time.Until(tok.Expiry()); got != 99*time.Second {
			t.Errorf("the token expires in %v, want 99s (a skew under 2 s is none)", got)
		}
		if s.serverSkew() != 0 || logs.Len() != 0 {
			t.Errorf("skew %v, %d WARNs; want none", s.serverSkew(), logs.Len())
		}
	})
}
