package fleet

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zapcore"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// These tests run token.Source in cluster mode through its exported API:
// two sources over one certmagic.FileStorage directory are two Caddy
// instances of a fleet. Each has its own FileStorage value and its own
// Entry over that directory, as two processes would. Everything runs in a
// bubble: token lifetimes, refreshes, backoffs and the storage lock's
// polling are fake time, and the token endpoint is in memory.

// pair is the usual two-member fleet: A and B share one storage directory
// and one token endpoint that issues tokens of expiresIn seconds.
type pair struct {
	srv  *tokenServer
	dir  string
	a, b *member
}

// newPair starts it; aOpts and bOpts configure each member.
func newPair(t *testing.T, expiresIn int, aOpts, bOpts []option) pair {
	t.Helper()
	srv := newTokenServer(okToken(expiresIn))
	dir := bubbleDir(t)
	a := newMember(t, srv, &certmagic.FileStorage{Path: dir}, aOpts...)
	b := newMember(t, srv, &certmagic.FileStorage{Path: dir}, bOpts...)
	return pair{srv: srv, dir: dir, a: a, b: b}
}

// sleepUntil lets fake time pass until at, and every goroutine of the
// bubble settle.
func sleepUntil(at time.Time) {
	time.Sleep(time.Until(at))
	synctest.Wait()
}

// TestFleetAdopts: the second instance of a fleet adopts the token the
// first one fetched and stored, without a token request of its own, with
// the token's times: it refreshes it at 77.5% of its life counted from when
// A obtained it, and, should that refresh fail, serves it until exactly
// its safety margin before its expiry.
func TestFleetAdopts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newPair(t, 3600, nil, nil)
		srv, a, b := f.srv, f.a, f.b

		t0 := time.Now()
		ta := mustGet(t, a.src)
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests after A's Get, want 1", n)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: 1})
		if st := b.load(t); st == nil || st.AccessToken != ta.Value {
			t.Fatalf("after A's Get the stored entry is %+v; want A's token", st)
		}
		a.src.Close() // A's own refresh would change the entry

		// B starts later: the token is 1000 s old when B adopts it.
		time.Sleep(1000 * time.Second)
		tb := mustGet(t, b.src)
		if n := srv.count(); n != 1 {
			t.Fatalf("%d token requests after B's Get, want still 1 (B adopts)", n)
		}
		if tb.Value != ta.Value {
			t.Fatalf("B got %q, want A's token %q", tb.Value, ta.Value)
		}
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreHit: 1})
		if !tb.Expiry().Equal(ta.Expiry()) || !ta.Expiry().Equal(t0.Add(time.Hour)) {
			t.Errorf("B's token expires at %v, want A's %v (t0+1h)", tb.Expiry(), ta.Expiry())
		}
		if got := b.src.Status(); got.Fetches != 0 || got.State != token.StateFresh || !got.ExpiresAt.Equal(ta.Expiry()) {
			t.Errorf("B's status %+v, want fresh with 0 fetches, expiring at A's %v", got, ta.Expiry())
		}

		// The adopted token keeps its age: B refreshes it 2790 s (77.5% of
		// 3600 s) after A obtained it, not after B adopted it. The token
		// endpoint is down by then, so B keeps serving the token.
		srv.setRespond(answer(http.StatusServiceUnavailable, `{"error":"unavailable"}`))
		refreshAt := t0.Add(2790 * time.Second)
		sleepUntil(refreshAt.Add(-time.Millisecond))
		if got := b.src.Status(); got.Fetches != 0 || srv.count() != 1 {
			t.Fatalf("1ms before the refresh point B has made %d token requests, want 0", got.Fetches)
		}
		sleepUntil(refreshAt)
		if got := b.src.Status(); got.Fetches != 1 || got.State != token.StateBackingOff || srv.count() != 2 {
			t.Fatalf("at the refresh point B's status is %+v after %d token requests; want its failed refresh", got, srv.count())
		}
		// The adopted token lives exactly as long as A's: it expires at
		// t0+1h, and is used until its safety margin (10 s) before.
		sleepUntil(t0.Add(time.Hour - 10*time.Second - time.Millisecond))
		if got := mustGet(t, b.src); got != tb {
			t.Errorf("1ms before its safety margin B serves %q, want the adopted token", got.Value)
		}
		sleepUntil(t0.Add(time.Hour - 10*time.Second))
		if got, err := b.src.Get(context.Background()); err == nil {
			t.Errorf("within its safety margin B still serves %q", got.Value)
		}
		if got := b.src.Status(); !got.ExpiresAt.IsZero() {
			t.Errorf("within the safety margin B's status %+v still gives an expiry", got)
		}
	})
}

