package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// testKey is a private key in each PEM form the module reads.
type testKey struct {
	name, alg, pem string
	public         crypto.PublicKey
}

func testKeys(t testing.TB) []testKey {
	t.Helper()
	keys, err := sharedTestKeys()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// sharedTestKeys makes testKeys' keys once per test binary: an RSA key
// takes a good part of a second with -race, and five tests use them.
var sharedTestKeys = sync.OnceValues(func() ([]testKey, error) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	var errs []error
	pkcs8 := func(k any) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		errs = append(errs, err)
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	sec1, _ := x509.MarshalECPrivateKey(p256)
	keys := []testKey{
		{"RSA PKCS#8", "RS256", pkcs8(rsaKey), &rsaKey.PublicKey},
		{"RSA PKCS#1", "RS256", string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})), &rsaKey.PublicKey},
		{"RSA PSS", "PS256", pkcs8(rsaKey), &rsaKey.PublicKey},
		{"P-256 PKCS#8", "ES256", pkcs8(p256), &p256.PublicKey},
		{"P-256 SEC1", "ES256", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})), &p256.PublicKey},
		{"P-384", "ES384", pkcs8(p384), &p384.PublicKey},
		{"Ed25519", "EdDSA", pkcs8(edKey), edPub},
	}
	return keys, errors.Join(errs...)
})

// private_key_jwt with every key type: the token endpoint (which verifies
// with golang-jwt, not go-jose) accepts the assertion, and every token
// request carries a fresh one (a new jti each time).
func TestPrivateKeyJWTEveryKeyType(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	for _, k := range testKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			alg := ""
			if k.alg == "PS256" {
				alg = "PS256"
			}
			key, err := ParseSigningKey([]byte(k.pem), "kid-1", alg)
			if err != nil {
				t.Fatal(err)
			}
			if key.Algorithm() != k.alg || key.ID() != "kid-1" {
				t.Fatalf("algorithm %s, key ID %q; want %s, kid-1", key.Algorithm(), key.ID(), k.alg)
			}
			as := deskotest.NewAssertionServer(tsClientID, "https://issuer.example", k.public, k.alg, time.Hour)
			url := serveInMemory(t, as)
			s := newTestSource(t, url+deskotest.TokenPath, func(c *Config) {
				c.Auth, c.AssertionAudience = AuthPrivateKeyJWT, "https://issuer.example"
				c.Credentials = &Static{ClientID: tsClientID, Key: key}
			})
			for range 3 {
				if _, err := s.Refresh(t.Context()); err != nil {
					t.Fatalf("Refresh: %v (server: %v)", err, as.Reasons())
				}
			}
			if as.Issued() != 3 || as.Refused() != 0 {
				t.Fatalf("issued %d, refused %d: %v", as.Issued(), as.Refused(), as.Reasons())
			}
			// The assertion just used is refused if sent again.
			if err := as.Verify(as.LastAssertion()); err == nil || !strings.Contains(err.Error(), "replayed") {
				t.Fatalf("a replayed assertion: %v", err)
			}
		})
	}
}

// The server's checks are real: it refuses an assertion signed with
// another key, one for another audience, and one past its exp.
func TestPrivateKeyJWTRefusals(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	keys := testKeys(t)
	key, err := ParseSigningKey([]byte(keys[0].pem), "", "")
	if err != nil {
		t.Fatal(err)
	}
	other := keys[3] // a P-256 key, registered instead
	for name, tc := range map[string]struct {
		public   crypto.PublicKey
		alg      string
		audience string
		clock    func() time.Time
		want     string
	}{
		"another key":      {other.public, "RS256", "aud", time.Now, "invalid assertion"},
		"another audience": {keys[0].public, "RS256", "other-aud", time.Now, "invalid assertion"},
		"expired":          {keys[0].public, "RS256", "aud", func() time.Time { return time.Now().Add(61 * time.Second) }, "expired"},
	} {
		t.Run(name, func(t *testing.T) {
			as := deskotest.NewAssertionServer(tsClientID, tc.audience, tc.public, tc.alg, time.Hour)
			as.SetClock(tc.clock)
			s := newTestSource(t, serveInMemory(t, as)+deskotest.TokenPath, func(c *Config) {
				c.Auth, c.AssertionAudience = AuthPrivateKeyJWT, "aud"
				c.Credentials = &Static{ClientID: tsClientID, Key: key}
			})
			_, err := s.Refresh(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Refresh = %v, want a refusal with %q", err, tc.want)
			}
			if te := err.(*Error); te.Kind != KindRefused {
				t.Fatalf("kind %s, want refused", te.Kind)
			}
		})
	}
}

