package deskoauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

const (
	scTokenURL = "https://auth.example.test/v1.1/oauth/token"
	scClientID = "client-42"
	scSecret   = "s3cr3t-Client-Secret-value-0123456789"
	scToken    = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJlLXZhbHVl"
)

var scScopes = []string{"read", "write"}

// scTok is a token with times that are easy to look for in raw bytes.
func scTok() *storedToken {
	obtained := time.Date(2031, 7, 14, 9, 26, 53, 0, time.UTC)
	return &storedToken{AccessToken: scToken, Obtained: obtained, Expiry: obtained.Add(37 * time.Minute)}
}

func newSC(t *testing.T, s certmagic.Storage, secret string) *sharedCache {
	t.Helper()
	c, err := newSharedCache(s, scTokenURL, scClientID, scScopes, nil, secret)
	if err != nil {
		t.Fatalf("newSharedCache: %v", err)
	}
	return c
}

func sameToken(a, b *storedToken) bool {
	return a != nil && b != nil && a.AccessToken == b.AccessToken && a.Obtained.Equal(b.Obtained) && a.Expiry.Equal(b.Expiry)
}

// assertClean fails if s holds the secret or the token (or is empty).
func assertClean(t *testing.T, what, s string) {
	t.Helper()
	newLeakCheck(scClientID, scSecret, scToken).assertNone(t, what, s)
}

func TestSharedCacheRoundTrip(t *testing.T) {
	ctx := context.Background()
	c := newSC(t, &certmagic.FileStorage{Path: t.TempDir()}, scSecret)

	got, err := c.load(ctx)
	if got != nil || err != nil {
		t.Fatalf("load of an empty storage = %v, %v; want nil, nil", got, err)
	}
	want := scTok()
	if err := c.store(ctx, want); err != nil {
		t.Fatalf("store: %v", err)
	}
	got, err = c.load(ctx)
	if err != nil || !sameToken(got, want) {
		t.Fatalf("load = %+v, %v; want %+v", got, err, want)
	}

	// A second store replaces the first; times with a monotonic reading and
	// a zone other than UTC survive (as instants).
	now := time.Now()
	next := &storedToken{AccessToken: "second-token", Obtained: now, Expiry: now.Add(time.Hour).In(time.FixedZone("BRT", -3*3600))}
	if err := c.store(ctx, next); err != nil {
		t.Fatalf("store: %v", err)
	}
	if got, err = c.load(ctx); err != nil || !sameToken(got, next) {
		t.Fatalf("load after overwrite = %+v, %v; want %+v", got, err, next)
	}
}

// The stored bytes are an opaque envelope: no token, no secret, no time.
func TestSharedCacheAtRestRevealsNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)
	tok := scTok()
	if err := c.store(ctx, tok); err != nil {
		t.Fatalf("store: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(c.Key())))
	if err != nil {
		t.Fatalf("the entry is not at its key: %v", err)
	}

	var env map[string]any
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("entry is not JSON: %v", err)
	}
	if len(env) != 3 || env["v"] != 1.0 {
		t.Fatalf("envelope = %s; want exactly v=1, nonce, ciphertext", raw)
	}
	nonce, err := base64.StdEncoding.DecodeString(env["nonce"].(string))
	if err != nil || len(nonce) != 12 {
		t.Fatalf("nonce = %q (%v); want 12 base64 bytes", env["nonce"], err)
	}

	// Look for every spelling of the secrets and times, in the raw bytes
	// and in the decoded ciphertext.
	ct, _ := base64.StdEncoding.DecodeString(env["ciphertext"].(string))
	needles := []string{scToken, scSecret, scClientID, "access_token", "expiry", "obtained"}
	for _, tm := range []time.Time{tok.Expiry, tok.Obtained} {
		needles = append(needles,
			tm.Format(time.RFC3339), tm.Format("2006-01-02"), tm.Format("15:04"),
			strconv.FormatInt(tm.Unix(), 10), strconv.FormatInt(tm.UnixMilli(), 10))
	}
	for _, n := range needles {
		for _, hay := range [][]byte{raw, ct} {
			if bytes.Contains(hay, []byte(n)) {
				t.Errorf("stored entry contains %q", n)
			}
		}
	}
	// The ciphertext is padded: its length does not give the token's away.
	if (len(ct)-16)%sharedCachePadding != 0 {
		t.Errorf("ciphertext is %d bytes; want a multiple of %d plus the 16-byte tag", len(ct), sharedCachePadding)
	}

	// Writing the same token again uses a fresh nonce.
	if err := c.store(ctx, tok); err != nil {
		t.Fatalf("store: %v", err)
	}
	raw2, _ := os.ReadFile(filepath.Join(dir, filepath.FromSlash(c.Key())))
	if bytes.Equal(raw, raw2) {
		t.Error("two writes of the same token gave the same bytes")
	}
	if len(raw) != len(raw2) {
		t.Errorf("entry sizes differ for the same token: %d, %d", len(raw), len(raw2))
	}
}