// TestFleetRefresh: over ten token lifetimes, two instances that refresh
// at different points of a token's life make the requests of one: the
// earlier one refreshes and stores, the later one adopts.
func TestFleetRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A refreshes at 77.5% of a token's life (2.325 s), B at 79.5%
		// (2.385 s): 60 ms later.
		f := newPair(t, 3, []option{withRand(0.5)}, []option{withRand(0.9)})
		srv, a, b := f.srv, f.a, f.b

		t0 := time.Now()
		ta := mustGet(t, a.src)
		tb := mustGet(t, b.src)
		if tb.Value != ta.Value {
			t.Fatalf("B got %q, want A's %q", tb.Value, ta.Value)
		}
		// A fetches at 0 s and every 2.325 s after (12 refreshes until
		// 27.9 s); B adopts each of those tokens 60 ms after A stored it.
		const period = 2325 * time.Millisecond
		refreshes := map[string]int{}
		for k := 1; time.Duration(k)*period+61*time.Millisecond <= 30*time.Second; k++ {
			at := t0.Add(time.Duration(k) * period)
			sleepUntil(at.Add(time.Millisecond))
			na, nb := mustGet(t, a.src), mustGet(t, b.src)
			if na == ta || na.Value == ta.Value || nb != tb {
				t.Fatalf("refresh %d: 1ms after A's refresh point A serves %q (was %q), B %q (was %q); want only A to have refreshed",
					k, na.Value, ta.Value, nb.Value, tb.Value)
			}
			refreshes["A"]++
			ta = na
			sleepUntil(at.Add(61 * time.Millisecond))
			if got := mustGet(t, a.src); got != ta {
				t.Fatalf("refresh %d: A refreshed again at B's refresh point", k)
			}
			nb = mustGet(t, b.src)
			if nb == tb || nb.Value != ta.Value {
				t.Fatalf("refresh %d: 1ms after B's refresh point B serves %q; want A's new %q", k, nb.Value, ta.Value)
			}
			refreshes["B"]++
			tb = nb
			if n := srv.count(); n != int64(k)+1 {
				t.Fatalf("refresh %d: %d token requests, want %d", k, n, k+1)
			}
		}
		sleepUntil(t0.Add(30 * time.Second))
		for who, tok := range map[string]*token.Token{"A": mustGet(t, a.src), "B": mustGet(t, b.src)} {
			if tok.Value != ta.Value || !tok.Valid(time.Now()) {
				t.Errorf("at 30 s %s serves %q, want A's last %q, valid", who, tok.Value, ta.Value)
			}
		}
		if refreshes["A"] != 12 || refreshes["B"] != 12 {
			t.Errorf("refreshes: A %d, B %d; want 12 each", refreshes["A"], refreshes["B"])
		}
		if n := srv.count(); n != 13 {
			t.Errorf("%d token requests over ten 3 s lifetimes for two instances, want 13 (one instance's worth)", n)
		}
		if got := b.src.Status().Fetches; got != 0 {
			t.Errorf("B made %d token requests, want 0", got)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: 13})
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreHit: 13})
	})
}

