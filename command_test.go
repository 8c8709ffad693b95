package deskoauth

import (
	"bytes"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// `caddy desko-auth check` through the built binary, against the stand-in.

const (
	checkClientID = "check-client"
	checkSecret   = "Hm4-check-secret-Rt81"
)

// runCheck runs `caddy desko-auth check` on the Caddyfile cfg and returns
// its exit status, standard output and standard error.
func runCheck(t *testing.T, cfg string, args ...string) (int, string, string) {
	t.Helper()
	bin := buildCaddy(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"desko-auth", "check", "--config", file, "--adapter", "caddyfile"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "CHECK_SECRET="+checkSecret)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("running the check: %v", err)
	return 0, "", ""
}

// checkConfig is a Caddyfile with one site per block.
func checkConfig(blocks ...string) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tauto_https off\n}\n")
	for i, blk := range blocks {
		fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tdesko_auth {\n%s\n\t}\n\trespond ok\n}\n", 1+i, blk)
	}
	return b.String()
}

func checkBlock(tokenURL, secret string, extra ...string) string {
	return fmt.Sprintf("\t\tclient_id %s\n\t\tclient_secret %s\n\t\ttoken_url %s\n\t\t%s", checkClientID, secret, tokenURL, strings.Join(extra, "\n\t\t"))
}

func checkRows(t *testing.T, stdout string) []checkRow {
	t.Helper()
	var rows []checkRow
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var r checkRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("output line %q is not a JSON object: %v", line, err)
		}
		rows = append(rows, r)
	}
	return rows
}

func TestCheckCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	t.Parallel()
	desko := deskotest.New(checkClientID, checkSecret, time.Hour)
	srv := httptest.NewServer(desko)
	t.Cleanup(srv.Close)
	tokenURL := srv.URL + deskotest.TokenPath
	// An endpoint that echoes the request body (the secret in it) in
	// base64, raw and JSON-escaped in its refusal.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body bytes.Buffer
		_, _ = body.ReadFrom(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		msg, _ := json.Marshal("could not parse request " + base64.StdEncoding.EncodeToString(body.Bytes()) + " " + body.String())
		fmt.Fprintf(w, `{"error":"invalid_request","error_description":%s}`, msg)
	}))
	t.Cleanup(echo.Close)
	storage := t.TempDir()

	t.Run("every set works", func(t *testing.T) {
		code, stdout, stderr := runCheck(t, checkConfig(
			checkBlock(tokenURL, "{env.CHECK_SECRET}", "scope booking.show"),
			checkBlock(tokenURL, "{env.CHECK_SECRET}", "scope booking.show"), // the same source: checked once
			checkBlock(tokenURL, "{env.CHECK_SECRET}", "scope organization.show", "shared_cache {\n\t\t\tstorage file_system "+storage+"\n\t\t}"),
		), "--json")
		if code != 0 {
			t.Fatalf("exit %d; stdout %s; stderr %s", code, stdout, stderr)
		}
		rows := checkRows(t, stdout)
		if len(rows) != 2 {
			t.Fatalf("%d rows, want 2 (two blocks make one source): %s", len(rows), stdout)
		}
		for _, r := range rows {
			if r.Result != checkOK || r.ClientID != checkClientID || !strings.HasPrefix(r.Source, checkClientID+"@") ||
				r.Lifetime == "" || r.Scopes == "" || r.AuthStyle != "json" || r.RTTMillis <= 0 {
				t.Errorf("row %+v", r)
			}
		}
		if rows[0].Scopes != "booking.show" || rows[1].Scopes != "organization.show" {
			t.Errorf("scopes granted %q and %q", rows[0].Scopes, rows[1].Scopes)
		}
		if n := desko.TokenRequests(); n != 2 {
			t.Errorf("%d token requests, want 2", n)
		}
		if entries, _ := os.ReadDir(storage); len(entries) != 0 {
			t.Errorf("the check wrote to the storage: %v", entries)
		}
		checkClean(t, desko, stdout+stderr)
	})

	t.Run("failures", func(t *testing.T) {
		code, stdout, stderr := runCheck(t, checkConfig(
			checkBlock(tokenURL, "{env.CHECK_SECRET}"),
			checkBlock(tokenURL, "wrong-secret-value"),
			checkBlock(fmt.Sprintf("http://127.0.0.1:%d/token", closedPort(t)), "{env.CHECK_SECRET}"),
			checkBlock(echo.URL+"/token", "{env.CHECK_SECRET}", "auth_style form"),
		))
		if code != 1 {
			t.Fatalf("exit %d, want 1; stdout %s; stderr %s", code, stdout, stderr)
		}
		for _, want := range []string{"ok", "refused: token endpoint answered 401: Client authentication failed",
			"connect: could not connect to the token endpoint (check token_url's host and port, and the network)", "refused: token endpoint answered 400", "form"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("the table lacks %q:\n%s", want, stdout)
			}
		}
		if !strings.Contains(stderr, "3 of 4 credential sets failed") {
			t.Errorf("stderr %q", stderr)
		}
		checkClean(t, desko, stdout+stderr)
		scrubtest.AssertNoEscaping(t, "the check's output", stdout+stderr, checkSecret)
		if strings.Contains(stdout+stderr, "wrong-secret-value") {
			t.Error("the output shows a literal secret")
		}
	})

	t.Run("tenants", func(t *testing.T) {
		// Named credentials are always checked; a credentials_dir's
		// tenants only when named with --tenant.
		dir := t.TempDir()
		for name, secret := range map[string]string{"dir-good": checkSecret, "dir-bad": "Zq7-other-tenant-Lp30"} {
			if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, name, "client_id"), checkClientID+"\n")
			writeFile(t, filepath.Join(dir, name, "client_secret"), secret+"\n")
		}
		writeFile(t, filepath.Join(dir, "dir-good", "scope"), "booking.show\n")
		block := fmt.Sprintf("\t\ttenant {http.request.header.X-Tenant}\n\t\ttoken_url %s\n\t\tcredentials_dir %s\n"+
			"\t\tcredentials acme {\n\t\t\tclient_id %s\n\t\t\tclient_secret {env.CHECK_SECRET}\n\t\t}\n"+
			"\t\tcredentials globex {\n\t\t\tclient_id %s\n\t\t\tclient_secret Wd5-globex-wrong-Ka92\n\t\t}",
			tokenURL, dir, checkClientID, checkClientID)
		before := desko.TokenRequests()
		code, stdout, stderr := runCheck(t, checkConfig(block), "--json")
		if code != 1 {
			t.Fatalf("exit %d, want 1 (globex is refused); stdout %s; stderr %s", code, stdout, stderr)
		}
		rows := checkRows(t, stdout)
		if len(rows) != 2 || rows[0].Tenant != "acme" || rows[0].Result != checkOK || rows[1].Tenant != "globex" || rows[1].Result != checkRefused {
			t.Fatalf("rows %+v, want acme ok and globex refused, and no credentials_dir tenant", rows)
		}
		if n := desko.TokenRequests() - before; n != 2 {
			t.Errorf("%d token requests, want 2", n)
		}

		// acme is also a folder there: the credentials block wins, as it
		// does for requests, and is checked once.
		if err := os.Mkdir(filepath.Join(dir, "acme"), 0o700); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr = runCheck(t, checkConfig(block), "--json", "--tenant", "dir-good,dir-bad,acme", "--tenant", "nobody")
		if code != 1 {
			t.Fatalf("exit %d, want 1; stdout %s; stderr %s", code, stdout, stderr)
		}
		got := map[string]checkRow{}
		all := checkRows(t, stdout)
		for _, r := range all {
			got[r.Tenant] = r
		}
		for tenant, want := range map[string]string{"acme": checkOK, "globex": checkRefused, "dir-good": checkOK, "dir-bad": checkRefused, "nobody": checkUnknownTenant} {
			if r, ok := got[tenant]; !ok || r.Result != want {
				t.Errorf("tenant %s: row %+v, want %s", tenant, r, want)
			}
		}
		if r := got["dir-good"]; r.Scopes != "booking.show" || r.ClientID != checkClientID || !strings.HasPrefix(r.Source, checkClientID+"@") {
			t.Errorf("dir-good: %+v, want its client ID, its scope file's scope and a source label", r)
		}
		if len(all) != 5 || len(got) != 5 {
			t.Errorf("%d rows for %d tenants, want 5 (one each): %s", len(all), len(got), stdout)
		}
		checkClean(t, desko, stdout+stderr)
		for _, other := range []string{"Zq7-other-tenant-Lp30", "Wd5-globex-wrong-Ka92"} {
			scrubtest.NewCheck(checkClientID, other).AssertNone(t, "the check's output", stdout+stderr)
		}

		// A tenant block with a folder only: nothing to check without --tenant.
		dirOnly := fmt.Sprintf("\t\ttenant {http.request.header.X-Tenant}\n\t\ttoken_url %s\n\t\tcredentials_dir %s", tokenURL, dir)
		if code, stdout, stderr := runCheck(t, checkConfig(dirOnly)); code != 1 || !strings.Contains(stderr, "name their tenants with --tenant") {
			t.Errorf("a folder-only tenant block without --tenant: exit %d, want 1 saying to name tenants; stdout %s; stderr %s", code, stdout, stderr)
		}

		// A tenant value that could leave the folder is refused as input.
		for _, bad := range []string{"../dir-good", "/etc", ".hidden", "a/b"} {
			if code, stdout, stderr := runCheck(t, checkConfig(block), "--tenant", bad); code != 2 || !strings.Contains(stderr, "a tenant name is") {
				t.Errorf("--tenant %q: exit %d, want 2 naming the rule; stdout %s; stderr %s", bad, code, stdout, stderr)
			}
		}
	})

	t.Run("invalid config", func(t *testing.T) {
		cfg := checkConfig("\t\tclient_id x")
		code, stdout, stderr := runCheck(t, cfg)
		if code != 2 || !strings.Contains(stderr, "client_secret: is required") {
			t.Fatalf("exit %d, want 2 with the validate message; stdout %s; stderr %s", code, stdout, stderr)
		}
		// The message caddy validate gives.
		dir := t.TempDir()
		file := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(buildCaddy(t), "validate", "--config", file, "--adapter", "caddyfile").CombinedOutput()
		want := "provision http.handlers.desko_auth: client_secret: is required"
		if !strings.Contains(string(out), want) || !strings.Contains(stderr, want) {
			t.Errorf("validate says %s; check says %s; both should say %q", out, stderr, want)
		}
	})
}

