package deskoauth

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

// This file is the storage layer of cluster mode: the instances of a fleet
// that share a certmagic.Storage share one token per credential set through
// it. Like the engine, it has no Caddy imports.
//
// An entry is encrypted with a key derived from the client secret, so that
// whoever can read the storage but does not know the secret learns nothing
// from it (neither the token nor its expiry), and an entry written under a
// secret that has since been rotated is simply a miss.

// Shared cache layout and limits.
const (
	// sharedCachePrefix is the storage "directory" of the entries.
	sharedCachePrefix = "desko_auth/tokens/"
	// sharedCacheLockPrefix prefixes the lock names. Lock names are flat
	// (no '/'): certmagic.FileStorage strips slashes from them anyway.
	sharedCacheLockPrefix = "desko_auth_token_"
	// sharedCacheVersion is the envelope format version ("v").
	sharedCacheVersion = 1
	// sharedCacheHKDFInfo is the HKDF info of the entry encryption key.
	sharedCacheHKDFInfo = "desko_auth token cache v1"
	// sharedCacheIdentityDomain separates the key name hash from any other
	// use of SHA-256 over similar data.
	sharedCacheIdentityDomain = "desko_auth token cache key v1"
	// maxSharedEntryBytes caps the size of an entry: a larger one is
	// corrupt (load rejects it from its Stat size, before reading it), and
	// store refuses to write one. An entry is the JSON envelope (about 60
	// bytes) around the base64 of the AES-GCM sealed payload: the token
	// and two RFC 3339 times (about 110 bytes) padded to a multiple of
	// sharedCachePadding, plus a 16-byte tag. 16 KiB holds a token of up to
	// about 11.9 KB, more than upstreams accept in one header line (8 KiB
	// is common); a larger token is simply not shared.
	maxSharedEntryBytes = 16 << 10
	// sharedCachePadding: the plaintext is padded with JSON whitespace to a
	// multiple of this many bytes so that the ciphertext's length says
	// little about the token's length.
	sharedCachePadding = 256
	// sharedCacheUnlockTimeout bounds the context given to Storage.Unlock.
	sharedCacheUnlockTimeout = 5 * time.Second
	// sharedCacheOpTimeout bounds a storage call whose caller set no
	// deadline (the engine always sets one, see storageWait).
	sharedCacheOpTimeout = 5 * time.Second
)

// errCacheCorrupt is returned (wrapped) by sharedCache.load when an entry
// exists but cannot be decoded: not the envelope format, an unknown version,
// larger than maxSharedEntryBytes, or a payload that decrypts but is not a
// usable token. The caller should treat it as a miss and warn: nothing this
// plugin writes ever looks like that.
var errCacheCorrupt = errors.New("shared token cache entry is corrupt")