// client_secret_jwt signs with the secret (HS256); the secret itself is
// never sent.
func TestClientSecretJWT(t *testing.T) {
	const secret = "a-client-secret-of-at-least-32-bytes!"
	as := deskotest.NewAssertionServer(tsClientID, "tok", []byte(secret), "HS256", time.Hour)
	url := serveInMemory(t, as) + deskotest.TokenPath
	s := newTestSource(t, url, func(c *Config) {
		c.Auth = AuthClientSecretJWT
		c.Credentials = &Static{ClientID: tsClientID, ClientSecret: secret}
		c.AssertionAudience = "tok"
	})
	if _, err := s.Refresh(t.Context()); err != nil {
		t.Fatalf("Refresh: %v (%v)", err, as.Reasons())
	}
	if strings.Contains(as.LastAssertion(), secret) {
		t.Fatal("the assertion holds the secret")
	}
	// Without an audience set, the audience is the token URL.
	as2 := deskotest.NewAssertionServer(tsClientID, "", []byte(secret), "HS256", time.Hour)
	url2 := serveInMemory(t, as2) + deskotest.TokenPath
	as2 = deskotest.NewAssertionServer(tsClientID, url2, []byte(secret), "HS256", time.Hour)
	testHosts.Store(strings.TrimPrefix(strings.TrimSuffix(url2, deskotest.TokenPath), "http://"), as2)
	s2 := newTestSource(t, url2, func(c *Config) {
		c.Auth = AuthClientSecretJWT
		c.Credentials = &Static{ClientID: tsClientID, ClientSecret: secret}
	})
	if _, err := s2.Refresh(t.Context()); err != nil {
		t.Fatalf("Refresh with the token URL as audience: %v (%v)", err, as2.Reasons())
	}
}

func TestParseSigningKeyErrors(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	keys := testKeys(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)})
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224DER, _ := x509.MarshalPKCS8PrivateKey(p224)
	cert := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	for name, tc := range map[string]struct{ pem, alg, want string }{
		"not PEM":          {"just text", "", "holds no PEM block"},
		"a certificate":    {cert, "", `"CERTIFICATE" PEM block`},
		"two keys":         {keys[0].pem + keys[3].pem, "", "more than one PEM block"},
		"small RSA":        {string(smallPEM), "", "1024-bit RSA key"},
		"P-224":            {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p224DER})), "", "P-224"},
		"alg does not fit": {keys[3].pem, "PS256", "holds a key for ES256, not PS256"},
		"garbage DER":      {"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "", "does not parse"},
		"encrypted PKCS#8": {"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "", "encrypted"},
		"encrypted PKCS#1 (OpenSSL's traditional encryption)": {"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n" +
			"DEK-Info: AES-256-CBC,7A1D0F4E2B9C3A8D5E6F708192A3B4C5\n\nAAAA\n-----END RSA PRIVATE KEY-----\n", "", "encrypted"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseSigningKey([]byte(tc.pem), "", tc.alg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "MII") || strings.Contains(err.Error(), "AAAA") {
				t.Fatalf("the error quotes the key: %v", err)
			}
		})
	}
}