// TestFleetOldEntryNotAdopted: a stored token past 75% of its life (the
// earliest point at which any instance refreshes) is not adopted: an
// instance that starts then fetches and stores a new one, which the
// instance that held the old token adopts at its own refresh.
func TestFleetOldEntryNotAdopted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newPair(t, 100, nil, nil)
		srv, a, b := f.srv, f.a, f.b

		t0 := time.Now()
		ta1 := mustGet(t, a.src)
		sleepUntil(t0.Add(76 * time.Second)) // past 75%, before A's refresh at 77.5%

		tb := mustGet(t, b.src)
		if tb.Value == ta1.Value {
			t.Fatalf("B adopted %q at 76%% of its life", ta1.Value)
		}
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests, want 2", n)
		}
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreMiss: 1})

		// A's refresh adopts B's token.
		sleepUntil(t0.Add(77500*time.Millisecond - time.Millisecond))
		if got := mustGet(t, a.src); got != ta1 {
			t.Fatalf("A refreshed before its refresh point")
		}
		sleepUntil(t0.Add(77500 * time.Millisecond))
		if ta2 := mustGet(t, a.src); ta2.Value != tb.Value {
			t.Errorf("A's refresh got %q, want B's %q", ta2.Value, tb.Value)
		}
		if n := srv.count(); n != 2 {
			t.Errorf("%d token requests after A's refresh, want still 2", n)
		}
		if got := a.src.Status().Fetches; got != 1 {
			t.Errorf("A made %d token requests, want 1", got)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: 1, token.StoreHit: 1})
	})
}

// TestFleetForcedRefresh: an operator's Refresh fetches a new token even
// though the stored one is the instance's own, fresh token; another
// instance's Refresh then adopts that new token.
func TestFleetForcedRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newPair(t, 3600, nil, nil)
		srv, a, b := f.srv, f.a, f.b
		t1 := mustGet(t, a.src)
		mustGet(t, b.src)

		t2 := mustRefresh(t, a.src)
		if t2.Value == t1.Value || srv.count() != 2 {
			t.Fatalf("A.Refresh got %q after %d token requests; want a new token from a second request", t2.Value, srv.count())
		}
		tb := mustRefresh(t, b.src)
		if tb.Value != t2.Value || srv.count() != 2 {
			t.Errorf("B.Refresh got %q after %d token requests; want A's new %q and no request", tb.Value, srv.count(), t2.Value)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: 2})
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreHit: 2})
	})
}

// TestFleetRejected: when the upstream rejects the fleet's token, the
// first instance to hear of it fetches and stores a new one; the next
// instance told of the same rejection adopts that one.
func TestFleetRejected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newPair(t, 3600, nil, nil)
		srv, a, b := f.srv, f.a, f.b

		ta1, tb1 := mustGet(t, a.src), mustGet(t, b.src)
		if ta1.Value != tb1.Value || srv.count() != 1 {
			t.Fatalf("A has %q, B has %q after %d requests; want one shared token", ta1.Value, tb1.Value, srv.count())
		}
		time.Sleep(time.Minute) // the token is not brand new any more

		ta2 := mustReplace(t, a.src, ta1) // A's upstream answered 401
		if n := srv.count(); n != 2 {
			t.Fatalf("%d token requests after A's rejection, want 2", n)
		}
		if got := mustGet(t, a.src); got != ta2 {
			t.Fatalf("A serves %q after the rejection, want its replacement %q", got.Value, ta2.Value)
		}
		if st := a.load(t); st == nil || st.AccessToken != ta2.Value {
			t.Fatalf("after A's rejection the stored entry is %+v; want %q", st, ta2.Value)
		}

		tb2 := mustReplace(t, b.src, tb1) // B's upstream rejects the same token
		if tb2.Value != ta2.Value {
			t.Fatalf("after its rejection B got %q, want A's new %q", tb2.Value, ta2.Value)
		}
		if n := srv.count(); n != 2 {
			t.Errorf("%d token requests after B's rejection, want still 2 (B adopts)", n)
		}
		if got := b.src.Status().Fetches; got != 0 {
			t.Errorf("B made %d token requests, want 0", got)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: 2})
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreHit: 2})

		// Another 401 with the old token (a request that was in flight)
		// changes nothing.
		b.src.Rejected(token.Refusal{Token: tb1})
		synctest.Wait()
		if got := mustGet(t, b.src); got != tb2 {
			t.Errorf("a stale rejection replaced B's token")
		}
		if n := srv.count(); n != 2 {
			t.Errorf("%d token requests after a stale rejection, want still 2", n)
		}
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreHit: 2})
	})
}

