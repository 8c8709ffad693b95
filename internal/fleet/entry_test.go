package fleet

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

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

func TestEntryRoundTrip(t *testing.T) {
	ctx := context.Background()
	e := newEntry(t, &certmagic.FileStorage{Path: t.TempDir()})
	c := testCreds()

	got, err := e.Load(ctx, c)
	if got != nil || err != nil {
		t.Fatalf("Load of an empty storage = %v, %v; want nil, nil", got, err)
	}
	want := storedTok()
	if err := e.Save(ctx, c, want); err != nil {
		t.Fatalf("Save: %v", err)
	}
	got, err = e.Load(ctx, c)
	if err != nil || !sameToken(got, want) {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, want)
	}

	// A second Save replaces the first; times with a monotonic reading and
	// a zone other than UTC survive (as instants).
	now := time.Now()
	next := &token.Stored{AccessToken: "second-token", Obtained: now, Expiry: now.Add(time.Hour).In(time.FixedZone("BRT", -3*3600))}
	if err := e.Save(ctx, c, next); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if got, err = e.Load(ctx, c); err != nil || !sameToken(got, next) {
		t.Fatalf("Load after overwrite = %+v, %v; want %+v", got, err, next)
	}
}

// The stored bytes are an opaque envelope: no token, no secret, no time.
func TestEntryAtRestRevealsNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := newEntry(t, &certmagic.FileStorage{Path: dir})
	c := testCreds()
	tok := storedTok()
	if err := e.Save(ctx, c, tok); err != nil {
		t.Fatalf("Save: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(testKey())))
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
	needles := []string{testToken, testSecret, testClientID, "access_token", "expiry", "obtained"}
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
	if (len(ct)-16)%padding != 0 {
		t.Errorf("ciphertext is %d bytes; want a multiple of %d plus the 16-byte tag", len(ct), padding)
	}

	// Writing the same token again uses a fresh nonce.
	if err := e.Save(ctx, c, tok); err != nil {
		t.Fatalf("Save: %v", err)
	}
	raw2, _ := os.ReadFile(filepath.Join(dir, filepath.FromSlash(testKey())))
	if bytes.Equal(raw, raw2) {
		t.Error("two writes of the same token gave the same bytes")
	}
	if len(raw) != len(raw2) {
		t.Errorf("entry sizes differ for the same token: %d, %d", len(raw), len(raw2))
	}
}

// A rotated secret reads the old entry as a miss, not as an error, and its
// next Save replaces it.
func TestEntryRotatedSecretMisses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	old := newEntry(t, &certmagic.FileStorage{Path: dir})
	rotated := newEntry(t, &certmagic.FileStorage{Path: dir})
	oldCreds := testCreds()
	rotatedCreds := &token.Credentials{ClientID: testClientID, ClientSecret: testSecret + "-rotated"}
	if ko, kr := sealedFor(t, old, oldCreds).key, sealedFor(t, rotated, rotatedCreds).key; ko != kr {
		t.Fatalf("the key depends on the secret: %s vs %s", ko, kr)
	}
	if err := old.Save(ctx, oldCreds, storedTok()); err != nil {
		t.Fatal(err)
	}
	if got, err := rotated.Load(ctx, rotatedCreds); got != nil || err != nil {
		t.Fatalf("Load under another secret = %v, %v; want nil, nil", got, err)
	}
	fresh := &token.Stored{AccessToken: "after-rotation", Obtained: storedTok().Obtained, Expiry: storedTok().Expiry}
	if err := rotated.Save(ctx, rotatedCreds, fresh); err != nil {
		t.Fatal(err)
	}
	if got, err := rotated.Load(ctx, rotatedCreds); err != nil || !sameToken(got, fresh) {
		t.Fatalf("Load after overwrite = %+v, %v", got, err)
	}
	if got, err := old.Load(ctx, oldCreds); got != nil || err != nil {
		t.Fatalf("old secret reading the new entry = %v, %v; want nil, nil", got, err)
	}
}