// A rotated secret reads the old entry as a miss, not as an error, and its
// next store replaces it.
func TestSharedCacheRotatedSecretMisses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	old := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)
	rotated := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret+"-rotated")
	if old.Key() != rotated.Key() {
		t.Fatalf("the key depends on the secret: %s vs %s", old.Key(), rotated.Key())
	}
	if err := old.store(ctx, scTok()); err != nil {
		t.Fatal(err)
	}
	if got, err := rotated.load(ctx); got != nil || err != nil {
		t.Fatalf("load under another secret = %v, %v; want nil, nil", got, err)
	}
	fresh := &storedToken{AccessToken: "after-rotation", Obtained: scTok().Obtained, Expiry: scTok().Expiry}
	if err := rotated.store(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if got, err := rotated.load(ctx); err != nil || !sameToken(got, fresh) {
		t.Fatalf("load after overwrite = %+v, %v", got, err)
	}
	if got, err := old.load(ctx); got != nil || err != nil {
		t.Fatalf("old secret reading the new entry = %v, %v; want nil, nil", got, err)
	}
}

// Altered ciphertext and an entry moved to another credential set's key do
// not authenticate: a miss, like a rotated secret.
func TestSharedCacheTamperedEntryMisses(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	c := newSC(t, s, scSecret)
	if err := c.store(ctx, scTok()); err != nil {
		t.Fatal(err)
	}
	good := s.get(c.Key())

	var env sharedEnvelope
	if err := json.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	env.Ciphertext[3] ^= 1
	flipped, _ := json.Marshal(env)
	s.put(c.Key(), flipped)
	if got, err := c.load(ctx); got != nil || err != nil {
		t.Errorf("load of altered ciphertext = %v, %v; want nil, nil", got, err)
	}

	// Same secret, another identity: the salt and the additional data
	// (both the key name) differ.
	other, err := newSharedCache(s, scTokenURL, "another-client", scScopes, nil, scSecret)
	if err != nil {
		t.Fatal(err)
	}
	s.put(other.Key(), good)
	if got, err := other.load(ctx); got != nil || err != nil {
		t.Errorf("load of an entry copied from another key = %v, %v; want nil, nil", got, err)
	}
}