// TestFleetOtherSecretMisses: an entry encrypted under another client
// secret is unreadable: an instance with a different secret (same token
// URL, client ID and scopes, so the same entry) misses, fetches its own
// token and overwrites the entry.
func TestFleetOtherSecretMisses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600)) // accepts any credentials
		dir := bubbleDir(t)
		a := newMember(t, srv, &certmagic.FileStorage{Path: dir})
		const otherSecret = "rotated-Secret-4b1c9e7f2a0d"
		c := newMember(t, srv, &certmagic.FileStorage{Path: dir}, withSecret(otherSecret))

		ta := mustGet(t, a.src)
		tc := mustGet(t, c.src)
		if tc.Value == ta.Value {
			t.Fatalf("the instance with another secret adopted %q", ta.Value)
		}
		if n := srv.count(); n != 2 {
			t.Errorf("%d token requests, want 2 (one per secret)", n)
		}
		c.obs.wantCounts(t, "other secret", map[token.StoreResult]int{token.StoreMiss: 1})

		// Both wrote the one entry (the secret is not part of its key)…
		var entries []string
		err := filepath.WalkDir(filepath.Join(dir, filepath.FromSlash(Prefix)), func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				entries = append(entries, path)
			}
			return err
		})
		if want := filepath.Join(dir, filepath.FromSlash(testKey())); err != nil || len(entries) != 1 || entries[0] != want {
			t.Errorf("entries in the storage: %v (%v); want only %s", entries, err, want)
		}
		// …and the second store replaced it: the first secret cannot read it.
		if st := a.load(t); st != nil {
			t.Errorf("Load under the first secret = %+v; want a miss", st)
		}
		if st := c.load(t); st == nil || st.AccessToken != tc.Value {
			t.Errorf("Load under the other secret = %+v; want %q", st, tc.Value)
		}
	})
}

// TestFleetCorruptEntry: garbage at the entry's key is a local fetch for
// the instance, not an error for its clients, with one WARN that holds
// neither the secret nor the token; the fetched token replaces the garbage.
func TestFleetCorruptEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		dir := bubbleDir(t)
		logger, logs := newLogs()
		a := newMember(t, srv, &certmagic.FileStorage{Path: dir}, withLogger(logger))
		if err := (&certmagic.FileStorage{Path: dir}).Store(context.Background(), testKey(), []byte("garbage")); err != nil {
			t.Fatalf("Store: %v", err)
		}

		tok := mustGet(t, a.src)
		if n := srv.count(); n != 1 {
			t.Errorf("%d token requests, want 1", n)
		}
		// The look without the lock fails (counted and logged once), the
		// look under it fails the same way (not counted again): a miss.
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreError: 1, token.StoreMiss: 1})
		warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
		if len(warns) != 1 {
			t.Fatalf("%d WARN logs, want exactly 1: %v", len(warns), warns)
		}
		if msg := fmt.Sprint(warns[0].ContextMap()["error"]); !strings.Contains(msg, "corrupt") {
			t.Errorf("the WARN's error %q does not say the entry is corrupt", msg)
		}
		assertLogsClean(t, logs, tok.Value)

		// The source stored its token over the garbage.
		if st := a.load(t); st == nil || st.AccessToken != tok.Value {
			t.Errorf("after the fetch the entry is %+v; want %q", st, tok.Value)
		}
	})
}

// TestFleetStorageDown: with the storage unreachable, Get still returns a
// token, fetched locally; the failure is counted (the load's and the
// lock's) and logged once.
func TestFleetStorageDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		logger, logs := newLogs()
		a := newMember(t, srv, downStorage(), withLogger(logger))

		tok1 := mustGet(t, a.src)
		if n := srv.count(); n != 1 {
			t.Errorf("%d token requests, want 1", n)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreError: 2})

		// A second fetch works the same, and the outage is not logged again.
		tok2 := mustRefresh(t, a.src)
		if tok2.Value == tok1.Value || srv.count() != 2 {
			t.Errorf("Refresh got %q after %d requests; want a new token from a second request", tok2.Value, srv.count())
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreError: 4})
		warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
		if len(warns) != 1 {
			t.Fatalf("%d WARN logs for one outage, want 1: %v", len(warns), logs.All())
		}
		if msg := fmt.Sprint(warns[0].ContextMap()["error"]); !strings.Contains(msg, errStorageDown.Error()) {
			t.Errorf("the WARN's error %q does not give the storage's error", msg)
		}
		assertLogsClean(t, logs, tok1.Value, tok2.Value)
	})
}

