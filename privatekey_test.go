package deskoauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// Client authentication with a signed JWT (issue 19: private_key_jwt and
// client_secret_jwt) through a real Caddy, against the stand-in token
// endpoint deskotest.AssertionServer, which verifies the assertions with
// golang-jwt while the module signs them with go-jose.

// pkKey is a client's private key in one of the PEM forms the module
// reads, with what the token endpoint registers for it.
type pkKey struct {
	slug string // a name fit for a path and a file
	alg  string // the JWS algorithm the server expects
	// configAlg is the client_key_alg to configure ("" to let the key
	// decide).
	configAlg string
	pem       string
	public    crypto.PublicKey
}

// pemOf encodes der as a PEM block of type typ.
func pemOf(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// pkcs8PEM is k as a PKCS#8 PEM block.
func pkcs8PEM(t testing.TB, k any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("PRIVATE KEY", der)
}

// newECKey and newEd25519Key make fresh keys (pkRSAKeys, RSA keys).
func newECKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newEd25519Key(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, k
}

// pkRSAKeys are three RSA keys, made once per test binary: a 2048-bit key
// takes a good part of a second with -race, and the tests that use them
// need keys of their own, not keys of their own each time.
var pkRSAKeys = func() func(testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey, *rsa.PrivateKey) {
	keys := sync.OnceValues(func() ([3]*rsa.PrivateKey, error) {
		var ks [3]*rsa.PrivateKey
		for i := range ks {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				return ks, err
			}
			ks[i] = k
		}
		return ks, nil
	})
	return func(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey, *rsa.PrivateKey) {
		t.Helper()
		ks, err := keys()
		if err != nil {
			t.Fatal(err)
		}
		return ks[0], ks[1], ks[2]
	}
}()

// pkKeys are a key of every type and PEM form the module reads: RSA
// (PKCS#8 and PKCS#1, RS256; PS256), P-256 (SEC1 and PKCS#8), P-384 and
// Ed25519. The RSA forms are of three different keys.
func pkKeys(t testing.TB) []pkKey {
	t.Helper()
	rsa1, rsa2, rsa3 := pkRSAKeys(t)
	p256a, p256b, p384 := newECKey(t, elliptic.P256()), newECKey(t, elliptic.P256()), newECKey(t, elliptic.P384())
	edPub, edKey := newEd25519Key(t)
	sec1, err := x509.MarshalECPrivateKey(p256a)
	if err != nil {
		t.Fatal(err)
	}
	return []pkKey{
		{"rsa-pkcs8", "RS256", "", pkcs8PEM(t, rsa1), &rsa1.PublicKey},
		{"rsa-pkcs1", "RS256", "", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsa2)), &rsa2.PublicKey},
		{"rsa-ps256", "PS256", "PS256", pkcs8PEM(t, rsa3), &rsa3.PublicKey},
		{"p256-sec1", "ES256", "", pemOf("EC PRIVATE KEY", sec1), &p256a.PublicKey},
		{"p256-pkcs8", "ES256", "", pkcs8PEM(t, p256b), &p256b.PublicKey},
		{"p384", "ES384", "", pkcs8PEM(t, p384), &p384.PublicKey},
		{"ed25519", "EdDSA", "", pkcs8PEM(t, edKey), edPub},
	}
}

// forms are the texts that would show the key in a leak: its PEM body (in
// the form of its file) and its PKCS#8 forms, which the module's own
// scrubber knows (token.SigningKey.Secrets).
func (k pkKey) forms(t testing.TB) []string {
	t.Helper()
	sk, err := token.ParseSigningKey([]byte(k.pem), "", k.configAlg)
	if err != nil {
		t.Fatalf("%s: %v", k.slug, err)
	}
	forms := append(scrubtest.PEMForms(k.pem), sk.Secrets()...)
	if len(forms) < 3 {
		t.Fatalf("%s: no forms to look for", k.slug)
	}
	return forms
}

// startAssertionServer runs a token endpoint for clientID that registers
// public for alg; the assertions' audience it expects is aud, or, when aud
// is "", its own token URL. It returns the server and its token URL.
func startAssertionServer(t *testing.T, clientID, aud string, public crypto.PublicKey, alg string, ttl time.Duration) (*deskotest.AssertionServer, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	tokenURL := "http://" + srv.Listener.Addr().String() + deskotest.TokenPath
	if aud == "" {
		aud = tokenURL
	}
	as := deskotest.NewAssertionServer(clientID, aud, public, alg, ttl)
	srv.Config.Handler = as
	srv.Start()
	t.Cleanup(srv.Close)
	return as, tokenURL
}

