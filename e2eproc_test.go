package deskoauth

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The end-to-end tests that mostly wait (for tokens to age, refreshes to
// come due, a storage gate to open) would keep the in-process Caddy, and
// so every other test, waiting with them. They run instead against a
// Caddy process of their own (the binary of caddybin_test.go) on ports of
// their own, all at once and beside the in-process tests: the package's
// tests take about as long as the longest of the two, not the sum.
//
// What they lose is -race inside Caddy: the process is built without it.
// The in-process tests keep the race detector on the handler and the
// engine; the engine's own tests run every time-driven path under -race.

// caddyProc is a test's own Caddy process, started by its first load.
type caddyProc struct {
	bin, dir                       string
	httpPort, httpsPort, adminPort int
	env                            []string
	started                        bool
}

// newParallelE2E is newE2E with a Caddy process of the test's own, and
// marks the test parallel. The process starts at the first load, with the
// environment setenv gave it.
func newParallelE2E(t *testing.T, ttl time.Duration) *e2e {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a Caddy process")
	}
	t.Parallel()
	bin := buildCaddy(t)
	ports, err := freeLoopbackPorts(3)
	if err != nil {
		t.Fatal(err)
	}
	p := &caddyProc{bin: bin, dir: t.TempDir(), httpPort: ports[0], httpsPort: ports[1], adminPort: ports[2]}
	client := &http.Client{Timeout: caddyTestTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(client.CloseIdleConnections)
	e := newWorld(t, ttl, fmt.Sprintf("http://127.0.0.1:%d", p.httpPort), fmt.Sprintf("http://127.0.0.1:%d", p.adminPort), client)
	e.proc = p
	e.setenv("DESKO_TEST_SECRET", testSecret)
	return e
}

// globals are the process's global options: its ports, and its admin API
// on one of them.
func (p *caddyProc) globals() string {
	return fmt.Sprintf(`	admin 127.0.0.1:%d
	http_port %d
	https_port %d
	persist_config off`, p.adminPort, p.httpPort, p.httpsPort)
}

func (p *caddyProc) setenv(t *testing.T, key, value string) {
	t.Helper()
	if p.started {
		t.Fatalf("setenv %s after Caddy started: the process would not see it", key)
	}
	p.env = append(p.env, key+"="+value)
}

// load starts the process on cfg, or loads cfg through its admin API as
// caddytest does for the in-process Caddy: the call returns once the
// config runs.
func (p *caddyProc) load(t *testing.T, cfg string) {
	t.Helper()
	if !p.started {
		p.started = true
		runCaddy(t, p.bin, p.dir, cfg, p.httpPort, p.env...)
		return
	}
	req, err := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/load", p.adminPort), strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := (&http.Client{Timeout: caddyTestTimeout}).Do(req)
	if err != nil {
		t.Fatalf("loading a config: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("loading a config: %d %s\n%s", resp.StatusCode, body, cfg)
	}
}
