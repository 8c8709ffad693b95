// Package fleet is the token store of a fleet of Caddy instances: the
// instances that share a certmagic.Storage share one token per credential
// set through it (cluster mode). An Entry implements token.Store. It
// imports certmagic, not Caddy.
//
// An entry is encrypted with a key derived from the client secret (or,
// for a client that signs with a private key and has no secret, from the
// key: token.Credentials.StoreSecret), so that whoever can read the storage
// but holds neither learns nothing from it (neither the token nor its
// expiry), and an entry written under a secret or key that has since been
// rotated is simply a miss.
package fleet

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
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// Layout and limits of the entries.
const (
	// Prefix is the storage "directory" of the entries.
	Prefix = "desko_auth/tokens/"
	// lockPrefix prefixes the lock names. Lock names are flat (no '/'):
	// certmagic.FileStorage strips slashes from them anyway.
	lockPrefix = "desko_auth_token_"
	// version is the envelope format version ("v").
	version = 1
	// hkdfInfo is the HKDF info of the entry encryption key.
	hkdfInfo = "desko_auth token cache v1"
	// identityDomain separates the key name hash from any other use of
	// SHA-256 over similar data.
	identityDomain = "desko_auth token cache key v1"
	// MaxEntryBytes caps the size of an entry: a larger one is corrupt
	// (Load rejects it from its Stat size, before reading it), and Save
	// refuses to write one. An entry is the JSON envelope (about 60 bytes)
	// around the base64 of the AES-GCM sealed payload: the token and two
	// RFC 3339 times (about 110 bytes) padded to a multiple of padding,
	// plus a 16-byte tag. 16 KiB holds a token of up to about 11.9 KB,
	// more than upstreams accept in one header line (8 KiB is common); a
	// larger token is simply not shared.
	MaxEntryBytes = 16 << 10
	// padding: the plaintext is padded with JSON whitespace to a multiple
	// of this many bytes so that the ciphertext's length says little about
	// the token's length.
	padding = 256
	// unlockTimeout bounds the context given to Storage.Unlock.
	unlockTimeout = 5 * time.Second
	// opTimeout bounds a storage call whose caller set no deadline (a
	// token.Source always sets one).
	opTimeout = 5 * time.Second
)

// ErrCorrupt is returned (wrapped) by Load when an entry exists but cannot
// be decoded: not the envelope format, an unknown version, larger than
// MaxEntryBytes, or a payload that decrypts but is not a usable token. The
// caller should treat it as a miss and warn: nothing this package writes
// ever looks like that.
var ErrCorrupt = errors.New("shared token cache entry is corrupt")