// One Entry follows the credentials of each call: a source whose secret
// is rotated (a new *Credentials) reads and writes under the new secret at
// once, and extra params and headers (an audience, a tenant) select
// another entry, with header names compared canonically.
func TestEntryFollowsCredentials(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	e := newEntry(t, s)
	c1 := testCreds()
	c2 := &token.Credentials{ClientID: testClientID, ClientSecret: testSecret + "-rotated"}

	if err := e.Save(ctx, c1, storedTok()); err != nil {
		t.Fatal(err)
	}
	if got, err := e.Load(ctx, c1); err != nil || !sameToken(got, storedTok()) {
		t.Fatalf("Load under the same credentials = %+v, %v", got, err)
	}
	if got, err := e.Load(ctx, c2); got != nil || err != nil {
		t.Fatalf("Load under the rotated secret = %v, %v; want nil, nil", got, err)
	}
	fresh := &token.Stored{AccessToken: "after-rotation", Obtained: storedTok().Obtained, Expiry: storedTok().Expiry}
	if err := e.Save(ctx, c2, fresh); err != nil {
		t.Fatal(err)
	}
	// Back to the first pointer: its secret no longer reads the entry.
	if got, err := e.Load(ctx, c1); got != nil || err != nil {
		t.Fatalf("Load under the old secret after the rotation = %v, %v; want nil, nil", got, err)
	}
	if got, err := e.Load(ctx, c2); err != nil || !sameToken(got, fresh) {
		t.Fatalf("Load under the rotated secret = %+v, %v; want %+v", got, err, fresh)
	}
	// A new pointer to equal credentials reads the same entry.
	if got, err := e.Load(ctx, &token.Credentials{ClientID: c2.ClientID, ClientSecret: c2.ClientSecret}); err != nil || !sameToken(got, fresh) {
		t.Fatalf("Load under equal credentials = %+v, %v; want %+v", got, err, fresh)
	}

	keyOf := func(c *token.Credentials) string { return sealedFor(t, e, c).key }
	withID := func(params, headers map[string]string) *token.Credentials {
		return &token.Credentials{ClientID: testClientID, ClientSecret: testSecret, Params: params, Headers: headers}
	}
	plain := keyOf(c1)
	aud := keyOf(withID(map[string]string{"audience": "https://a.example"}, nil))
	tenant := keyOf(withID(nil, map[string]string{"x-tenant": "acme"}))
	tenantCanon := keyOf(withID(nil, map[string]string{"X-Tenant": "acme"}))
	paramNotHeader := keyOf(withID(map[string]string{"X-Tenant": "acme"}, nil))
	if plain != testKey() {
		t.Errorf("key without extras = %s; want Key(…, nil) %s", plain, testKey())
	}
	if got := keyOf(withID(map[string]string{}, map[string]string{})); got != plain {
		t.Errorf("empty params and headers changed the key: %s vs %s", got, plain)
	}
	if aud == plain || tenant == plain || aud == tenant || paramNotHeader == tenant {
		t.Errorf("extra params or headers ignored: plain %s audience %s tenant %s param %s", plain, aud, tenant, paramNotHeader)
	}
	if tenant != tenantCanon {
		t.Errorf("header names are not canonical: %s vs %s", tenant, tenantCanon)
	}
	if want := Key(testTokenURL, testClientID, testScopes, map[string]string{"param:audience": "https://a.example"}); aud != want {
		t.Errorf("audience key = %s; want Key with param:audience %s", aud, want)
	}

	// Concurrent calls with different credentials each get their own.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c := c1
			if i%2 == 1 {
				c = c2
			}
			got, err := e.Load(ctx, c)
			if c == c1 && (got != nil || err != nil) {
				t.Errorf("concurrent Load under the old secret = %v, %v", got, err)
			}
			if c == c2 && (err != nil || !sameToken(got, fresh)) {
				t.Errorf("concurrent Load under the rotated secret = %+v, %v", got, err)
			}
		})
	}
	wg.Wait()
}