// sharedEnvelope is the stored form of an entry. Nonce and Ciphertext are
// base64 (standard encoding, as encoding/json does for []byte).
type sharedEnvelope struct {
	V          int    `json:"v"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
}

// sharedCache is one credential set's entry in a certmagic.Storage. It is
// safe for concurrent use.
type sharedCache struct {
	storage  certmagic.Storage
	key      string // storage key of the entry
	lockName string
	aead     cipher.AEAD // AES-256-GCM under the key derived from the secret

	// gate runs the storage calls (see storageGate). It is shared with the
	// sharedCache this one replaces on the same engine (setShared), so that
	// a reload does not start a second call into a wedged storage.
	gate *storageGate
	// unlockTimeout bounds the context given to Storage.Unlock
	// (sharedCacheUnlockTimeout; tests shorten it).
	unlockTimeout time.Duration

	// unlockFailed, if set, is called when releasing the lock fails. A lock
	// that cannot be released blocks the fleet until the storage considers
	// it stale (certmagic.FileStorage: never, while this process lives,
	// because it keeps refreshing the lock file), so it is worth a log
	// line. The error holds neither the secret nor a token.
	unlockFailed func(error)
}

// newSharedCache returns the shared cache entry of the credential set
// identified by tokenURL, clientID and scopes in storage. The entry's key
// name is derived from that identity only (see sharedCacheKey); its
// encryption key is derived from secret. An empty tokenURL means
// DefaultTokenURL, as in the engine.
func newSharedCache(storage certmagic.Storage, tokenURL, clientID string, scopes []string, extra map[string]string, secret string) (*sharedCache, error) {
	if storage == nil {
		return nil, errors.New("shared token cache: no storage")
	}
	if clientID == "" {
		return nil, errors.New("shared token cache: client_id is required")
	}
	if secret == "" {
		return nil, errors.New("shared token cache: client_secret is required")
	}
	key := sharedCacheKey(tokenURL, clientID, scopes, extra)
	ek, err := hkdf.Key(sha256.New, []byte(secret), []byte(key), sharedCacheHKDFInfo, 32)
	if err != nil {
		// Only FIPS 140-only mode fails here (secret shorter than 112
		// bits); hkdf's message does not quote the secret.
		return nil, fmt.Errorf("shared token cache: deriving the encryption key: %w", err)
	}
	block, err := aes.NewCipher(ek)
	if err != nil {
		return nil, fmt.Errorf("shared token cache: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("shared token cache: %w", err)
	}
	return &sharedCache{
		storage:  storage,
		key:      key,
		lockName: sharedCacheLockPrefix + strings.TrimSuffix(strings.TrimPrefix(key, sharedCachePrefix), ".json"),
		aead:     aead,
		gate:     newStorageGate(),

		unlockTimeout: sharedCacheUnlockTimeout,
	}, nil
}

// sharedCacheKey returns the storage key of a credential set's entry:
// desko_auth/tokens/<hex of the first 16 bytes of a SHA-256>.json. The hash
// covers an unambiguous (JSON) encoding of the token URL (empty means
// DefaultTokenURL), the client ID and the scope set, but not the secret, so
// that a rotated secret lands on the same entry and overwrites it. Scopes
// are compared as the token request sends them, as an order-independent
// set of space-separated words (RFC 6749 §3.3): ["b a"], ["a","b"] and
// ["b","a","a"] are the same. extra holds whatever else makes the server
// issue a different token (extra parameters such as audience, extra
// headers such as a tenant); nil for none.
func sharedCacheKey(tokenURL, clientID string, scopes []string, extra map[string]string) string {
	if tokenURL == "" {
		tokenURL = DefaultTokenURL
	}
	words := strings.Fields(strings.Join(scopes, " "))
	slices.Sort(words)
	words = slices.Compact(words)
	if words == nil {
		words = []string{}
	}
	id, err := json.Marshal(struct {
		Domain   string            `json:"d"`
		TokenURL string            `json:"token_url"`
		ClientID string            `json:"client_id"`
		Scopes   []string          `json:"scopes"`
		Extra    map[string]string `json:"extra,omitempty"`
	}{sharedCacheIdentityDomain, tokenURL, clientID, words, extra})
	if err != nil {
		// Strings and a slice of strings always marshal.
		panic("shared token cache: encoding the identity: " + err.Error())
	}
	sum := sha256.Sum256(id)
	return sharedCachePrefix + hex.EncodeToString(sum[:16]) + ".json"
}

// Key returns the storage key of the entry.
func (c *sharedCache) Key() string { return c.key }

// String identifies the entry without revealing anything secret.
func (c *sharedCache) String() string { return "shared token cache " + c.key }

// GoString keeps %#v from printing the cipher's internals.
func (c *sharedCache) GoString() string { return fmt.Sprintf("&sharedCache{key:%q}", c.key) }

// load reads the entry.
//
//   - No entry: nil, nil.
//   - An entry that does not authenticate under this secret (written before
//     the secret was rotated, or altered in storage, which AES-GCM cannot
//     tell apart): nil, nil. The next store overwrites it.
//   - An entry that cannot be decoded: nil and an error wrapping
//     errCacheCorrupt. It is a miss too, but worth a warning.
//   - Any other storage error: nil and the error, wrapped with the key.
//
// Bounds: load asks the storage for the entry's size (Stat) and does not
// read an entry larger than maxSharedEntryBytes (errCacheCorrupt); an entry
// read larger than that anyway (a storage whose Stat fails or says 0, or an
// entry replaced between the two calls) is rejected too. The calls run
// through the gate: load returns when ctx ends at the latest, with an error
// wrapping ctx.Err(), and at once, with one wrapping errStorageStuck, while
// an earlier call is stuck.
//
// A token is returned whatever its expiry: judging it is the caller's job.
func (c *sharedCache) load(ctx context.Context) (*storedToken, error) {
	var (
		raw     []byte
		missing bool
		size    int64 // the Stat size, if over the limit
	)
	err := c.call(ctx, "load", func(ctx context.Context) error {
		info, err := c.storage.Stat(ctx, c.key)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = true
			return nil
		case err == nil && info.Size > maxSharedEntryBytes:
			size = info.Size
			return nil
		}
		// Any other Stat error: Load has the last word.
		raw, err = c.storage.Load(ctx, c.key)
		if errors.Is(err, fs.ErrNotExist) {
			missing = true
			return nil
		}
		return err
	}, nil)
	switch {
	case err != nil:
		return nil, fmt.Errorf("loading shared token cache entry %s: %w", c.key, err)
	case missing:
		return nil, nil
	case size > 0:
		return nil, c.corrupt(fmt.Sprintf("entry is %d bytes, more than %d", size, maxSharedEntryBytes))
	}
	plain, ok, err := c.open(raw)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, nil // another secret
	}
	var t storedToken
	if err := json.Unmarshal(plain, &t); err != nil {
		// The decoder's message could quote part of the payload.
		return nil, c.corrupt("payload is not a JSON token")
	}
	if why := t.invalid(); why != "" {
		return nil, c.corrupt("payload: " + why)
	}
	return &t, nil
}

// open decodes and decrypts an envelope. ok is false, with a nil error,
// when the envelope is well formed but does not authenticate.
func (c *sharedCache) open(raw []byte) (plain []byte, ok bool, err error) {
	if len(raw) > maxSharedEntryBytes {
		return nil, false, c.corrupt(fmt.Sprintf("entry is %d bytes, more than %d", len(raw), maxSharedEntryBytes))
	}
	var env sharedEnvelope
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, false, c.corrupt("entry is not a JSON envelope")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false, c.corrupt("entry has data after the JSON envelope")
	}
	switch {
	case env.V != sharedCacheVersion:
		return nil, false, c.corrupt(fmt.Sprintf("entry has version %d, not %d", env.V, sharedCacheVersion))
	case len(env.Nonce) != c.aead.NonceSize():
		return nil, false, c.corrupt(fmt.Sprintf("entry's nonce is %d bytes, not %d", len(env.Nonce), c.aead.NonceSize()))
	case len(env.Ciphertext) < c.aead.Overhead():
		return nil, false, c.corrupt("entry's ciphertext is shorter than its tag")
	}
	plain, err = c.aead.Open(nil, env.Nonce, env.Ciphertext, []byte(c.key))
	if err != nil {
		return nil, false, nil
	}
	return plain, true, nil
}

func (c *sharedCache) corrupt(why string) error {
	return fmt.Errorf("%w: %s: %s", errCacheCorrupt, c.key, why)
}

// store writes t as the entry, replacing any previous one. It is bounded
// like load.
func (c *sharedCache) store(ctx context.Context, t *storedToken) error {
	if t == nil {
		return errors.New("shared token cache: refusing to store a nil token")
	}
	if why := t.invalid(); why != "" {
		return errors.New("shared token cache: refusing to store an unusable token: " + why)
	}
	plain, err := json.Marshal(t)
	if err != nil {
		// Only a time outside years 0-9999 fails; the message quotes no token.
		return fmt.Errorf("shared token cache: encoding the entry: %w", err)
	}
	if n := len(plain) % sharedCachePadding; n != 0 {
		plain = append(plain, bytes.Repeat([]byte{' '}, sharedCachePadding-n)...)
	}
	nonce := make([]byte, c.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("shared token cache: generating a nonce: %w", err)
	}
	raw, err := json.Marshal(sharedEnvelope{
		V:          sharedCacheVersion,
		Nonce:      nonce,
		Ciphertext: c.aead.Seal(nil, nonce, plain, []byte(c.key)),
	})
	if err != nil {
		return fmt.Errorf("shared token cache: encoding the envelope: %w", err)
	}
	if len(raw) > maxSharedEntryBytes {
		return fmt.Errorf("shared token cache: token too large to share (entry would be %d bytes, limit %d)", len(raw), maxSharedEntryBytes)
	}
	err = c.call(ctx, "store", func(ctx context.Context) error {
		return c.storage.Store(ctx, c.key, raw)
	}, nil)
	if err != nil {
		return fmt.Errorf("storing shared token cache entry %s: %w", c.key, err)
	}
	return nil
}

// succeed takes over the gate of the entry this one replaces after a
// reload: the storage calls of one engine go through one gate, so a call
// stuck in a wedged storage is not joined by a new one each time a config
// is loaded.
func (c *sharedCache) succeed(prev sharedStore) {
	if p, ok := prev.(*sharedCache); ok && p.key == c.key {
		c.gate = p.gate
	}
}

var _ sharedStore = (*sharedCache)(nil)