func TestSharedCacheCorruptEntriesAreMisses(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	c := newSC(t, s, scSecret)
	if err := c.store(ctx, scTok()); err != nil {
		t.Fatal(err)
	}
	good := s.get(c.Key())
	var env sharedEnvelope
	if err := json.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	envelope := func(f func(e *sharedEnvelope)) []byte {
		e := sharedEnvelope{V: env.V, Nonce: bytes.Clone(env.Nonce), Ciphertext: bytes.Clone(env.Ciphertext)}
		f(&e)
		b, _ := json.Marshal(e)
		return b
	}
	// sealed builds a well-authenticated entry around an arbitrary payload:
	// what a writer holding the secret but with a bug would produce.
	sealed := func(plain string) []byte {
		nonce := make([]byte, 12)
		b, _ := json.Marshal(sharedEnvelope{V: 1, Nonce: nonce, Ciphertext: c.aead.Seal(nil, nonce, []byte(plain), []byte(c.Key()))})
		return b
	}
	payload := func(tok string, obtained, expiry time.Time) []byte {
		b, _ := json.Marshal(storedToken{AccessToken: tok, Obtained: obtained, Expiry: expiry})
		return sealed(string(b))
	}
	tk := scTok()

	cases := map[string][]byte{
		"empty":              {},
		"garbage":            []byte("\x00\x01not json at all \xff"),
		"truncated":          good[:len(good)/2],
		"trailing data":      append(bytes.Clone(good), []byte(`{}`)...),
		"JSON null":          []byte("null"),
		"JSON array":         []byte(`[1,2,3]`),
		"unknown field":      bytes.Replace(good, []byte(`{"v":1,`), []byte(`{"v":1,"x":0,`), 1),
		"wrong version":      envelope(func(e *sharedEnvelope) { e.V = 2 }),
		"no version":         bytes.Replace(good, []byte(`"v":1,`), nil, 1),
		"short nonce":        envelope(func(e *sharedEnvelope) { e.Nonce = e.Nonce[:8] }),
		"no ciphertext":      envelope(func(e *sharedEnvelope) { e.Ciphertext = nil }),
		"ciphertext not b64": bytes.Replace(good, []byte(`"ciphertext":"`), []byte(`"ciphertext":"*`), 1),
		"oversize":           append(bytes.Clone(good), bytes.Repeat([]byte(" "), maxSharedEntryBytes)...),
		"payload not JSON":   sealed("not json " + scToken),
		"payload empty":      sealed(""),
		"no access_token":    payload("", tk.Obtained, tk.Expiry),
		"token with CRLF":    payload(scToken+"\r\nX-Evil: 1", tk.Obtained, tk.Expiry),
		"zero expiry":        payload(scToken, tk.Obtained, time.Time{}),
		"expiry before":      payload(scToken, tk.Obtained, tk.Obtained.Add(-time.Second)),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			s.put(c.Key(), raw)
			got, err := c.load(ctx)
			if got != nil || !errors.Is(err, errCacheCorrupt) {
				t.Fatalf("load = %v, %v; want nil and errCacheCorrupt", got, err)
			}
			assertClean(t, "error", err.Error())
			if !strings.Contains(err.Error(), c.Key()) {
				t.Errorf("error %q does not name the key", err)
			}
		})
	}

	// Just under the cap is not "oversize" (JSON allows trailing spaces).
	s.put(c.Key(), append(bytes.Clone(good), bytes.Repeat([]byte(" "), maxSharedEntryBytes-len(good))...))
	if got, err := c.load(ctx); err != nil || !sameToken(got, tk) {
		t.Fatalf("load of a %d-byte entry = %v, %v", maxSharedEntryBytes, got, err)
	}
}

// Two instances (two storage values on one directory) share the entry.
func TestSharedCacheTwoInstancesShareEntries(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)
	b := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)

	t1 := scTok()
	if err := a.store(ctx, t1); err != nil {
		t.Fatal(err)
	}
	if got, err := b.load(ctx); err != nil || !sameToken(got, t1) {
		t.Fatalf("B sees %+v, %v; want A's write", got, err)
	}
	t2 := &storedToken{AccessToken: "from-b", Obtained: t1.Obtained.Add(time.Hour), Expiry: t1.Expiry.Add(time.Hour)}
	if err := b.store(ctx, t2); err != nil {
		t.Fatal(err)
	}
	if got, err := a.load(ctx); err != nil || !sameToken(got, t2) {
		t.Fatalf("A sees %+v, %v; want B's write", got, err)
	}

	// Another credential set in the same storage is a separate entry.
	o, err := newSharedCache(&certmagic.FileStorage{Path: dir}, scTokenURL, scClientID, []string{"admin"}, nil, scSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := o.load(ctx); got != nil || err != nil {
		t.Fatalf("other credential set = %v, %v; want a miss", got, err)
	}
}

