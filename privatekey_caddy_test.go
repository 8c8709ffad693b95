package deskoauth

import (
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// private_key_jwt through the built Caddy binary: what `caddy validate`
// and `caddy run` say of a key that cannot sign.

// pkValidateConfig is a Caddyfile whose one desko_auth block signs with
// clientKey (the client_key argument as written) and holds the extra
// lines.
func pkValidateConfig(clientKey string, extra ...string) string {
	return fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
}
http://127.0.0.1:9 {
	desko_auth {
		auth_style private_key_jwt
		client_id  validate-pk
		client_key %s
		token_url  http://127.0.0.1:9/token
		%s
	}
	respond ok
}
`, clientKey, strings.Join(extra, "\n\t\t"))
}

// runCaddyCommand runs the Caddy binary with args on the Caddyfile cfg,
// written into dir, and returns its exit status and output.
func runCaddyCommand(t *testing.T, dir, cfg string, args ...string) (int, string) {
	t.Helper()
	file := filepath.Join(dir, "Caddyfile")
	writeFile(t, file, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, buildCaddy(t), append(args, "--config", file, "--adapter", "caddyfile")...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	b, err := cmd.CombinedOutput()
	out := logMessages(string(b))
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &exit):
		return exit.ExitCode(), out
	}
	t.Fatalf("caddy %s: %v", args[0], err)
	return 0, ""
}

// logMessages is Caddy's output with each JSON log line replaced by its
// level, msg and error fields, unescaped; other lines are kept.
func logMessages(out string) string {
	var b strings.Builder
	for line := range strings.Lines(out) {
		var entry struct{ Level, Msg, Error string }
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg == "" {
			b.WriteString(line)
			continue
		}
		fmt.Fprintf(&b, "%s: %s", entry.Level, entry.Msg)
		if entry.Error != "" {
			fmt.Fprintf(&b, ": %s", entry.Error)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// selfSignedCert is a PEM certificate: what is given by mistake for a
// key.
func selfSignedCert(t *testing.T) string {
	t.Helper()
	k := newECKey(t, elliptic.P256())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "desko client"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("CERTIFICATE", der)
}

// TestCaddyValidateClientKey: `caddy validate` reads the key, checks that
// it parses and fits the algorithm, and signs once: a key that cannot sign
// is a load error that names client_key (or client_key_alg) and never
// quotes the key, not a 502 at the first request. `caddy run` refuses to
// start with the same message.
func TestCaddyValidateClientKey(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	t.Parallel()
	keys := pkKeys(t)
	rsaKey, ecKey := keys[0], keys[4] // RSA PKCS#8, P-256 PKCS#8
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallPEM := pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small))
	// Encrypted keys: PKCS#8 (openssl genpkey -aes256) and OpenSSL's
	// traditional form (openssl genrsa -aes256), with made-up ciphertext:
	// the module refuses them on their form alone.
	ciphertext := make([]byte, 1200)
	_, _ = rand.Read(ciphertext)
	encrypted8 := pemOf("ENCRYPTED PRIVATE KEY", ciphertext)
	encrypted1 := "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,0F1E2D3C4B5A69788796A5B4C3D2E1F0\n\n" +
		strings.Join(scrubtest.PEMForms(pemOf("X", ciphertext))[2:], "\n") + "\n-----END RSA PRIVATE KEY-----\n"

	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, content)
		return "{file." + p + "}"
	}
	literal := "`" + ecKey.pem + "`" // a Caddyfile backtick string: the PEM as it is
	for _, tc := range []struct {
		name      string
		clientKey string
		extra     []string
		want      []string // in the output, in this order
	}{
		{"a missing file", "{file." + filepath.Join(dir, "absent.pem") + "}", nil,
			[]string{"client_key: placeholder {file." + filepath.Join(dir, "absent.pem") + "} expanded to an empty value"}},
		{"an unset variable", "{env.DESKO_PK_UNSET}", nil, []string{"client_key: placeholder {env.DESKO_PK_UNSET} expanded to an empty value"}},
		{"a file that is not PEM", file("notpem.pem", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG desko@example\n"), nil,
			[]string{"client_key: {file.", "notpem.pem} holds no PEM block"}},
		{"an OpenSSH key", file("openssh.pem", pemOf("OPENSSH PRIVATE KEY", ciphertext)), nil,
			[]string{"client_key:", `holds a "OPENSSH PRIVATE KEY" PEM block, not a private key`}},
		{"a certificate", file("cert.pem", selfSignedCert(t)), nil, []string{"client_key:", `holds a "CERTIFICATE" PEM block, not a private key`}},
		{"an RSA key with client_key_alg ES256", file("rsa.pem", rsaKey.pem), []string{"client_key_alg ES256"},
			[]string{`client_key_alg: "ES256" is not RS256 or PS256`}},
		{"an EC key with client_key_alg PS256", file("ec.pem", ecKey.pem), []string{"client_key_alg PS256"},
			[]string{"client_key: {file.", "ec.pem} holds a key for ES256, not PS256"}},
		{"an encrypted PKCS#8 key", file("enc8.pem", encrypted8), nil, []string{"client_key:", "is an encrypted private key"}},
		{"an encrypted traditional key", file("enc1.pem", encrypted1), nil, []string{"client_key:", "is an encrypted private key"}},
		{"a 1024-bit RSA key", file("small.pem", smallPEM), nil, []string{"client_key:", "holds a 1024-bit RSA key; at least 2048 bits"}},
		{"a literal PEM", literal, nil, []string{"client_key: a literal PEM key would be visible in the admin API's /config/"}},
		{"a path without {file.*}", filepath.Join(dir, "ec.pem"), nil, []string{"client_key: give the key's PEM file as {file./path}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := pkValidateConfig(tc.clientKey, tc.extra...)
			code, out := runCaddyCommand(t, t.TempDir(), cfg, "validate")
			if code == 0 {
				t.Fatalf("caddy validate accepted the config: %s", out)
			}
			if strings.Contains(out, "client_secret is a literal value") {
				t.Errorf("a warning about a client secret the config does not have: %s", out)
			}
			at := 0
			for _, w := range tc.want {
				i := strings.Index(out[at:], w)
				if i < 0 {
					t.Fatalf("caddy validate says %s\nwant %q", out, w)
				}
				at += i + len(w)
			}
			for _, k := range []string{rsaKey.pem, ecKey.pem, smallPEM, encrypted8} {
				scrubtest.NewCheckWith("validate-pk", scrubtest.PEMForms(k)).AssertNone(t, "caddy validate's output", out)
			}
		})
	}

	t.Run("a good key validates", func(t *testing.T) {
		code, out := runCaddyCommand(t, t.TempDir(), pkValidateConfig(file("good.pem", rsaKey.pem), "client_key_alg PS256", "client_key_id k1"), "validate")
		if code != 0 || !strings.Contains(out, "Valid configuration") {
			t.Fatalf("caddy validate: exit %d: %s", code, out)
		}
	})

	t.Run("caddy run refuses to start", func(t *testing.T) {
		dir := t.TempDir()
		code, out := runCaddyCommand(t, dir, pkValidateConfig(file("ec-run.pem", ecKey.pem), "client_key_alg PS256"), "run")
		if code == 0 || !strings.Contains(out, "ec-run.pem} holds a key for ES256, not PS256") {
			t.Fatalf("caddy run: exit %d: %s", code, out)
		}
		scrubtest.NewCheckWith("validate-pk", scrubtest.PEMForms(ecKey.pem)).AssertNone(t, "caddy run's output", out)
	})
}

// TestRotationPrivateKey rotates the private key behind {file.*} in a
// real Caddy process, without a reload, by the rules of rotated secrets:
//
//  1. A file that turns into something that is not a key (a certificate
//     written by mistake) keeps the last good key in use, with a WARN.
//  2. With an overlap (the server registers the new public key beside the
//     old one; the file gets the new key; the old key is retired), the
//     next token request signs with the new key: no request fails.
//  3. A hard rotation (the server switches to a new key at once, and
//     refuses the old): while refused, the source reads the file every
//     second, and the new key is used before the refusal's backoff (at
//     least 4 s) would have ended; the token it had stays in use meanwhile.
//
// The keys change algorithm too (P-256 → Ed25519 → P-384): the algorithm
// follows the key. No form of any of the keys reaches Caddy's log.
func TestRotationPrivateKey(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Caddy process")
	}
	t.Parallel()
	const clientID = "rot-pk-client"
	keyA := pkKey{slug: "a", alg: "ES256"}
	a := newECKey(t, elliptic.P256())
	keyA.pem, keyA.public = pkcs8PEM(t, a), &a.PublicKey
	bPub, bKey := newEd25519Key(t)
	keyB := pkKey{slug: "b", alg: "EdDSA", pem: pkcs8PEM(t, bKey), public: bPub}
	c := newECKey(t, elliptic.P384())
	keyC := pkKey{slug: "c", alg: "ES384", pem: pkcs8PEM(t, c), public: &c.PublicKey}

	as, tokenURL := startAssertionServer(t, clientID, "", keyA.public, keyA.alg, time.Hour)
	up, upstream := newAuthRecorder(t)
	keys := t.TempDir()
	keyFile := filepath.Join(keys, "client.key")
	// Each change of the file is a rename over it, as secret managers do.
	putKey := func(content string) {
		t.Helper()
		tmp := filepath.Join(keys, ".client.key.tmp")
		writeFile(t, tmp, content)
		if err := os.Rename(tmp, keyFile); err != nil {
			t.Fatal(err)
		}
	}
	putKey(keyA.pem)

	dir := t.TempDir()
	port, admin := freePort(t), freePort(t)
	logFile := filepath.Join(dir, "caddy.log")
	runCaddy(t, buildCaddy(t), dir, fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	log {
		output file %s
		level DEBUG
	}
}
http://127.0.0.1:%d {
	desko_auth {
		auth_style private_key_jwt
		client_id  %s
		client_key {file.%s}
		token_url  %s
	}
	reverse_proxy %s
}
`, admin, logFile, port, clientID, keyFile, tokenURL, upstream), port)
	base, adminURL := fmt.Sprintf("http://127.0.0.1:%d", port), fmt.Sprintf("http://127.0.0.1:%d", admin)

	// get sends a request and returns its status and the Authorization
	// the upstream saw for it ("" if it was not forwarded).
	n := 0
	get := func() (int, string) {
		t.Helper()
		n++
		path := fmt.Sprintf("/r%d", n)
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		seen := up.got(path)
		if len(seen) != 1 {
			return resp.StatusCode, ""
		}
		return resp.StatusCode, seen[0]
	}
	refresh := func() string {
		t.Helper()
		resp, err := http.Post(adminURL+"/desko_auth/refresh", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var list []SourceStatus
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || len(list) != 1 {
			t.Fatalf("refresh: %d, %v, %d sources", resp.StatusCode, err, len(list))
		}
		return list[0].RefreshError
	}
	logCount := func(msg string) int {
		b, _ := os.ReadFile(logFile)
		return strings.Count(string(b), `"msg":"`+msg)
	}
	// wantToken checks that a request is forwarded with the server's
	// i-th token (from 1).
	wantToken := func(i int) {
		t.Helper()
		status, auth := get()
		tokens := as.Tokens()
		if status != 200 || len(tokens) < i || auth != "Bearer "+tokens[i-1] {
			t.Fatalf("status %d, upstream saw %q; want 200 with token #%d of %q", status, auth, i, tokens)
		}
	}
	lastAlg := func() any {
		header, _ := assertionParts(t, as.LastAssertion())
		return header["alg"]
	}

	waitFor(t, "the warm-up's token", func() bool { return as.Issued() == 1 })
	wantToken(1)

	// 1. Not a key: the last good one stays in use.
	putKey(selfSignedCert(t))
	if err := refresh(); err != "" {
		t.Fatalf("a refresh with a certificate in the key file: %s", err)
	}
	if as.Issued() != 2 || lastAlg() != "ES256" {
		t.Fatalf("%d tokens issued, the last assertion signed with %v; want 2, with key A (ES256)", as.Issued(), lastAlg())
	}
	if logCount("reading the credentials again failed") != 1 {
		t.Error("no WARN about the key file that holds no key")
	}
	wantToken(2)

	// 2. An overlap: both keys registered, the file changes, the next
	// token request signs with the new key, the old one is retired.
	as.AddKey(keyB.public, keyB.alg)
	putKey(keyB.pem)
	if err := refresh(); err != "" {
		t.Fatalf("the refresh after the file changed: %s", err)
	}
	if as.Issued() != 3 || lastAlg() != "EdDSA" {
		t.Fatalf("%d tokens issued, the last assertion signed with %v; want 3, with key B (EdDSA)", as.Issued(), lastAlg())
	}
	as.SetKey(keyB.public, keyB.alg)
	wantToken(3)
	if n := logCount("credentials changed"); n != 1 {
		t.Errorf("%d 'credentials changed' lines, want 1", n)
	}

	// 3. A hard rotation: the server refuses key B from now on.
	as.SetKey(keyC.public, keyC.alg)
	if err := refresh(); !strings.Contains(err, "Client authentication failed") {
		t.Fatalf("the refresh after the server's switch: %q, want a refusal", err)
	}
	refusedAt := time.Now()
	wantToken(3) // the token it had stays in use while valid
	putKey(keyC.pem)
	waitFor(t, "a token request signed with key C", func() bool { return as.Issued() == 4 })
	if d := time.Since(refusedAt); d >= 4*time.Second {
		t.Errorf("key C was used %v after the refusal: no sooner than the refusal's backoff (≥ 4 s), not by reading the file again", d.Round(time.Millisecond))
	}
	if lastAlg() != "ES384" {
		t.Errorf("the last assertion was signed with %v, want ES384", lastAlg())
	}
	// The server counts a token when it issues it; Caddy uses it once the
	// answer has arrived. Meanwhile requests carry token 3, still valid.
	waitFor(t, "requests carrying token #4", func() bool {
		status, auth := get()
		tokens := as.Tokens()
		if status != 200 || len(tokens) < 4 || (auth != "Bearer "+tokens[2] && auth != "Bearer "+tokens[3]) {
			t.Fatalf("status %d, upstream saw %q; want 200 with token #3, then #4, of %q", status, auth, tokens)
		}
		return auth == "Bearer "+tokens[3]
	})
	if n := logCount("credentials changed"); n != 2 {
		t.Errorf("%d 'credentials changed' lines, want 2", n)
	}
	if n := logCount("token endpoint refused the credentials"); n != 1 {
		t.Errorf("%d ERROR lines about the refusal, want 1", n)
	}

	logs := readLog(t, logFile)
	stdout, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
	var secrets []string
	for _, k := range []pkKey{keyA, keyB, keyC} {
		secrets = append(secrets, k.forms(t)...)
	}
	lc := scrubtest.NewCheckWith(clientID, secrets, as.Tokens()...)
	lc.AssertNone(t, "Caddy's log", logs)
	lc.AssertNone(t, "Caddy's standard output", string(stdout)+"\n(end)")
}