// Altered ciphertext and an entry moved to another credential set's key do
// not authenticate: a miss, like a rotated secret.
func TestEntryTamperedMisses(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	e := newEntry(t, s)
	c := testCreds()
	if err := e.Save(ctx, c, storedTok()); err != nil {
		t.Fatal(err)
	}
	good := s.get(testKey())

	var env envelope
	if err := json.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	env.Ciphertext[3] ^= 1
	flipped, _ := json.Marshal(env)
	s.put(testKey(), flipped)
	if got, err := e.Load(ctx, c); got != nil || err != nil {
		t.Errorf("Load of altered ciphertext = %v, %v; want nil, nil", got, err)
	}

	// Same secret, another identity: the salt and the additional data
	// (both the key name) differ.
	other := &token.Credentials{ClientID: "another-client", ClientSecret: testSecret}
	otherKey := sealedFor(t, e, other).key
	s.put(otherKey, good)
	if got, err := e.Load(ctx, other); got != nil || err != nil {
		t.Errorf("Load of an entry copied from another key = %v, %v; want nil, nil", got, err)
	}
}

func TestEntryCorruptIsMiss(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	e := newEntry(t, s)
	c := testCreds()
	if err := e.Save(ctx, c, storedTok()); err != nil {
		t.Fatal(err)
	}
	sl := sealedFor(t, e, c)
	good := s.get(sl.key)
	var env envelope
	if err := json.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	withEnvelope := func(f func(e *envelope)) []byte {
		e := envelope{V: env.V, Nonce: bytes.Clone(env.Nonce), Ciphertext: bytes.Clone(env.Ciphertext)}
		f(&e)
		b, _ := json.Marshal(e)
		return b
	}
	// seal builds a well-authenticated entry around an arbitrary payload:
	// what a writer holding the secret but with a bug would produce.
	seal := func(plain string) []byte {
		nonce := make([]byte, 12)
		b, _ := json.Marshal(envelope{V: 1, Nonce: nonce, Ciphertext: sl.aead.Seal(nil, nonce, []byte(plain), []byte(sl.key))})
		return b
	}
	payload := func(tok string, obtained, expiry time.Time) []byte {
		b, _ := json.Marshal(token.Stored{AccessToken: tok, Obtained: obtained, Expiry: expiry})
		return seal(string(b))
	}
	tk := storedTok()

	cases := map[string][]byte{
		"empty":              {},
		"garbage":            []byte("\x00\x01not json at all \xff"),
		"truncated":          good[:len(good)/2],
		"trailing data":      append(bytes.Clone(good), []byte(`{}`)...),
		"JSON null":          []byte("null"),
		"JSON array":         []byte(`[1,2,3]`),
		"unknown field":      bytes.Replace(good, []byte(`{"v":1,`), []byte(`{"v":1,"x":0,`), 1),
		"wrong version":      withEnvelope(func(e *envelope) { e.V = 2 }),
		"no version":         bytes.Replace(good, []byte(`"v":1,`), nil, 1),
		"short nonce":        withEnvelope(func(e *envelope) { e.Nonce = e.Nonce[:8] }),
		"no ciphertext":      withEnvelope(func(e *envelope) { e.Ciphertext = nil }),
		"ciphertext not b64": bytes.Replace(good, []byte(`"ciphertext":"`), []byte(`"ciphertext":"*`), 1),
		"oversize":           append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxEntryBytes)...),
		"payload not JSON":   seal("not json " + testToken),
		"payload empty":      seal(""),
		"no access_token":    payload("", tk.Obtained, tk.Expiry),
		"token with CRLF":    payload(testToken+"\r\nX-Evil: 1", tk.Obtained, tk.Expiry),
		"zero expiry":        payload(testToken, tk.Obtained, time.Time{}),
		"expiry before":      payload(testToken, tk.Obtained, tk.Obtained.Add(-time.Second)),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			s.put(sl.key, raw)
			got, err := e.Load(ctx, c)
			if got != nil || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load = %v, %v; want nil and ErrCorrupt", got, err)
			}
			assertClean(t, "error", err.Error())
			if !strings.Contains(err.Error(), sl.key) {
				t.Errorf("error %q does not name the key", err)
			}
		})
	}

	// Just under the cap is not "oversize" (JSON allows trailing spaces).
	s.put(sl.key, append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxEntryBytes-len(good))...))
	if got, err := e.Load(ctx, c); err != nil || !sameToken(got, tk) {
		t.Fatalf("Load of a %d-byte entry = %v, %v", MaxEntryBytes, got, err)
	}
}