func TestSharedCacheLockContention(t *testing.T) {
	dir := t.TempDir()
	a := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)
	b := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)

	unlockA, err := a.lock(context.Background())
	if err != nil {
		t.Fatalf("A lock: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "locks", a.lockName+".lock")); err != nil {
		t.Errorf("no lock file where expected: %v", err)
	}

	// B gives up when its deadline passes, not at FileStorage's next 1 s
	// poll.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	start := time.Now()
	unlockB, err := b.lock(ctx)
	took := time.Since(start)
	cancel()
	if err == nil {
		unlockB()
		t.Fatal("B locked while A held the lock")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("B lock error = %v; want a context deadline error", err)
	}
	if took > 900*time.Millisecond {
		t.Errorf("B waited %v with a 50ms deadline", took)
	}

	unlockA()
	unlockA() // harmless

	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlockB, err = b.lock(ctx)
	if err != nil {
		t.Fatalf("B lock after A unlocked: %v", err)
	}
	// Now A is the one kept out.
	ctxA, cancelA := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancelA()
	if u, err := a.lock(ctxA); err == nil {
		u()
		t.Fatal("A locked while B held the lock")
	}
	unlockB()
}

// A waiter that was refused while the holder held the lock gets it once the
// holder releases it, without a new call.
func TestSharedCacheLockHandoff(t *testing.T) {
	dir := t.TempDir()
	a := newSC(t, &certmagic.FileStorage{Path: dir}, scSecret)
	refused := make(chan struct{}, 1)
	b := newSC(t, &probingStorage{FileStorage: &certmagic.FileStorage{Path: dir}, refused: refused}, scSecret)

	unlockA, err := a.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		unlock func()
		err    error
		at     time.Time
	}
	res := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // a bound, not a wait
	defer cancel()
	go func() {
		u, err := b.lock(ctx)
		res <- result{u, err, time.Now()}
	}()
	select {
	case <-refused: // B tried and was kept out: it is now waiting in Lock
	case r := <-res:
		t.Fatalf("B's lock returned (%v) while A held the lock", r.err)
	}
	released := time.Now()
	unlockA()
	r := <-res
	if r.err != nil {
		t.Fatalf("B never got the released lock: %v", r.err)
	}
	t.Logf("FileStorage handoff: B got the lock %v after A released it", r.at.Sub(released).Round(time.Millisecond))
	r.unlock()
}

func TestSharedCacheLockEndedContext(t *testing.T) {
	s := &fakeStorage{}
	c := newSC(t, s, scSecret)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.lock(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("lock with an ended context = %v; want context.Canceled", err)
	}
	if n := s.lockCalls(); n != 0 {
		t.Fatalf("storage Lock called %d times with an ended context", n)
	}
}

// A storage whose Lock ignores ctx cannot hold lock past the deadline, and
// a lock it grants late is released, not leaked.
func TestSharedCacheLockBoundWithStubbornStorage(t *testing.T) {
	s := &fakeStorage{lockGate: make(chan struct{}), unlocked: make(chan string, 1)}
	c := newSC(t, s, scSecret)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lock = %v; want context.DeadlineExceeded", err)
	}
	close(s.lockGate) // the storage finally grants the lock
	if name := <-s.unlocked; name != c.lockName {
		t.Fatalf("unlocked %q; want %q", name, c.lockName)
	}
}

