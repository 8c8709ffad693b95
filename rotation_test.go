package deskoauth

import (
	"encoding/json"
	"fmt"
	"io"
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

// TestRotationThroughCaddyReload rotates the client secret behind a
// {file.*} placeholder and runs `caddy reload --force` on a real Caddy
// process while a request is in flight: the in-flight request completes;
// the source, which the placeholder identifies, is kept with its valid
// token (a reload costs no token request); the next token request (here
// forced through the admin API) uses the new secret.
func TestRotationThroughCaddyReload(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Caddy process")
	}
	t.Parallel() // with the fleet tests: it uses no in-process Caddy
	bin := buildCaddy(t)
	// The secrets share no 8 bytes with the client ID or anything else the
	// log holds: the leak check counts any 8 bytes of a secret as a leak.
	const oldSecret, newSecret = "0ld-K7f9Qz2L-s3cr3t", "n3w-P4w8Xc1V-s3cr3t"
	desko := deskotest.New("rotation-client", oldSecret, time.Hour)
	srv := httptest.NewServer(desko)
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "desko-secret")
	if err := os.WriteFile(secretFile, []byte(oldSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, admin := freePort(t), freePort(t)
	logFile := filepath.Join(dir, "caddy.log")
	cfg := fmt.Sprintf(`{
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
		client_id     rotation-client
		client_secret {file.%s}
		token_url     %s%s
		warm_up       off
	}
	reverse_proxy %s
}
`, admin, logFile, port, secretFile, srv.URL, deskotest.TokenPath, srv.Listener.Addr())
	env := runCaddy(t, bin, dir, cfg, port)

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			return -1, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if s, body := get("/ready"); s != 200 {
		t.Fatalf("first request: %d %s", s, body)
	}
	if n := desko.TokenRequests(); n != 1 {
		t.Fatalf("token requests = %d, want 1", n)
	}

	// A request in flight across the reload.
	type result struct {
		status int
		body   string
	}
	inflight := make(chan result, 1)
	before := desko.APIRequests()
	go func() {
		s, b := get(deskotest.SlowPrefix + "in-flight")
		inflight <- result{s, b}
	}()
	// Wait until it has reached the upstream, which then holds it for
	// SlowDelay.
	waitFor(t, "the slow request to reach the upstream", func() bool { return desko.APIRequests() != before })

	// Rotate: the server now accepts only the new secret; tokens already
	// issued stay valid. Then reload (forced: the config text is the same).
	desko.SetClientSecret(newSecret)
	if err := os.WriteFile(secretFile, []byte(newSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload := exec.Command(bin, "reload", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile",
		"--address", fmt.Sprintf("127.0.0.1:%d", admin), "--force")
	reload.Env = env
	if b, err := reload.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload --force: %v: %s", err, b)
	}

	r := waitChan(t, inflight, "the request in flight during the reload")
	if r.status != 200 || !strings.Contains(r.body, `"ok":true`) {
		t.Fatalf("the request in flight during the reload got %d %s", r.status, r.body)
	}
	s, body := get("/after-reload")
	var a struct {
		Serial int `json:"token_serial"`
	}
	_ = json.Unmarshal([]byte(body), &a)
	if s != 200 || a.Serial != 1 || desko.TokenRequests() != 1 {
		t.Fatalf("after the reload: %d, token #%d after %d token requests; want 200 with token #1 after 1: %s", s, a.Serial, desko.TokenRequests(), body)
	}
	refresh, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/desko_auth/refresh", admin), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	refresh.Body.Close()
	if s, body = get("/after-refresh"); s != 200 {
		t.Fatalf("after the refresh: %d %s", s, body)
	}
	_ = json.Unmarshal([]byte(body), &a)
	if a.Serial != 2 || desko.TokenRequests() != 2 {
		t.Errorf("after the refresh the upstream saw token #%d after %d token requests, want #2 after 2", a.Serial, desko.TokenRequests())
	}
	if _, sent := desko.LastTokenRequest(); !strings.Contains(string(sent), newSecret) {
		t.Error("the last token request did not use the new secret")
	}

	// One source, kept across the reload, with its two fetches.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/desko_auth/status", admin))
	if err != nil {
		t.Fatal(err)
	}
	statusBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var list []SourceStatus
	if err := json.Unmarshal(statusBody, &list); err != nil || len(list) != 1 || list[0].Fetches != 2 || list[0].Sites != 1 {
		t.Errorf("admin status after rotation: %s", statusBody)
	}

	logs, _ := os.ReadFile(logFile)
	for _, secret := range []string{oldSecret, newSecret} {
		lc := scrubtest.NewCheck("rotation-client", secret, desko.Issued()...)
		lc.AssertNone(t, "Caddy's log", string(logs))
		lc.AssertNone(t, "the admin status", string(statusBody))
	}
}