// authRecorder is an upstream that answers 200 and records the
// Authorization header of every request, by path.
type authRecorder struct {
	mu   sync.Mutex
	seen map[string][]string
}

func newAuthRecorder(t *testing.T) (*authRecorder, string) {
	t.Helper()
	r := &authRecorder{seen: map[string][]string{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.seen[req.URL.Path] = append(r.seen[req.URL.Path], req.Header.Get("Authorization"))
		r.mu.Unlock()
		fmt.Fprintln(w, "upstream ok")
	}))
	t.Cleanup(srv.Close)
	return r, srv.Listener.Addr().String()
}

// got returns the Authorization headers the upstream saw on path.
func (r *authRecorder) got(path string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen[path]...)
}

// assertionParts decodes the header and claims of a JWS in compact form.
func assertionParts(t *testing.T, jws string) (header map[string]any, claims map[string]any) {
	t.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		t.Fatalf("the assertion has %d parts, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("assertion part %d: %v", i, err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatalf("assertion part %d: %v", i, err)
		}
	}
	return header, claims
}

// hmacSecret is the client_secret_jwt secret: 32 bytes or more (HS256),
// sharing no 8 bytes with anything else in the log.
const hmacSecret = "Jq4Vr72Zp90Lx35Hw8Tn61Yb27Mc50QdKs"

// pkRoute is one handle block of TestE2EPrivateKeyJWT's config: a client
// with its own token endpoint.
type pkRoute struct {
	slug     string
	block    string // the desko_auth lines besides token_url and warm_up
	as       *deskotest.AssertionServer
	tokenURL string
	alg, kid string // what its assertions' header should say
	aud      string // what its assertions' aud should be ("" for the token URL)
	refused  string // for a refused client, what the token endpoint's reason says
}