// TestEntryHugeNotRead: an entry larger than the cap is a corrupt miss,
// rejected from its size without being read: with a storage that reports
// the size, and with an 800 MB sparse file in a FileStorage. One whose size
// the storage does not report is rejected after the read.
func TestEntryHugeNotRead(t *testing.T) {
	ctx := context.Background()
	const huge = 800 << 20

	t.Run("fake", func(t *testing.T) {
		s := &hugeStatStorage{size: huge}
		e := newEntry(t, s)
		got, err := e.Load(ctx, testCreds())
		if got != nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(huge)) {
			t.Fatalf("Load = %v, %v; want ErrCorrupt giving the size", got, err)
		}
		if n := s.loads.Load(); n != 0 {
			t.Errorf("the huge entry was read %d times", n)
		}
	})

	t.Run("sparse file", func(t *testing.T) {
		dir := t.TempDir()
		s := &countingFileStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
		e := newEntry(t, s)
		path := filepath.Join(dir, filepath.FromSlash(testKey()))
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
		got, err := e.Load(ctx, testCreds())
		if got != nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(huge)) {
			t.Fatalf("Load = %v, %v; want ErrCorrupt giving the size", got, err)
		}
		if n := s.loads.Load(); n != 0 {
			t.Errorf("the %d-byte entry was read %d times", huge, n)
		}
	})

	t.Run("size unknown", func(t *testing.T) {
		s := &hangingStorage{release: make(chan struct{})} // Stat says size 0
		e := newEntry(t, s)
		s.put(testKey(), bytes.Repeat([]byte(" "), MaxEntryBytes+1))
		if got, err := e.Load(ctx, testCreds()); got != nil || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Load = %v, %v; want ErrCorrupt", got, err)
		}
		if n := s.count("Load"); n != 1 {
			t.Errorf("the entry was read %d times, want 1", n)
		}
	})
}

// Two instances (two storage values on one directory) share the entry.
func TestEntryTwoInstancesShare(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newEntry(t, &certmagic.FileStorage{Path: dir})
	b := newEntry(t, &certmagic.FileStorage{Path: dir})
	c := testCreds()

	t1 := storedTok()
	if err := a.Save(ctx, c, t1); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Load(ctx, testCreds()); err != nil || !sameToken(got, t1) {
		t.Fatalf("B sees %+v, %v; want A's write", got, err)
	}
	t2 := &token.Stored{AccessToken: "from-b", Obtained: t1.Obtained.Add(time.Hour), Expiry: t1.Expiry.Add(time.Hour)}
	if err := b.Save(ctx, testCreds(), t2); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, c); err != nil || !sameToken(got, t2) {
		t.Fatalf("A sees %+v, %v; want B's write", got, err)
	}

	// Another credential set in the same storage is a separate entry.
	o, err := New(&certmagic.FileStorage{Path: dir}, testTokenURL, []string{"admin"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := o.Load(ctx, testCreds()); got != nil || err != nil {
		t.Fatalf("other credential set = %v, %v; want a miss", got, err)
	}
}

func TestEntryStorageErrors(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("storage unreachable")
	e := newEntry(t, &fakeStorage{loadErr: boom, storeErr: boom, lockErr: boom})
	c := testCreds()

	got, err := e.Load(ctx, c)
	if got != nil || !errors.Is(err, boom) || errors.Is(err, ErrCorrupt) || errors.Is(err, token.ErrStoreUnresponsive) || !strings.Contains(err.Error(), testKey()) {
		t.Errorf("Load = %v, %v; want the storage error with the key", got, err)
	}
	if err := e.Save(ctx, c, storedTok()); !errors.Is(err, boom) || !strings.Contains(err.Error(), testKey()) {
		t.Errorf("Save = %v; want the storage error with the key", err)
	} else {
		assertClean(t, "Save error", err.Error())
	}
	if _, err := e.Lock(ctx, c); !errors.Is(err, boom) || errors.Is(err, token.ErrStoreUnresponsive) {
		t.Errorf("Lock = %v; want the storage error", err)
	}

	// A wrapped not-exist (as os.ReadFile returns) is a miss.
	e = newEntry(t, &fakeStorage{loadErr: &fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}})
	if got, err := e.Load(ctx, c); got != nil || err != nil {
		t.Errorf("Load with a not-exist error = %v, %v; want nil, nil", got, err)
	}
}

