package deskoauth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/fleet"
)

// Issue 11 point 1 through Caddy: every storage call of the shared cache
// runs under a deadline, and a storage that does not answer never holds up
// a request. The deadlines here are the behaviour under test: each is a
// context deadline of the code, and every call the test makes is itself
// bounded, so a regression fails instead of hanging. The bounds of the
// store itself are tested in internal/fleet.

// returnsWithin runs f and fails the test if it has not returned within d
// (the goroutine is then left behind: the test binary ends soon anyway).
func returnsWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s has not returned after %v", what, d)
	}
}

// makeFIFO makes a FIFO at the path of storage key under dir: a
// file_system storage's Load of it blocks, ignoring its context, until a
// writer opens it. The test's cleanup lets such a reader go.
func makeFIFO(t *testing.T, dir, key string) string {
	t.Helper()
	path := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	t.Cleanup(func() { unblockFIFO(path) })
	return path
}

// unblockFIFO lets a reader blocked on the FIFO at path go: opening it for
// reading and writing never blocks, and closing it gives the reader EOF.
func unblockFIFO(path string) {
	if f, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		f.Close()
	}
}

// TestE2ESharedCacheFIFOEntry: through Caddy, with a FIFO at the entry's
// path in the shared_cache folder, a client request gets its answer (with a
// token fetched locally) within the token request timeout, so does POST
// /desko_auth/refresh, the metric counts timeouts, and the log has one WARN.
func TestE2ESharedCacheFIFOEntry(t *testing.T) {
	e := newE2E(t, time.Hour)
	dir := t.TempDir()
	makeFIFO(t, dir, fleet.Key(e.tokenURL(), testClientID, []string{"booking.show", "organization.show"}, nil))
	const timeout = 2 * time.Second
	e.load(fmt.Sprintf("warm_up off\n\t\ttimeout %s\n\t\tshared_cache {\n\t\t\tstorage file_system %s\n\t\t}", timeout, dir))

	start := time.Now()
	if s, _, body := e.do("GET", "/fifo", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("the request took %v; want its answer within the token request timeout (%v)", took, timeout)
	}
	returnsWithin(t, timeout+3*time.Second, "POST /desko_auth/refresh", func() {
		if s, body := adminDo(t, "POST", "/desko_auth/refresh"); s != 200 || strings.Contains(body, "refresh_error") {
			t.Errorf("refresh: status %d: %s", s, body)
		}
	})
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("%d token requests, want 2 (the request's, the refresh's)", n)
	}
	_, text := adminDo(t, "GET", "/metrics")
	src := e.label("booking.show", "organization.show")
	if got := metricValue(t, text, "desko_auth_shared_cache_total", map[string]string{"source": src, "result": "timeout"}); got != 2 {
		t.Errorf("shared cache timeouts = %v, want 2", got)
	}
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(logs), "shared token cache unavailable"); n != 1 {
		t.Errorf("%d WARNs about the shared cache, want 1", n)
	}
	e.assertNoLeaks()
}