// The key never reaches a log or an error: the scrubber knows its forms,
// PKCS#8 and the file's own (PKCS#1, SEC1): each line of the file's PEM
// body, and the body whole.
func TestPrivateKeyIsScrubbed(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	for _, k := range testKeys(t) {
		t.Run(k.name, func(t *testing.T) {
			key, err := ParseSigningKey([]byte(k.pem), "", "")
			if err != nil {
				t.Fatal(err)
			}
			s := newTestSource(t, "http://unused.test/token", func(c *Config) {
				c.Auth, c.Credentials = AuthPrivateKeyJWT, &Static{ClientID: tsClientID, Key: key}
			})
			block, _ := pem.Decode([]byte(k.pem))
			body := strings.TrimSuffix(strings.SplitN(k.pem, "\n", 2)[1], "-----END "+block.Type+"-----\n")
			forms := append(strings.Split(strings.TrimSpace(body), "\n"), strings.ReplaceAll(body, "\n", ""))
			for _, form := range append(forms, key.Secrets()...) {
				if out := s.Scrub("echo: " + form); strings.Contains(out, form) {
					t.Fatalf("the scrubber kept a form of the key: %q", out)
				}
			}
		})
	}
}

// jwksAsDocumented is the JWK Set of the public half of a PKCS#8 PEM key,
// made as docs/other-oauth2-servers.md shows (jwk.go), as JSON.
func jwksAsDocumented(t *testing.T, pemText, kid, alg string) []byte {
	t.Helper()
	block, _ := pem.Decode([]byte(pemText))
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	jwk := jose.JSONWebKey{Key: key.(crypto.Signer).Public(), KeyID: kid, Algorithm: alg, Use: "sig"}
	out, err := json.MarshalIndent(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A server that registers the JWK Set the docs say how to make accepts the
// assertions: the key under the client's kid, read from the set as JSON,
// verifies them (with golang-jwt). The set holds no private value.
func TestPublishedJWKSVerifies(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	for _, k := range testKeys(t) {
		if !strings.Contains(k.pem, "BEGIN PRIVATE KEY") {
			continue // the documented program reads PKCS#8, what openssl genpkey writes
		}
		t.Run(k.name, func(t *testing.T) {
			kid := "kid-" + strings.ReplaceAll(k.name, " ", "-")
			doc := jwksAsDocumented(t, k.pem, kid, k.alg)
			var fields struct {
				Keys []map[string]any `json:"keys"`
			}
			if err := json.Unmarshal(doc, &fields); err != nil || len(fields.Keys) != 1 {
				t.Fatalf("the JWK Set: %s (%v)", doc, err)
			}
			for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
				if _, ok := fields.Keys[0][private]; ok {
					t.Fatalf("the JWK Set holds the private value %q: %s", private, doc)
				}
			}
			// The server's side: the set, parsed, and the key by kid.
			var set jose.JSONWebKeySet
			if err := json.Unmarshal(doc, &set); err != nil {
				t.Fatal(err)
			}
			found := set.Key(kid)
			if len(found) != 1 || !found[0].Valid() || !found[0].IsPublic() {
				t.Fatalf("no public key %s in %s", kid, doc)
			}
			alg := ""
			if k.alg == "PS256" {
				alg = "PS256"
			}
			key, err := ParseSigningKey([]byte(k.pem), kid, alg)
			if err != nil {
				t.Fatal(err)
			}
			as := deskotest.NewAssertionServer(tsClientID, "https://issuer.example", found[0].Key, found[0].Algorithm, time.Hour)
			s := newTestSource(t, serveInMemory(t, as)+deskotest.TokenPath, func(c *Config) {
				c.Auth, c.AssertionAudience = AuthPrivateKeyJWT, "https://issuer.example"
				c.Credentials = &Static{ClientID: tsClientID, Key: key}
			})
			if _, err := s.Refresh(t.Context()); err != nil {
				t.Fatalf("Refresh: %v (server: %v)", err, as.Reasons())
			}
		})
	}
}