func TestEntrySaveRefuses(t *testing.T) {
	ctx := context.Background()
	s := &fakeStorage{}
	e := newEntry(t, s)
	tk := storedTok()
	huge := &token.Stored{AccessToken: strings.Repeat("A", MaxEntryBytes), Obtained: tk.Obtained, Expiry: tk.Expiry}
	for name, tok := range map[string]*token.Stored{
		"nil":        nil,
		"empty":      {},
		"huge":       huge,
		"CRLF":       {AccessToken: "AAAA\r\nX: y", Obtained: tk.Obtained, Expiry: tk.Expiry},
		"no expiry":  {AccessToken: "AAAA", Obtained: tk.Obtained},
		"expired":    {AccessToken: "AAAA", Obtained: tk.Obtained, Expiry: tk.Obtained},
		"year 10000": {AccessToken: "AAAA", Obtained: tk.Obtained, Expiry: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		err := e.Save(ctx, testCreds(), tok)
		if err == nil {
			t.Errorf("%s: Save succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), "AAAA") {
			t.Errorf("%s: error quotes the token: %v", name, err)
		}
	}
	if s.get(testKey()) != nil {
		t.Error("a refused token was written")
	}
}

func TestEntryKeyName(t *testing.T) {
	key := Key(testTokenURL, testClientID, testScopes, nil)
	// Golden values, computed outside Go as the first 16 bytes of
	// SHA-256({"d":"desko_auth token cache key v1","token_url":…,
	// "client_id":…,"scopes":[…]}) with encoding/json's escaping of &, <
	// and >. Changing them orphans every fleet's entry.
	const golden = "desko_auth/tokens/3794651ab22bc1df3231dd170b21da6d.json"
	if key != golden {
		t.Errorf("key = %s; want %s", key, golden)
	}
	const golden2 = "desko_auth/tokens/9f9b46e12288172f02e0f8c0e5a9866e.json"
	if k := Key("https://auth.example.test/token?a=1&b=<2>", "c", nil, nil); k != golden2 {
		t.Errorf("key = %s; want %s", k, golden2)
	}
	if !regexp.MustCompile(`^desko_auth/tokens/[0-9a-f]{32}\.json$`).MatchString(key) {
		t.Errorf("key %q has the wrong shape", key)
	}
	e := newEntry(t, &fakeStorage{})
	for _, secret := range []string{testSecret, "other", strings.Repeat("x", 200)} {
		s := sealedFor(t, e, &token.Credentials{ClientID: testClientID, ClientSecret: secret})
		if s.key != key {
			t.Errorf("key with secret #%d = %s; want %s", len(secret), s.key, key)
		}
		if want := "desko_auth_token_3794651ab22bc1df3231dd170b21da6d"; s.lockName != want {
			t.Errorf("lock name %q; want %q (flat, no '/')", s.lockName, want)
		}
	}

	same := [][]string{{"write", "read"}, {"read write"}, {" read ", "write", "read"}}
	for _, sc := range same {
		if k := Key(testTokenURL, testClientID, sc, nil); k != key {
			t.Errorf("scopes %q give %s; want %s (same scope set)", sc, k, key)
		}
	}
	if Key("", testClientID, nil, nil) != Key(token.DefaultTokenURL, testClientID, []string{}, nil) {
		t.Error("empty token URL or nil scopes are not the defaults")
	}
	// Extra parameters or headers (an audience, a tenant) make another
	// token: another entry. No extra is the same as an empty one.
	aud1 := Key(testTokenURL, testClientID, testScopes, map[string]string{"param:audience": "https://a.example"})
	aud2 := Key(testTokenURL, testClientID, testScopes, map[string]string{"param:audience": "https://b.example"})
	if aud1 == key || aud2 == key || aud1 == aud2 {
		t.Errorf("extra identity ignored: %s %s %s", key, aud1, aud2)
	}
	if Key(testTokenURL, testClientID, testScopes, map[string]string{}) != key {
		t.Error("an empty extra identity changed the key")
	}

	type identity struct {
		tokenURL, clientID string
		scopes             []string
	}
	distinct := map[string]identity{}
	for _, id := range []identity{
		{testTokenURL, testClientID, testScopes},
		{testTokenURL + "/", testClientID, testScopes},
		{"https://other.example.test/token", testClientID, testScopes},
		{testTokenURL, testClientID + "x", testScopes},
		{testTokenURL, testClientID, []string{"read"}},
		{testTokenURL, testClientID, []string{}},
		// Field boundaries cannot be shifted.
		{testTokenURL, "a b", []string{}},
		{testTokenURL, "a", []string{"b"}},
		{testTokenURL + "a", "", nil},
	} {
		k := Key(id.tokenURL, id.clientID, id.scopes, nil)
		if prev, dup := distinct[k]; dup {
			t.Errorf("%v and %v share key %s", prev, id, k)
		}
		distinct[k] = id
	}
}

// TestEntryNewErrorsAndPrinting: New needs a storage; the credentials are
// checked by each call, before the storage is touched; printing an entry
// (after it derived a key from the secret) shows its redacted token URL
// and nothing secret.
func TestEntryNewErrorsAndPrinting(t *testing.T) {
	if e, err := New(nil, testTokenURL, nil, nil); err == nil || e != nil {
		t.Errorf("New with a nil storage = %v, %v; want an error", e, err)
	}
	ctx := context.Background()
	for name, c := range map[string]*token.Credentials{
		"no client id": {ClientSecret: testSecret},
		"no secret":    {ClientID: testClientID},
	} {
		s := &hangingStorage{release: make(chan struct{})}
		e := newEntry(t, s)
		if got, err := e.Load(ctx, c); got != nil || err == nil {
			t.Errorf("%s: Load = %v, %v; want an error", name, got, err)
		}
		if err := e.Save(ctx, c, storedTok()); err == nil {
			t.Errorf("%s: Save succeeded", name)
		}
		if _, err := e.Lock(ctx, c); err == nil {
			t.Errorf("%s: Lock succeeded", name)
		}
		for m, n := range s.counts() {
			if n != 0 {
				t.Errorf("%s: storage.%s called %d times", name, m, n)
			}
		}
	}

	const keyed = "https://auth.example.test/v1.1/oauth/token?api_key=Qm9vb29vb29vb29vb29v"
	e, err := New(&fakeStorage{}, keyed, testScopes, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Save(ctx, testCreds(), storedTok()); err != nil { // the secret is now in use
		t.Fatal(err)
	}
	check := func(what, out string) {
		t.Helper()
		assertClean(t, what, out)
		if strings.Contains(out, "Qm9vb29v") || strings.Contains(out, "api_key") {
			t.Errorf("%s of the entry = %q; holds the token URL's query", what, out)
		}
		if !strings.Contains(out, testTokenURL) {
			t.Errorf("%s of the entry = %q; want its token URL %s", what, out, testTokenURL)
		}
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		check(verb, fmt.Sprintf(verb, e))
	}
	check("String", e.String())
	check("GoString", e.GoString())
}