// TestE2EPrivateKeyJWT: one Caddy, one route per client, each with its
// own token endpoint. The endpoint (golang-jwt) accepts the assertions
// the module signs (go-jose) for every key type and PEM form — RSA RS256
// in PKCS#8 and PKCS#1, RSA PS256, P-256 in SEC1 and PKCS#8, P-384,
// Ed25519 — with the key ID in the header and the token URL, or
// client_assertion_audience, as aud; and for client_secret_jwt (HS256).
// The upstream gets each endpoint's own token. A key the server did not
// register, or an audience it does not expect, is refused: 502 with the
// refused-credentials message, nothing forwarded. Two token requests
// (forced through the admin API) carry different jti. No form of any
// private key, nor the HMAC secret, nor a token, reaches Caddy's DEBUG
// log, /config/ (which shows the placeholders), the status and refresh
// answers, /metrics or the 502 bodies.
func TestE2EPrivateKeyJWT(t *testing.T) {
	e := newParallelE2E(t, time.Hour)
	keys := pkKeys(t)
	dir := t.TempDir()
	up, upstream := newAuthRecorder(t)
	e.setenv("PKJWT_HMAC_SECRET", hmacSecret)

	var routes []pkRoute
	secrets := []string{hmacSecret} // the leak rule's secrets: the HMAC secret, then every key's forms
	for _, k := range keys {
		file := filepath.Join(dir, k.slug+".pem")
		writeFile(t, file, k.pem)
		secrets = append(secrets, k.forms(t)...)
		r := pkRoute{slug: k.slug, alg: k.alg, kid: "kid-" + k.slug}
		r.block = fmt.Sprintf("auth_style private_key_jwt\n\t\t\tclient_id pk-%s\n\t\t\tclient_key {file.%s}\n\t\t\tclient_key_id %s", k.slug, file, r.kid)
		if k.configAlg != "" {
			r.block += "\n\t\t\tclient_key_alg " + k.configAlg
		}
		if k.slug == "p384" { // a server that wants its issuer as the audience
			r.aud = "https://issuer.example/realms/desko"
			r.block += "\n\t\t\tclient_assertion_audience " + r.aud
		}
		r.as, r.tokenURL = startAssertionServer(t, "pk-"+k.slug, r.aud, k.public, k.alg, time.Hour)
		routes = append(routes, r)
	}
	// client_secret_jwt: HS256 under the secret; no key ID.
	hs := pkRoute{slug: "hs256", alg: "HS256", block: "auth_style client_secret_jwt\n\t\t\tclient_id pk-hs256\n\t\t\tclient_secret {env.PKJWT_HMAC_SECRET}"}
	hs.as, hs.tokenURL = startAssertionServer(t, "pk-hs256", "", []byte(hmacSecret), "HS256", time.Hour)
	routes = append(routes, hs)
	// A key the server did not register: it registers another P-256 key.
	signer, registered := newECKey(t, elliptic.P256()), newECKey(t, elliptic.P256())
	wrongKey := pkKey{slug: "wrong-key", alg: "ES256", pem: pkcs8PEM(t, signer)}
	writeFile(t, filepath.Join(dir, "wrong-key.pem"), wrongKey.pem)
	secrets = append(secrets, wrongKey.forms(t)...)
	wk := pkRoute{slug: "wrong-key", alg: "ES256", refused: "signature is invalid",
		block: "auth_style private_key_jwt\n\t\t\tclient_id pk-wrong-key\n\t\t\tclient_key {file." + filepath.Join(dir, "wrong-key.pem") + "}"}
	wk.as, wk.tokenURL = startAssertionServer(t, "pk-wrong-key", "", &registered.PublicKey, "ES256", time.Hour)
	routes = append(routes, wk)
	// An audience the server does not expect (it expects its token URL).
	edPub, edKey := newEd25519Key(t)
	wrongAud := pkKey{slug: "wrong-aud", alg: "EdDSA", pem: pkcs8PEM(t, edKey)}
	writeFile(t, filepath.Join(dir, "wrong-aud.pem"), wrongAud.pem)
	secrets = append(secrets, wrongAud.forms(t)...)
	wa := pkRoute{slug: "wrong-aud", alg: "EdDSA", aud: "https://elsewhere.example", refused: "invalid audience",
		block: "auth_style private_key_jwt\n\t\t\tclient_id pk-wrong-aud\n\t\t\tclient_key {file." + filepath.Join(dir, "wrong-aud.pem") + "}" +
			"\n\t\t\tclient_assertion_audience https://elsewhere.example"}
	wa.as, wa.tokenURL = startAssertionServer(t, "pk-wrong-aud", "", edPub, "EdDSA", time.Hour)
	routes = append(routes, wa)

	var site strings.Builder
	fmt.Fprintf(&site, "%s {\n", e.base)
	for _, r := range routes {
		fmt.Fprintf(&site, "\thandle /%s/* {\n\t\tdesko_auth {\n\t\t\t%s\n\t\t\ttoken_url %s\n\t\t\twarm_up off\n\t\t}\n\t\treverse_proxy %s\n\t}\n",
			r.slug, r.block, r.tokenURL, upstream)
	}
	site.WriteString("}\n")
	e.loadRaw(site.String())

	var answers []string // every answer, for the leak check
	firstJTI := map[string]any{}
	for _, r := range routes {
		path := "/" + r.slug + "/first"
		status, _, body := e.do("GET", path, "")
		answers = append(answers, body)
		if r.refused != "" {
			if status != http.StatusBadGateway {
				t.Errorf("%s: status %d, want 502: %s", r.slug, status, body)
				continue
			}
			if d := decodeErr(t, body); d.Message != msgRefused {
				t.Errorf("%s: message %q, want %q", r.slug, d.Message, msgRefused)
			} else if detail := e.detail(d); !strings.Contains(detail, r.refused) {
				t.Errorf("%s: the log says %q, want the server's reason (%q)", r.slug, detail, r.refused)
			}
			if got := up.got(path); len(got) != 0 {
				t.Errorf("%s: a refused client's request was forwarded", r.slug)
			}
			if r.as.Issued() != 0 || r.as.Refused() != 1 {
				t.Errorf("%s: the server issued %d and refused %d, want 0 and 1: %v", r.slug, r.as.Issued(), r.as.Refused(), r.as.Reasons())
			}
			continue
		}
		if status != http.StatusOK {
			t.Errorf("%s: status %d, want 200: %s (server: %v)", r.slug, status, body, r.as.Reasons())
			continue
		}
		tokens := r.as.Tokens()
		if got := up.got(path); len(tokens) != 1 || len(got) != 1 || got[0] != "Bearer "+tokens[0] {
			t.Errorf("%s: the upstream saw %q; the server issued %q", r.slug, got, tokens)
		}
		header, claims := assertionParts(t, r.as.LastAssertion())
		wantAud := r.aud
		if wantAud == "" {
			wantAud = r.tokenURL
		}
		if header["alg"] != r.alg || header["typ"] != "JWT" || (r.kid == "" && header["kid"] != nil) || (r.kid != "" && header["kid"] != r.kid) {
			t.Errorf("%s: assertion header %v, want alg %s, kid %q", r.slug, header, r.alg, r.kid)
		}
		if claims["iss"] != "pk-"+r.slug || claims["sub"] != "pk-"+r.slug || claims["aud"] != wantAud {
			t.Errorf("%s: assertion claims %v, want iss = sub = pk-%s, aud %s", r.slug, claims, r.slug, wantAud)
		}
		firstJTI[r.slug] = claims["jti"]
	}
	if t.Failed() {
		t.FailNow()
	}

	// Two token requests carry two assertions with different jti.
	code, refreshed := e.adminDo("POST", "/desko_auth/refresh")
	if code != 200 {
		t.Fatalf("refresh: %d %s", code, refreshed)
	}
	for _, r := range routes {
		if r.refused != "" {
			continue
		}
		if r.as.Issued() != 2 {
			t.Errorf("%s: %d tokens issued after the refresh, want 2: %v", r.slug, r.as.Issued(), r.as.Reasons())
			continue
		}
		_, claims := assertionParts(t, r.as.LastAssertion())
		if jti, ok := claims["jti"].(string); !ok || len(jti) < 16 || jti == firstJTI[r.slug] {
			t.Errorf("%s: the second assertion's jti is %v, the first's %v: want two different, unguessable ones", r.slug, claims["jti"], firstJTI[r.slug])
		}
		path := "/" + r.slug + "/second"
		if status, _, body := e.do("GET", path, ""); status != 200 {
			t.Errorf("%s: after the refresh, status %d: %s", r.slug, status, body)
		} else if got := up.got(path); len(got) != 1 || got[0] != "Bearer "+r.as.Tokens()[1] {
			t.Errorf("%s: after the refresh the upstream saw %q, want the second token", r.slug, got)
		}
	}
	var list []SourceStatus
	if err := json.Unmarshal([]byte(refreshed), &list); err != nil || len(list) != len(routes) {
		t.Fatalf("the refresh answer lists %d sources (%v), want %d: %s", len(list), err, len(routes), refreshed)
	}
	for _, s := range list {
		refused := s.ClientID == "pk-wrong-key" || s.ClientID == "pk-wrong-aud"
		if refused != (s.RefreshError != "") {
			t.Errorf("%s: refresh_error %q", s.ClientID, s.RefreshError)
		}
	}

	// Nothing shows a key, the secret or a token.
	var tokens []string
	for _, r := range routes {
		tokens = append(tokens, r.as.Tokens()...)
	}
	lc := scrubtest.NewCheckWith("pk-hs256", secrets, tokens...)
	_, cfg := e.adminDo("GET", "/config/")
	if strings.Contains(cfg, "BEGIN") || strings.Contains(cfg, hmacSecret) {
		t.Errorf("/config/ shows a key or the secret: %.500s", cfg)
	}
	for _, k := range append(keys, wrongKey, wrongAud) {
		if want := "{file." + filepath.Join(dir, k.slug+".pem") + "}"; !strings.Contains(cfg, want) {
			t.Errorf("/config/ does not show the placeholder %s", want)
		}
	}
	_, status := e.adminDo("GET", "/desko_auth/status")
	_, metrics := e.adminDo("GET", "/metrics")
	logs := readLog(t, e.logFile)
	for what, text := range map[string]string{
		"/config/": cfg, "/desko_auth/status": status, "the refresh answer": refreshed, "/metrics": metrics,
		"Caddy's DEBUG log": logs, "the answers": strings.Join(answers, "\n"),
	} {
		lc.AssertNone(t, what, text)
	}
	if strings.Count(logs, "client_secret is a literal value") != 0 {
		t.Error("a WARN about a literal client_secret, for clients that have none or a placeholder")
	}
	// The check finds what it looks for (it is not blind to keys).
	if !lc.Leaks("key: " + keys[0].forms(t)[1][100:140]) {
		t.Error("the leak check does not see 40 characters of a key's base64")
	}
}