func TestSharedCacheUnlock(t *testing.T) {
	s := &fakeStorage{unlockErr: errors.New("disk on fire"), unlocked: make(chan string, 2)}
	c := newSC(t, s, scSecret)
	var reported []error
	c.unlockFailed = func(err error) { reported = append(reported, err) }

	// The caller's context has ended by the time it unlocks.
	ctx, cancel := context.WithCancel(context.Background())
	unlock, err := c.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	unlock()
	unlock()
	if len(s.unlocked) != 1 {
		t.Errorf("storage Unlock called %d times; want 1", len(s.unlocked))
	}
	if s.unlockCtxErr != nil {
		t.Errorf("Unlock got an ended context: %v", s.unlockCtxErr)
	}
	if !s.unlockHadDeadline {
		t.Error("Unlock's context has no deadline")
	}
	if len(reported) != 1 || !strings.Contains(reported[0].Error(), "disk on fire") || !strings.Contains(reported[0].Error(), c.Key()) {
		t.Errorf("reported unlock errors = %v", reported)
	}
}

func TestSharedCacheStorageErrors(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("storage unreachable")
	c := newSC(t, &fakeStorage{loadErr: boom, storeErr: boom, lockErr: boom}, scSecret)

	got, err := c.load(ctx)
	if got != nil || !errors.Is(err, boom) || errors.Is(err, errCacheCorrupt) || !strings.Contains(err.Error(), c.Key()) {
		t.Errorf("load = %v, %v; want the storage error with the key", got, err)
	}
	if err := c.store(ctx, scTok()); !errors.Is(err, boom) || !strings.Contains(err.Error(), c.Key()) {
		t.Errorf("store = %v; want the storage error with the key", err)
	} else {
		assertClean(t, "store error", err.Error())
	}
	if _, err := c.lock(ctx); !errors.Is(err, boom) {
		t.Errorf("lock = %v; want the storage error", err)
	}

	// A wrapped not-exist (as os.ReadFile returns) is a miss.
	c = newSC(t, &fakeStorage{loadErr: &fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}}, scSecret)
	if got, err := c.load(ctx); got != nil || err != nil {
		t.Errorf("load with a not-exist error = %v, %v; want nil, nil", got, err)
	}
}