// TestFleetLockTimeout: while another instance holds the entry's lock too
// long, an instance that needs a token waits exactly half its timeout (the
// lock wait), then fetches on its own: a lock_timeout, not a timeout of
// the storage.
func TestFleetLockTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		dir := bubbleDir(t)
		const timeout = 800 * time.Millisecond // lock wait: 400 ms
		a := newMember(t, srv, &certmagic.FileStorage{Path: dir}, withTimeout(timeout))

		holder := newEntry(t, &certmagic.FileStorage{Path: dir})
		unlock, err := holder.Lock(context.Background(), testCreds())
		if err != nil {
			t.Fatalf("taking the lock: %v", err)
		}
		t.Cleanup(unlock)

		start := time.Now()
		tok := mustGet(t, a.src)
		if took := time.Since(start); took != timeout/2 {
			t.Errorf("Get took %v; want the lock wait, %v", took, timeout/2)
		}
		if n := srv.count(); n != 1 {
			t.Errorf("%d token requests, want 1", n)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreLockTimeout: 1})
		if !tok.Valid(time.Now()) {
			t.Errorf("Get returned a token that is not valid")
		}
		synctest.Wait()
		if a.entry.gate.isStuck() {
			t.Error("the gate is stuck after the lock wait ended")
		}
	})
}

// TestFleetEntryHoldsNoPlaintext: nothing in the storage directory (entry,
// lock file, file names) holds the token, the secret, the client ID or the
// token's expiry in clear.
func TestFleetEntryHoldsNoPlaintext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const tokenPrefix = "fleet-token-Zq8vR2mKx7Lp-"
		srv := newTokenServer(func(w http.ResponseWriter, r *http.Request, n int64) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":3600,"access_token":"%s%d"}`, tokenPrefix, n)
		})
		dir := bubbleDir(t)
		a := newMember(t, srv, &certmagic.FileStorage{Path: dir})
		tok := mustGet(t, a.src)
		if !strings.HasPrefix(tok.Value, tokenPrefix) {
			t.Fatalf("token %q", tok.Value)
		}
		// Hold the lock, so that its file is looked at too.
		unlock, err := a.entry.Lock(context.Background(), a.creds)
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()

		raw, err := (&certmagic.FileStorage{Path: dir}).Load(context.Background(), testKey())
		if err != nil {
			t.Fatalf("loading the entry: %v", err)
		}
		expiry := []string{
			tok.Expiry().Format("2006-01-02T15:04:05"),
			tok.Expiry().UTC().Format("2006-01-02T15:04:05"),
			fmt.Sprint(tok.Expiry().Unix()),
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
			if strings.Contains(s, testClientID) {
				t.Errorf("%s holds the client ID: %q", what, s)
			}
		}
		check("the entry", raw)
		for _, e := range expiry {
			if bytes.Contains(raw, []byte(e)) {
				t.Errorf("the entry holds the expiry %q: %q", e, raw)
			}
		}

		files := map[string]bool{}
		err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			check("path "+path, []byte(path))
			if d.IsDir() {
				return nil
			}
			rel, _ := filepath.Rel(dir, path)
			files[filepath.ToSlash(rel)] = true
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
		lockFile := "locks/" + sealedFor(t, a.entry, a.creds).lockName + ".lock"
		if len(files) != 2 || !files[testKey()] || !files[lockFile] {
			t.Fatalf("files in the storage: %v; want the entry and the lock file %s", files, lockFile)
		}
	})
}

// TestFleetOff: SetStore(nil) turns cluster mode off: the source never
// touches the storage again and reports no store result.
func TestFleetOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		trap := &trapStorage{t: t}
		a := newMember(t, srv, trap)
		if a.src.CurrentStore() != a.entry {
			t.Fatal("CurrentStore is not the entry set")
		}

		// On: the storage is used (and fails, so the source fetches locally).
		mustGet(t, a.src)
		if trap.calls.Load() == 0 {
			t.Fatal("cluster mode on, but the storage was never called")
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreError: 2})
		before := len(a.obs.results())

		a.src.SetStore(nil)
		if st := a.src.CurrentStore(); st != nil {
			t.Fatalf("CurrentStore after SetStore(nil) = %v", st)
		}
		trap.armed.Store(true)
		tok := mustRefresh(t, a.src)
		mustReplace(t, a.src, tok)
		if n := srv.count(); n != 3 {
			t.Errorf("%d token requests, want 3", n)
		}
		if got := a.obs.results(); len(got) != before {
			t.Errorf("store results after SetStore(nil): %v", got[before:])
		}

		// A source that never had a store reports no store result either.
		cfg, obs := a.cfg, &recorder{}
		cfg.Observer = obs
		other, err := token.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		other.SetStore(nil)
		mustGet(t, other)
		if got := obs.results(); len(got) != 0 {
			t.Errorf("store results of a source without a store: %v", got)
		}
	})
}