// readLog returns Caddy's log file, failing the test when it is empty.
func readLog(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil || len(b) == 0 {
		t.Fatalf("Caddy's log is empty (%v): the leak check would prove nothing", err)
	}
	return string(b)
}

// TestE2ESharedCachePrivateKey: three blocks of one client in one Caddy,
// each its own source (their client_key placeholders differ), share one
// file_system storage: /one and /two read the same key (the same file's
// contents on two hosts), /three another key, one the token endpoint has
// not registered (a member of the fleet whose key was changed too early).
// The entry is encrypted under the key-derived secret: /two adopts /one's
// token without a token request; /three reads the same entry as a miss,
// asks the token endpoint, and is refused (502) — it never serves the
// token of a key it does not hold. The entry shows neither the token nor
// a key.
func TestE2ESharedCachePrivateKey(t *testing.T) {
	e := newE2E(t, time.Hour)
	dir, storage := t.TempDir(), t.TempDir()
	good, stranger := newECKey(t, elliptic.P256()), newECKey(t, elliptic.P256())
	goodPEM, strangerPEM := pkcs8PEM(t, good), pkcs8PEM(t, stranger)
	for name, content := range map[string]string{"one.pem": goodPEM, "two.pem": goodPEM, "three.pem": strangerPEM} {
		writeFile(t, filepath.Join(dir, name), content)
	}
	const clientID = "pk-fleet"
	as, tokenURL := startAssertionServer(t, clientID, "", &good.PublicKey, "ES256", time.Hour)
	up, upstream := newAuthRecorder(t)
	var site strings.Builder
	fmt.Fprintf(&site, "%s {\n", e.base)
	for _, name := range []string{"one", "two", "three"} {
		fmt.Fprintf(&site, `	handle /%s/* {
		desko_auth {
			auth_style private_key_jwt
			client_id  %s
			client_key {file.%s}
			token_url  %s
			warm_up    off
			shared_cache {
				storage file_system %s
			}
		}
		reverse_proxy %s
	}
`, name, clientID, filepath.Join(dir, name+".pem"), tokenURL, storage, upstream)
	}
	site.WriteString("}\n")
	e.loadRaw(site.String())

	if s, _, body := e.do("GET", "/one/a", ""); s != 200 {
		t.Fatalf("/one: %d %s (server: %v)", s, body, as.Reasons())
	}
	tokens := as.Tokens()
	if len(tokens) != 1 {
		t.Fatalf("the server issued %q, want one token", tokens)
	}
	if s, _, body := e.do("GET", "/two/a", ""); s != 200 {
		t.Fatalf("/two: %d %s", s, body)
	}
	if got := up.got("/two/a"); len(got) != 1 || got[0] != "Bearer "+tokens[0] || as.Requests() != 1 {
		t.Fatalf("/two's upstream saw %q after %d token requests; want /one's token, adopted from the shared cache without a token request", got, as.Requests())
	}
	s, _, body := e.do("GET", "/three/a", "")
	if s != http.StatusBadGateway || decodeErr(t, body).Message != msgRefused {
		t.Fatalf("/three (another key): %d %s; want 502, refused", s, body)
	}
	if len(up.got("/three/a")) != 0 || as.Requests() != 2 || as.Refused() != 1 {
		t.Fatalf("/three: forwarded %q; %d token requests, %d refused; want nothing forwarded after its own, refused, token request",
			up.got("/three/a"), as.Requests(), as.Refused())
	}
	logs := readLog(t, e.logFile)
	if n := strings.Count(logs, "token adopted from the shared cache"); n != 1 {
		t.Errorf("%d adoptions logged, want 1 (/two's)", n)
	}

	entries, err := filepath.Glob(filepath.Join(storage, "desko_auth", "tokens", "*.json"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("stored entries %v (%v), want one, shared by the three", entries, err)
	}
	raw, err := os.ReadFile(entries[0])
	if err != nil {
		t.Fatal(err)
	}
	secrets := append(scrubtest.PEMForms(goodPEM), scrubtest.PEMForms(strangerPEM)...)
	lc := scrubtest.NewCheckWith(clientID, secrets, tokens...)
	lc.AssertNone(t, "the stored entry", string(raw))
	lc.AssertNone(t, "Caddy's DEBUG log", logs)
}
