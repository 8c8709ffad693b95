package deskoauth

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/deskoproxy/caddy-desko-auth/internal/fleet"
)

// Issue 11 point 6: `caddy validate` (and `caddy adapt --validate`)
// provision the module but never run it: no token request may leave, and
// nothing may be written to the shared storage. The warm-up waits for the
// config to run instead.

const validateSecret = "validate-s3cr3t-never-sent"

// validateCaddyfile is a complete Caddyfile with desko_auth in cluster mode
// over a file_system storage in sharedDir.
func validateCaddyfile(storageDir, sharedDir, tokenURL string) string {
	return fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	storage file_system %s
}
http://127.0.0.1:9 {
	desko_auth {
		client_id     validate-client
		client_secret {env.DESKO_VALIDATE_SECRET}
		token_url     %s
		shared_cache {
			storage file_system %s
		}
	}
	reverse_proxy 127.0.0.1:9
}
`, storageDir, tokenURL, sharedDir)
}

// filesUnder lists the files (not directories) under dir.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestValidateSendsNoTokenRequest runs caddy.Validate, what `caddy
// validate` does, on a config with desko_auth in cluster mode: no token
// request reaches the endpoint and nothing is written to the shared
// storage (before the fix, the warm-up fetched a token and stored it, lock
// file included).
func TestValidateSendsNoTokenRequest(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	t.Setenv("DESKO_VALIDATE_SECRET", validateSecret)
	storageDir, sharedDir := t.TempDir(), t.TempDir()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("no caddyfile adapter")
	}
	cfgJSON, warnings, err := adapter.Adapt([]byte(validateCaddyfile(storageDir, sharedDir, srv.tokenURL())), nil)
	if err != nil {
		t.Fatalf("adapting: %v (%v)", err, warnings)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("Validate: %v", err)
	}

	// Validation is over and its context cancelled: the warm-up must give
	// up.
	waitFor(t, "the warm-ups to give up after validation", func() bool { return warmUpWaiters.Load() == 0 })
	// Nothing is left that could send a request. A regression (a warm-up
	// started at Provision) sends one within milliseconds. A request that
	// is not sent is no event to wait for: this is the one bounded look
	// for an absence in the tests, short, and only long enough to see such
	// a regression rather than pass by luck.
	select {
	case <-srv.arrived:
		t.Errorf("validation sent a token request")
	case <-time.After(300 * time.Millisecond):
	}
	if n := srv.count(); n != 0 {
		t.Errorf("validation sent %d token requests, want 0", n)
	}
	if files := filesUnder(t, sharedDir); len(files) != 0 {
		t.Errorf("validation wrote to the shared storage: %v", files)
	}
}

// TestCaddyValidateCommandSendsNoTokenRequest: the same through the
// `caddy validate` command of a real Caddy binary. Once it has exited and
// the token server has finished every request it got, the count is final.
func TestCaddyValidateCommandSendsNoTokenRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	bin := buildCaddy(t)
	srv := newTokenServer(t, okToken(3600))
	dir, storageDir, sharedDir := t.TempDir(), t.TempDir(), t.TempDir()
	cfgFile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgFile, []byte(validateCaddyfile(storageDir, sharedDir, srv.tokenURL())), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"validate", "--config", cfgFile, "--adapter", "caddyfile"},
		{"adapt", "--config", cfgFile, "--adapter", "caddyfile", "--validate"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "DESKO_VALIDATE_SECRET="+validateSecret)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("caddy %s: %v\n%s", args[0], err, out)
		}
	}
	srv.Close() // waits for the requests in progress
	if n := srv.count(); n != 0 {
		t.Errorf("caddy validate / adapt --validate sent %d token requests, want 0", n)
	}
	if files := filesUnder(t, sharedDir); len(files) != 0 {
		t.Errorf("caddy validate wrote to the shared storage: %v", files)
	}
}

// TestE2EWarmUpWithSharedCacheWhenRunning: the same kind of config, run,
// warms up: one token request, and the entry lands in the shared storage,
// before any client request.
func TestE2EWarmUpWithSharedCacheWhenRunning(t *testing.T) {
	e := newE2E(t, time.Hour)
	dir := t.TempDir()
	e.load("shared_cache {\n\t\t\tstorage file_system " + dir + "\n\t\t}")
	entry := filepath.Join(dir, filepath.FromSlash(fleet.Key(e.tokenURL(), testClientID, []string{"booking.show", "organization.show"}, nil)))
	if !eventually(func() bool {
		_, err := os.Stat(entry)
		return err == nil && e.desko.TokenRequests() == 1
	}) {
		t.Fatalf("no warm-up after the config started: %d token requests, entry files %v", e.desko.TokenRequests(), filesUnder(t, dir))
	}
	if s, _, body := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1: the request should find the warm token", n)
	}
}

// Issue 16.3: `caddy validate` refuses replay sizes above their maxima,
// naming the subdirective and the maximum, and accepts the maxima.
func TestValidateRefusesReplaySizesAboveTheMaxima(t *testing.T) {
	t.Setenv("DESKO_VALIDATE_SECRET", validateSecret)
	config := func(sizes string) *caddy.Config {
		t.Helper()
		raw := fmt.Sprintf(`{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:9"], "routes": [{"handle": [
			{"handler": "desko_auth", "client_id": "validate-client", "client_secret": "{env.DESKO_VALIDATE_SECRET}",
			 "token_url": "http://127.0.0.1:9/token", "warm_up": false, %s}]}]}}}}}`, sizes)
		var cfg caddy.Config
		if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
			t.Fatal(err)
		}
		return &cfg
	}
	if err := caddy.Validate(config(fmt.Sprintf(`"replay_body_limit": %d, "replay_memory": %d`, MaxReplayBodyLimit, MaxReplayMemory))); err != nil {
		t.Errorf("the maxima: %v", err)
	}
	for _, tt := range []struct{ sizes, want string }{
		{`"replay_body_limit": 4398046511104`, "replay_body_limit: 4398046511104 bytes (4.0 TiB) is above the maximum, 64 MiB (67108864 bytes)"},
		{`"replay_memory": 8796093022208`, "replay_memory: 8796093022208 bytes (8.0 TiB) is above the maximum, 4.0 GiB (4294967296 bytes)"},
		{fmt.Sprintf(`"replay_body_limit": %d`, MaxReplayBodyLimit+1), "replay_body_limit: 67108865 bytes"},
		{fmt.Sprintf(`"replay_memory": %d`, MaxReplayMemory+1), "replay_memory: 4294967297 bytes"},
	} {
		err := caddy.Validate(config(tt.sizes))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate = %v, want an error with %q", tt.sizes, err, tt.want)
		}
	}
}