// TestFleetRetryAfterFailedReplacement: when the fetch that replaces a
// rejected token fails, the backoff retry runs as a plain refresh while
// the rejected token is still served; with a store it must not adopt the
// rejected token back from the store (it is not past 75% of its life
// there).
func TestFleetRetryAfterFailedReplacement(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(okToken(3600))
		a := newMember(t, srv, &certmagic.FileStorage{Path: bubbleDir(t)})
		t1 := mustGet(t, a.src)

		srv.setRespond(answer(http.StatusServiceUnavailable, `{"error":"unavailable"}`))
		// The upstream answered 401; the replacement fetch fails, and the
		// token A had stays in use (a 401 never leaves it worse off).
		failedAt := time.Now()
		if fresh := a.src.Replace(context.Background(), token.Refusal{Token: t1}); fresh != nil {
			t.Fatalf("Replace returned %q while the token endpoint is down", fresh.Value)
		}
		if got := mustGet(t, a.src); got != t1 {
			t.Fatalf("after a failed replacement A serves %q, want the token it had", got.Value)
		}
		// The retry is due 1 s later (the first backoff, jitter ×1).
		if st := a.src.Status(); st.State != token.StateBackingOff || !st.NextRetryAt.Equal(failedAt.Add(time.Second)) {
			t.Fatalf("after the failed replacement A's status is %+v; want backing off until +1s", st)
		}

		srv.setRespond(okToken(3600)) // the token endpoint is back
		sleepUntil(failedAt.Add(time.Second))
		got := mustGet(t, a.src)
		if got.Value == t1.Value {
			t.Errorf("the retry after a failed replacement serves the rejected token %q again (results %v, %d token requests)",
				t1.Value, a.obs.results(), srv.count())
		}
		if n := srv.count(); n != 3 {
			t.Errorf("%d token requests, want 3 (the first token, the failed replacement, the retry)", n)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: 3})
		if st := a.load(t); st == nil || st.AccessToken != got.Value {
			t.Errorf("after the retry the entry is %+v; want %q", st, got.Value)
		}
	})
}

// TestFleetRepeatedPeerRevocations: a server that revokes a client's
// previous token whenever a peer refreshes makes B's token rejected again
// and again, each time shortly after B adopted it. Adopting a peer's newer
// token costs no token request, so neither the guard against 401 storms
// nor the revocation budget (a burst of 6) may hold B back: every one of
// ten rejections within a second is answered by adoption at once.
func TestFleetRepeatedPeerRevocations(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newPair(t, 3600, nil, nil)
		a, b := f.a, f.b
		mustGet(t, a.src)
		tb := mustGet(t, b.src)
		const rejections = 10
		for i := range rejections {
			time.Sleep(100 * time.Millisecond) // far younger than any guard step
			fresh := mustRefresh(t, a.src)     // a peer refreshes; the server revokes tb
			next := b.src.Replace(context.Background(), token.Refusal{Token: tb})
			if next == nil {
				t.Fatalf("rejection %d: B found no replacement (held back by the guard or the budget?)", i+1)
			}
			if next.Value != fresh.Value {
				t.Fatalf("rejection %d: B serves %q, want the peer's newer %q (held back by the guard?)", i+1, next.Value, fresh.Value)
			}
			tb = next
		}
		if got := b.src.Status().Fetches; got != 0 {
			t.Errorf("B made %d token requests, want 0", got)
		}
		if n := f.srv.count(); n != rejections+1 {
			t.Errorf("%d token requests, want %d (A's)", n, rejections+1)
		}
		a.obs.wantCounts(t, "A", map[token.StoreResult]int{token.StoreMiss: rejections + 1})
		b.obs.wantCounts(t, "B", map[token.StoreResult]int{token.StoreHit: rejections + 1})
	})
}