func TestSharedCacheStoreRefuses(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	c := newSC(t, s, scSecret)
	huge := &storedToken{AccessToken: strings.Repeat("A", maxSharedEntryBytes), Obtained: scTok().Obtained, Expiry: scTok().Expiry}
	tk := scTok()
	for name, tok := range map[string]*storedToken{
		"nil":        nil,
		"empty":      {},
		"huge":       huge,
		"CRLF":       {AccessToken: "AAAA\r\nX: y", Obtained: tk.Obtained, Expiry: tk.Expiry},
		"no expiry":  {AccessToken: "AAAA", Obtained: tk.Obtained},
		"expired":    {AccessToken: "AAAA", Obtained: tk.Obtained, Expiry: tk.Obtained},
		"year 10000": {AccessToken: "AAAA", Obtained: tk.Obtained, Expiry: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		err := c.store(ctx, tok)
		if err == nil {
			t.Errorf("%s: store succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), "AAAA") {
			t.Errorf("%s: error quotes the token: %v", name, err)
		}
	}
	if s.get(c.Key()) != nil {
		t.Error("a refused token was written")
	}
}

func TestSharedCacheKeyName(t *testing.T) {
	key := sharedCacheKey(scTokenURL, scClientID, scScopes, nil)
	// Golden values, computed outside Go as the first 16 bytes of
	// SHA-256({"d":"desko_auth token cache key v1","token_url":…,
	// "client_id":…,"scopes":[…]}) with encoding/json's escaping of &, <
	// and >. Changing them orphans every fleet's entry.
	const golden = "desko_auth/tokens/3794651ab22bc1df3231dd170b21da6d.json"
	if key != golden {
		t.Errorf("key = %s; want %s", key, golden)
	}
	const golden2 = "desko_auth/tokens/9f9b46e12288172f02e0f8c0e5a9866e.json"
	if k := sharedCacheKey("https://auth.example.test/token?a=1&b=<2>", "c", nil, nil); k != golden2 {
		t.Errorf("key = %s; want %s", k, golden2)
	}
	if !regexp.MustCompile(`^desko_auth/tokens/[0-9a-f]{32}\.json$`).MatchString(key) {
		t.Errorf("key %q has the wrong shape", key)
	}
	for _, secret := range []string{scSecret, "other", strings.Repeat("x", 200)} {
		c, err := newSharedCache(&fakeStorage{}, scTokenURL, scClientID, scScopes, nil, secret)
		if err != nil {
			t.Fatal(err)
		}
		if c.Key() != key {
			t.Errorf("Key() with secret #%d = %s; want %s", len(secret), c.Key(), key)
		}
		if strings.ContainsAny(c.lockName, "/") || !strings.HasPrefix(c.lockName, "desko_auth_token_") {
			t.Errorf("lock name %q", c.lockName)
		}
	}

	same := [][]string{{"write", "read"}, {"read write"}, {" read ", "write", "read"}}
	for _, sc := range same {
		if k := sharedCacheKey(scTokenURL, scClientID, sc, nil); k != key {
			t.Errorf("scopes %q give %s; want %s (same scope set)", sc, k, key)
		}
	}
	if sharedCacheKey("", scClientID, nil, nil) != sharedCacheKey(DefaultTokenURL, scClientID, []string{}, nil) {
		t.Error("empty token URL or nil scopes are not the defaults")
	}
	// Extra parameters or headers (an audience, a tenant) make another
	// token: another entry. No extra is the same as an empty one.
	aud1 := sharedCacheKey(scTokenURL, scClientID, scScopes, map[string]string{"param:audience": "https://a.example"})
	aud2 := sharedCacheKey(scTokenURL, scClientID, scScopes, map[string]string{"param:audience": "https://b.example"})
	if aud1 == key || aud2 == key || aud1 == aud2 {
		t.Errorf("extra identity ignored: %s %s %s", key, aud1, aud2)
	}
	if sharedCacheKey(scTokenURL, scClientID, scScopes, map[string]string{}) != key {
		t.Error("an empty extra identity changed the key")
	}

	distinct := map[string][3]any{}
	for _, id := range [][3]any{
		{scTokenURL, scClientID, scScopes},
		{scTokenURL + "/", scClientID, scScopes},
		{"https://other.example.test/token", scClientID, scScopes},
		{scTokenURL, scClientID + "x", scScopes},
		{scTokenURL, scClientID, []string{"read"}},
		{scTokenURL, scClientID, []string{}},
		// Field boundaries cannot be shifted.
		{scTokenURL, "a b", []string{}},
		{scTokenURL, "a", []string{"b"}},
		{scTokenURL + "a", "", nil},
	} {
		k := sharedCacheKey(id[0].(string), id[1].(string), toStrings(id[2]), nil)
		if prev, dup := distinct[k]; dup {
			t.Errorf("%v and %v share key %s", prev, id, k)
		}
		distinct[k] = id
	}
}

func toStrings(v any) []string {
	if v == nil {
		return nil
	}
	return v.([]string)
}

func TestSharedCacheNewErrorsAndPrinting(t *testing.T) {
	for name, f := range map[string]func() (*sharedCache, error){
		"nil storage": func() (*sharedCache, error) { return newSharedCache(nil, scTokenURL, scClientID, nil, nil, scSecret) },
		"no client id": func() (*sharedCache, error) {
			return newSharedCache(&fakeStorage{}, scTokenURL, "", nil, nil, scSecret)
		},
		"no secret": func() (*sharedCache, error) {
			return newSharedCache(&fakeStorage{}, scTokenURL, scClientID, nil, nil, "")
		},
	} {
		if c, err := f(); err == nil || c != nil {
			t.Errorf("%s: newSharedCache = %v, %v; want an error", name, c, err)
		}
	}
	c := newSC(t, &fakeStorage{}, scSecret)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, c)
		assertClean(t, verb, out)
		if !strings.Contains(out, c.Key()) {
			t.Errorf("%s of the cache = %q; want its key", verb, out)
		}
	}
}

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

func (s *fakeStorage) get(key string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.data[key])
}

func (s *fakeStorage) put(key string, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.data == nil {
		s.data = map[string][]byte{}
	}
	s.data[key] = bytes.Clone(v)
}

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