// checkClean fails t when text holds the secret or an issued token.
func checkClean(t *testing.T, desko *deskotest.Server, text string) {
	t.Helper()
	scrubtest.NewCheck(checkClientID, checkSecret, desko.Issued()...).AssertNone(t, "the check's output", text)
}

// `caddy desko-auth check` on the JWT styles: each row names the style and,
// for private_key_jwt, the key ID, in JSON and in the table; a key the
// server did not register is refused. The output shows no form of a key,
// nor the HMAC secret, nor a token.
func TestCheckCommandJWTStyles(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	t.Parallel()
	dir := t.TempDir()
	registered, unregistered := newECKey(t, elliptic.P256()), newECKey(t, elliptic.P256())
	regPEM, unregPEM := pkcs8PEM(t, registered), pkcs8PEM(t, unregistered)
	writeFile(t, filepath.Join(dir, "registered.pem"), regPEM)
	writeFile(t, filepath.Join(dir, "unregistered.pem"), unregPEM)
	ok, okURL := startAssertionServer(t, "check-pk", "", &registered.PublicKey, "ES256", time.Hour)
	_, refusedURL := startAssertionServer(t, "check-pk-2", "", &registered.PublicKey, "ES256", time.Hour)
	hs, hsURL := startAssertionServer(t, "check-hs", "", []byte(hmacSecret), "HS256", time.Hour)
	cfg := checkConfig(
		"\t\tauth_style private_key_jwt\n\t\tclient_id check-pk\n\t\tclient_key {file."+filepath.Join(dir, "registered.pem")+"}\n\t\tclient_key_id kid-check-7\n\t\ttoken_url "+okURL,
		"\t\tauth_style private_key_jwt\n\t\tclient_id check-pk-2\n\t\tclient_key {file."+filepath.Join(dir, "unregistered.pem")+"}\n\t\ttoken_url "+refusedURL,
		"\t\tauth_style client_secret_jwt\n\t\tclient_id check-hs\n\t\tclient_secret "+hmacSecret+"\n\t\ttoken_url "+hsURL,
	)
	secrets := append(scrubtest.PEMForms(regPEM), scrubtest.PEMForms(unregPEM)...)
	clean := func(what, out string) {
		t.Helper()
		lc := scrubtest.NewCheckWith("check-hs", append([]string{hmacSecret}, secrets...), append(ok.Tokens(), hs.Tokens()...)...)
		lc.AssertNone(t, what, out)
	}

	code, stdout, stderr := runCheck(t, cfg, "--json")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (one set refused); stdout %s; stderr %s", code, stdout, stderr)
	}
	rows := checkRows(t, stdout)
	want := []checkRow{
		{ClientID: "check-pk", AuthStyle: "private_key_jwt", KeyID: "kid-check-7", Result: checkOK},
		{ClientID: "check-pk-2", AuthStyle: "private_key_jwt", Result: checkRefused},
		{ClientID: "check-hs", AuthStyle: "client_secret_jwt", Result: checkOK},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d: %s", len(rows), len(want), stdout)
	}
	for i, w := range want {
		r := rows[i]
		if r.ClientID != w.ClientID || r.AuthStyle != w.AuthStyle || r.KeyID != w.KeyID || r.Result != w.Result {
			t.Errorf("row %d: %+v, want %+v", i, r, w)
		}
	}
	if !strings.Contains(rows[1].Reason, "signature is invalid") {
		t.Errorf("the refused row's reason %q does not say why", rows[1].Reason)
	}
	if strings.Contains(stdout, `"key_id":""`) {
		t.Errorf("an empty key_id is shown: %s", stdout)
	}
	clean("the check's JSON output", stdout+stderr)

	code, table, stderr := runCheck(t, cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stdout %s; stderr %s", code, table, stderr)
	}
	lines := strings.Split(strings.TrimSpace(table), "\n")
	// The KEY ID column follows STYLE, aligned with the key IDs.
	if col := strings.Index(lines[0], "KEY ID"); len(lines) != 4 || col < strings.Index(lines[0], "STYLE") ||
		col != strings.Index(lines[1], "kid-check-7") {
		t.Fatalf("the table: %s", table)
	}
	for i, fields := range [][]string{
		{"check-pk", "private_key_jwt", "kid-check-7", "ok"},
		{"check-pk-2", "private_key_jwt", "-", "refused:"},
		{"check-hs", "client_secret_jwt", "-", "ok"},
	} {
		got := strings.Fields(lines[i+1])
		if len(got) < 6 || got[1] != "-" || got[2] != fields[0] || got[3] != fields[1] || got[4] != fields[2] || got[5] != fields[3] {
			t.Errorf("table row %d: %q, want source, %s", i+1, lines[i+1], strings.Join(fields, ", "))
		}
	}
	clean("the check's table", table+stderr)
}
