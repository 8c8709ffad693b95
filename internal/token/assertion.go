package token

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// This file is client authentication with a signed JWT (RFC 7523 §2.2,
// RFC 7521 §4.2): the private_key_jwt and client_secret_jwt styles. The
// JWS is made by go-jose, which Caddy's module graph already holds.

// AssertionType is the client_assertion_type of a JWT assertion.
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionLifetime is how long an assertion is valid after it is made.
const assertionLifetime = 60 * time.Second

// SigningKey is a private key that signs client assertions
// (private_key_jwt), with its algorithm and key ID.
type SigningKey struct {
	signer crypto.Signer
	alg    jose.SignatureAlgorithm
	id     string
	der    []byte // PKCS#8, for Secrets and comparisons
	file   []byte // the DER of the PEM block read, when it is not PKCS#8 (PKCS#1, SEC1)
}

// errEncryptedKey is the error of a key encrypted with a passphrase.
var errEncryptedKey = errors.New("is an encrypted private key; give it unencrypted (protect the file instead)")

// ParseSigningKey reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)
// and decides its algorithm: RSA → RS256 (or PS256 when alg says so),
// P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA. alg, if not empty, must
// fit the key. Errors never quote the key.
func ParseSigningKey(pemBytes []byte, kid, alg string) (*SigningKey, error) {
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("holds no PEM block")
	}
	if strings.TrimSpace(string(rest)) != "" {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, errors.New("holds more than one PEM block; give the private key alone")
		}
	}
	// OpenSSL's traditional encryption (Proc-Type: 4,ENCRYPTED) keeps the
	// block's type: without this, such a key "does not parse".
	if strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
		return nil, errEncryptedKey
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, errEncryptedKey
	default:
		return nil, fmt.Errorf("holds a %q PEM block, not a private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, errors.New("holds a private key that does not parse")
	}
	k := &SigningKey{id: kid}
	switch key := key.(type) {
	case *rsa.PrivateKey:
		if key.N.BitLen() < 2048 {
			return nil, fmt.Errorf("holds a %d-bit RSA key; at least 2048 bits are needed", key.N.BitLen())
		}
		k.signer, k.alg = key, jose.RS256
		if alg == "PS256" {
			k.alg = jose.PS256
		}
	case *ecdsa.PrivateKey:
		switch key.Curve {
		case elliptic.P256():
			k.signer, k.alg = key, jose.ES256
		case elliptic.P384():
			k.signer, k.alg = key, jose.ES384
		default:
			return nil, fmt.Errorf("holds an EC key on %s; P-256 and P-384 are supported", key.Curve.Params().Name)
		}
	case ed25519.PrivateKey:
		k.signer, k.alg = key, jose.EdDSA
	default:
		return nil, fmt.Errorf("holds a %T key; RSA, EC (P-256, P-384) and Ed25519 are supported", key)
	}
	if alg != "" && alg != string(k.alg) {
		return nil, fmt.Errorf("holds a key for %s, not %s", k.alg, alg)
	}
	if k.der, err = x509.MarshalPKCS8PrivateKey(k.signer); err != nil {
		return nil, errors.New("holds a private key that cannot be encoded as PKCS#8")
	}
	if !bytes.Equal(block.Bytes, k.der) {
		k.file = bytes.Clone(block.Bytes)
	}
	// Sign once now: a key that cannot sign is a load error, not a failed
	// token request.
	if _, err := k.sign("probe", "probe", time.Now()); err != nil {
		return nil, fmt.Errorf("holds a key that cannot sign with %s: %w", k.alg, err)
	}
	return k, nil
}

// Algorithm is the JWS algorithm the key signs with (RS256, PS256, ES256,
// ES384 or EdDSA).
func (k *SigningKey) Algorithm() string { return string(k.alg) }

// ID is the key ID sent in the assertion's header ("" for none).
func (k *SigningKey) ID() string { return k.id }

// Equal reports whether k and o are the same key with the same ID and
// algorithm.
func (k *SigningKey) Equal(o *SigningKey) bool {
	if k == nil || o == nil {
		return k == o
	}
	return k.id == o.id && k.alg == o.alg && string(k.der) == string(o.der)
}

// Secrets are the forms of the key that must never appear in a log: its
// PKCS#8 DER in base64, whole and in PEM lines, and the same of the DER
// its file holds when that is another form (PKCS#1, SEC1).
func (k *SigningKey) Secrets() []string {
	out := pemLines(k.der)
	if k.file != nil {
		out = append(out, pemLines(k.file)...)
	}
	return out
}

// pemLines is der in base64, whole and in the 64-character lines of PEM.
func pemLines(der []byte) []string {
	b64 := base64.StdEncoding.EncodeToString(der)
	out := []string{b64}
	for len(b64) > 64 {
		out, b64 = append(out, b64[:64]), b64[64:]
	}
	return append(out, b64)
}

// Fingerprint is the SHA-256 of the key's PKCS#8 DER, a secret-derived
// value: what a fleet that shares tokens derives its encryption key from.
func (k *SigningKey) Fingerprint() []byte {
	sum := sha256.Sum256(k.der)
	return sum[:]
}

// sign makes an assertion for clientID toward audience, valid from now
// for assertionLifetime, with a fresh jti.
func (k *SigningKey) sign(clientID, audience string, now time.Time) (string, error) {
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if k.id != "" {
		opts = opts.WithHeader("kid", k.id)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.signer}, opts)
	if err != nil {
		return "", err
	}
	return signAssertion(signer, clientID, audience, now)
}

// signHMAC makes a client_secret_jwt assertion: HS256 under the secret.
func signHMAC(secret, clientID, audience string, now time.Time) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(secret)}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	return signAssertion(signer, clientID, audience, now)
}

// MinHMACSecret is the shortest client secret client_secret_jwt signs
// with: HS256 needs a key as long as its hash (RFC 7518 §3.2).
const MinHMACSecret = 32

func signAssertion(signer jose.Signer, clientID, audience string, now time.Time) (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{audience},
		ID:       hex.EncodeToString(jti[:]),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(assertionLifetime)),
	}).Serialize()
}