// envelope is the stored form of an entry. Nonce and Ciphertext are base64
// (standard encoding, as encoding/json does for []byte).
type envelope struct {
	V          int    `json:"v"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
}

// Entry is one token source's entry in a certmagic.Storage: its name and
// its encryption key follow the credentials each call is given. It is safe
// for concurrent use.
type Entry struct {
	storage  certmagic.Storage
	tokenURL string
	scopes   []string

	// gate runs the storage calls (see gate). It is shared with the Entry
	// this one succeeds on the same source (Succeed), so that a reload
	// does not start a second call into a wedged storage.
	gate *gate
	// unlockTimeout bounds the context given to Storage.Unlock (tests
	// shorten it).
	unlockTimeout time.Duration
	// unlockFailed, if set, is called when releasing the lock fails. A lock
	// that cannot be released blocks the fleet until the storage considers
	// it stale (certmagic.FileStorage: never, while this process lives,
	// because it keeps refreshing the lock file), so it is worth a log
	// line. The error holds neither the secret nor a token.
	unlockFailed func(error)

	mu   sync.Mutex
	last *sealed // for the last credentials seen
}

// sealed is what an entry is, under one set of credentials.
type sealed struct {
	creds    *token.Credentials
	key      string // storage key of the entry
	lockName string
	aead     cipher.AEAD // AES-256-GCM under the key derived from the secret
}

// New returns the entry of a source for tokenURL and scopes in storage
// (an empty tokenURL means token.DefaultTokenURL). onUnlockFailure, if not
// nil, hears of locks that could not be released.
func New(storage certmagic.Storage, tokenURL string, scopes []string, onUnlockFailure func(error)) (*Entry, error) {
	if storage == nil {
		return nil, errors.New("shared token cache: no storage")
	}
	return &Entry{
		storage:       storage,
		tokenURL:      tokenURL,
		scopes:        scopes,
		gate:          newGate(),
		unlockTimeout: unlockTimeout,
		unlockFailed:  onUnlockFailure,
	}, nil
}

// sealFor returns the entry's name and cipher under c.
func (e *Entry) sealFor(c *token.Credentials) (*sealed, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last != nil && e.last.creds == c {
		return e.last, nil
	}
	if c.ClientID == "" {
		return nil, errors.New("shared token cache: client_id is required")
	}
	secret := c.StoreSecret()
	if len(secret) == 0 {
		return nil, errors.New("shared token cache: a client secret or a client key is required")
	}
	key := Key(e.tokenURL, c.ClientID, e.scopes, identity(c))
	ek, err := hkdf.Key(sha256.New, secret, []byte(key), hkdfInfo, 32)
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
	e.last = &sealed{
		creds:    c,
		key:      key,
		lockName: lockPrefix + strings.TrimSuffix(strings.TrimPrefix(key, Prefix), ".json"),
		aead:     aead,
	}
	return e.last, nil
}

// identity is what, besides the token URL, client ID and scopes, sets apart
// the tokens of a credential set: its extra parameters and token request
// headers (an audience, a tenant…).
func identity(c *token.Credentials) map[string]string {
	if len(c.Params) == 0 && len(c.Headers) == 0 {
		return nil
	}
	id := map[string]string{}
	for k, v := range c.Params {
		id["param:"+k] = v
	}
	for k, v := range c.Headers {
		id["header:"+http.CanonicalHeaderKey(k)] = v
	}
	return id
}

// Key returns the storage key of a credential set's entry:
// desko_auth/tokens/<hex of the first 16 bytes of a SHA-256>.json. The hash
// covers an unambiguous (JSON) encoding of the token URL (empty means
// token.DefaultTokenURL), the client ID and the scope set, but not the
// secret, so that a rotated secret lands on the same entry and overwrites
// it. Scopes are compared as the token request sends them, as an
// order-independent set of space-separated words (RFC 6749 §3.3): ["b a"],
// ["a","b"] and ["b","a","a"] are the same. extra holds whatever else makes
// the server issue a different token (extra parameters such as audience,
// extra headers such as a tenant); nil for none.
func Key(tokenURL, clientID string, scopes []string, extra map[string]string) string {
	if tokenURL == "" {
		tokenURL = token.DefaultTokenURL
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
	}{identityDomain, tokenURL, clientID, words, extra})
	if err != nil {
		// Strings and a slice of strings always marshal.
		panic("shared token cache: encoding the identity: " + err.Error())
	}
	sum := sha256.Sum256(id)
	return Prefix + hex.EncodeToString(sum[:16]) + ".json"
}

// String identifies the entry without revealing anything secret.
func (e *Entry) String() string { return "shared token cache for " + token.RedactURL(e.tokenURL) }

// GoString keeps %#v from printing the cipher's internals.
func (e *Entry) GoString() string {
	return fmt.Sprintf("&fleet.Entry{tokenURL:%q}", token.RedactURL(e.tokenURL))
}

// Load reads the entry under c.
//
//   - No entry: nil, nil.
//   - An entry that does not authenticate under this secret (written before
//     the secret was rotated, or altered in storage, which AES-GCM cannot
//     tell apart): nil, nil. The next Save overwrites it.
//   - An entry that cannot be decoded: nil and an error wrapping ErrCorrupt.
//     It is a miss too, but worth a warning.
//   - Any other storage error: nil and the error, wrapped with the key.
//
// Bounds: Load asks the storage for the entry's size (Stat) and does not
// read an entry larger than MaxEntryBytes (ErrCorrupt); an entry read
// larger than that anyway (a storage whose Stat fails or says 0, or an
// entry replaced between the two calls) is rejected too. The calls run
// through the gate: Load returns when ctx ends at the latest, with an error
// wrapping ctx.Err(), and at once, with one wrapping
// token.ErrStoreUnresponsive, while the gate leaves the storage alone after
// a call that did not return (see gate).
//
// A token is returned whatever its expiry: judging it is the caller's job.
func (e *Entry) Load(ctx context.Context, c *token.Credentials) (*token.Stored, error) {
	s, err := e.sealFor(c)
	if err != nil {
		return nil, err
	}
	var (
		raw     []byte
		missing bool
		size    int64 // the Stat size, if over the limit
	)
	err = e.call(ctx, "load", func(ctx context.Context) error {
		info, err := e.storage.Stat(ctx, s.key)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = true
			return nil
		case err == nil && info.Size > MaxEntryBytes:
			size = info.Size
			return nil
		}
		// Any other Stat error: Load has the last word.
		raw, err = e.storage.Load(ctx, s.key)
		if errors.Is(err, fs.ErrNotExist) {
			missing = true
			return nil
		}
		return err
	}, nil)
	switch {
	case err != nil:
		return nil, fmt.Errorf("loading shared token cache entry %s: %w", s.key, err)
	case missing:
		return nil, nil
	case size > 0:
		return nil, s.corrupt(fmt.Sprintf("entry is %d bytes, more than %d", size, MaxEntryBytes))
	}
	plain, ok, err := s.open(raw)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, nil // another secret
	}
	var t token.Stored
	if err := json.Unmarshal(plain, &t); err != nil {
		// The decoder's message could quote part of the payload.
		return nil, s.corrupt("payload is not a JSON token")
	}
	if why := invalid(&t); why != "" {
		return nil, s.corrupt("payload: " + why)
	}
	return &t, nil
}

// invalid says what makes t unusable, or "" if nothing does. The answer
// never quotes the token.
func invalid(t *token.Stored) string {
	switch {
	case t.AccessToken == "":
		return "no access_token"
	case !token.ValidValue(t.AccessToken):
		return "access_token contains characters not allowed in an HTTP header"
	case t.Obtained.IsZero() || t.Expiry.IsZero():
		return "obtained or expiry is missing"
	case !t.Expiry.After(t.Obtained):
		return "expiry is not after obtained"
	}
	return ""
}

// open decodes and decrypts an envelope. ok is false, with a nil error,
// when the envelope is well formed but does not authenticate.
func (s *sealed) open(raw []byte) (plain []byte, ok bool, err error) {
	if len(raw) > MaxEntryBytes {
		return nil, false, s.corrupt(fmt.Sprintf("entry is %d bytes, more than %d", len(raw), MaxEntryBytes))
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, false, s.corrupt("entry is not a JSON envelope")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false, s.corrupt("entry has data after the JSON envelope")
	}
	switch {
	case env.V != version:
		return nil, false, s.corrupt(fmt.Sprintf("entry has version %d, not %d", env.V, version))
	case len(env.Nonce) != s.aead.NonceSize():
		return nil, false, s.corrupt(fmt.Sprintf("entry's nonce is %d bytes, not %d", len(env.Nonce), s.aead.NonceSize()))
	case len(env.Ciphertext) < s.aead.Overhead():
		return nil, false, s.corrupt("entry's ciphertext is shorter than its tag")
	}
	plain, err = s.aead.Open(nil, env.Nonce, env.Ciphertext, []byte(s.key))
	if err != nil {
		return nil, false, nil
	}
	return plain, true, nil
}

func (s *sealed) corrupt(why string) error {
	return fmt.Errorf("%w: %s: %s", ErrCorrupt, s.key, why)
}

// Save writes t as the entry under c, replacing any previous one. It is
// bounded like Load.
func (e *Entry) Save(ctx context.Context, c *token.Credentials, t *token.Stored) error {
	if t == nil {
		return errors.New("shared token cache: refusing to store a nil token")
	}
	if why := invalid(t); why != "" {
		return errors.New("shared token cache: refusing to store an unusable token: " + why)
	}
	s, err := e.sealFor(c)
	if err != nil {
		return err
	}
	plain, err := json.Marshal(t)
	if err != nil {
		// Only a time outside years 0-9999 fails; the message quotes no token.
		return fmt.Errorf("shared token cache: encoding the entry: %w", err)
	}
	if n := len(plain) % padding; n != 0 {
		plain = append(plain, bytes.Repeat([]byte{' '}, padding-n)...)
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("shared token cache: generating a nonce: %w", err)
	}
	raw, err := json.Marshal(envelope{
		V:          version,
		Nonce:      nonce,
		Ciphertext: s.aead.Seal(nil, nonce, plain, []byte(s.key)),
	})
	if err != nil {
		return fmt.Errorf("shared token cache: encoding the envelope: %w", err)
	}
	if len(raw) > MaxEntryBytes {
		return fmt.Errorf("shared token cache: token too large to share (entry would be %d bytes, limit %d)", len(raw), MaxEntryBytes)
	}
	err = e.call(ctx, "store", func(ctx context.Context) error {
		return e.storage.Store(ctx, s.key, raw)
	}, nil)
	if err != nil {
		return fmt.Errorf("storing shared token cache entry %s: %w", s.key, err)
	}
	return nil
}

// Succeed takes over the gate of the store this entry replaces on the same
// source after a reload: the storage calls of one source go through one
// gate, so a call stuck in a wedged storage is not joined by a new one each
// time a config is loaded.
func (e *Entry) Succeed(prev token.Store) {
	if p, ok := prev.(*Entry); ok && p.tokenURL == e.tokenURL {
		e.gate = p.gate
	}
}

// StuckCalls is how many of the entry's storage calls outlived their
// callers and have not returned (see gate): goroutines blocked in a storage
// that does not answer. It implements token.StuckReporter.
func (e *Entry) StuckCalls() int {
	n, _ := e.gate.state()
	return n
}

var (
	_ token.Store         = (*Entry)(nil)
	_ token.StuckReporter = (*Entry)(nil)
)
