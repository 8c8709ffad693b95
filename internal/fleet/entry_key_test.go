package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/certmagic"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// ecKeyPEMs makes a P-256 key and returns it in its two PEM forms: PKCS#8
// and SEC1.
func ecKeyPEMs(t *testing.T) (pkcs8, sec1 string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	der1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der8})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der1}))
}

// publicKeyHash is the SHA-256 of the PKIX DER of the public half of the
// key in pemText: what anyone who has the public key can compute.
func publicKeyHash(t *testing.T, pemText string) string {
	t.Helper()
	block, _ := pem.Decode([]byte(pemText))
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.(*ecdsa.PrivateKey).Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return string(sum[:])
}

// keyCreds are the credentials of a private_key_jwt client: a client ID
// and the key read from pemText, no secret. Each call parses the key
// again, as another instance would.
func keyCreds(t *testing.T, pemText, kid string) *token.Credentials {
	t.Helper()
	k, err := token.ParseSigningKey([]byte(pemText), kid, "")
	if err != nil {
		t.Fatal(err)
	}
	return &token.Credentials{ClientID: testClientID, Key: k}
}

// A client without a secret (private_key_jwt) shares its tokens by its
// key: the entry is encrypted under a key derived from the private key, so
// an instance with the same key reads it (whatever the PEM form of its
// file, and its key ID), and one with another key, or with a secret, reads
// a miss — never an error, never another key's token — on the same entry,
// which its next Save replaces. The entry shows neither the token nor the
// key.
func TestEntryPrivateKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := newEntry(t, &certmagic.FileStorage{Path: dir}), newEntry(t, &certmagic.FileStorage{Path: dir})
	pem8, sec1 := ecKeyPEMs(t)
	other, _ := ecKeyPEMs(t)
	mine := keyCreds(t, pem8, "kid-1")
	if err := a.Save(ctx, mine, storedTok()); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*token.Credentials{
		"the same key":                  keyCreds(t, pem8, "kid-1"),
		"the same key in SEC1 form":     keyCreds(t, sec1, "kid-1"),
		"the same key with another kid": keyCreds(t, pem8, "kid-2"),
	} {
		if got, err := b.Load(ctx, c); err != nil || !sameToken(got, storedTok()) {
			t.Errorf("%s: Load = %+v, %v; want the stored token", name, got, err)
		}
	}
	theirs := keyCreds(t, other, "kid-1")
	for name, c := range map[string]*token.Credentials{
		"another key": theirs,
		"a secret":    {ClientID: testClientID, ClientSecret: testSecret},
		// The public key is published (a JWKS): what the entry is
		// encrypted under must not follow from it.
		"the public key's SHA-256 as a secret": {ClientID: testClientID, ClientSecret: publicKeyHash(t, pem8)},
	} {
		if sealedFor(t, b, c).key != sealedFor(t, a, mine).key {
			t.Fatalf("%s: another entry; the test would prove nothing", name)
		}
		if got, err := b.Load(ctx, c); got != nil || err != nil {
			t.Errorf("%s: Load = %+v, %v; want a miss (nil, nil)", name, got, err)
		}
	}

	raw, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(testKey())))
	if err != nil {
		t.Fatal(err)
	}
	forms := append(scrubtest.PEMForms(pem8), scrubtest.PEMForms(sec1)...)
	scrubtest.NewCheckWith(testClientID, forms, testToken).AssertNone(t, "the entry", string(raw))

	// Another key's Save replaces the entry; the first key then misses.
	fresh := &token.Stored{AccessToken: "theirs-token", Obtained: storedTok().Obtained, Expiry: storedTok().Expiry}
	if err := b.Save(ctx, theirs, fresh); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx, mine); got != nil || err != nil {
		t.Errorf("the first key after another key's Save: Load = %+v, %v; want a miss", got, err)
	}
	if got, err := a.Load(ctx, keyCreds(t, other, "")); err != nil || !sameToken(got, fresh) {
		t.Errorf("the other key: Load = %+v, %v; want its token", got, err)
	}
}
