package deskoauth

import (
	"encoding/json"
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

// sharedCacheView is the shared_cache section of a source's status, read
// from the admin API's JSON.
type sharedCacheView struct {
	State      string    `json:"state"`
	Since      time.Time `json:"since"`
	LastError  string    `json:"last_error"`
	StuckCalls int       `json:"stuck_calls"`
}

// sharedCacheOf returns the shared_cache section of the status of the one
// token source, nil if it has none.
func (e *e2e) sharedCacheOf() *sharedCacheView {
	e.t.Helper()
	code, body := e.adminDo("GET", "/desko_auth/status")
	var list []struct {
		SharedCache *sharedCacheView `json:"shared_cache"`
	}
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list) != 1 {
		e.t.Fatalf("status endpoint: %d %s (%v), want one source", code, body, err)
	}
	return list[0].SharedCache
}

// logCount is how many lines of Caddy's log have the level and a message
// that contains msg.
func (e *e2e) logCount(level, msg string) int {
	e.t.Helper()
	data, err := os.ReadFile(e.logFile)
	if err != nil {
		e.t.Fatalf("reading Caddy's log: %v", err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Level == level && strings.Contains(entry.Msg, msg) {
			n++
		}
	}
	return n
}

// sharedGauges returns the shared cache gauges of the source src from
// /metrics: degraded and stuck calls (-1 when absent).
func (e *e2e) sharedGauges(src string) (degraded, stuck float64) {
	e.t.Helper()
	_, text := e.adminDo("GET", "/metrics")
	l := map[string]string{"source": src}
	return metricValue(e.t, text, "desko_auth_shared_cache_degraded", l), metricValue(e.t, text, "desko_auth_shared_cache_stuck_calls", l)
}

const (
	msgSharedDown = "shared token cache unavailable"
	msgSharedBack = "shared token cache available again"
)

// TestE2ESharedCacheFIFOEntry: through Caddy, with a FIFO at the entry's
// path in the shared_cache folder, a client request gets its answer (with a
// token fetched locally) within the token request timeout, so does POST
// /desko_auth/refresh, the metric counts timeouts, and the log has one WARN.
//
// Issue 16.5: the status and the gauges show the outage and the read stuck
// in the FIFO. The FIFO is then removed, as an operator would: the read
// stays blocked for ever (a hard link keeps the FIFO, so that the test's
// cleanup can let it go). Without a reload, the shared cache is used again
// within the gate's wait (ten times the 500 ms read wait), and the status,
// the gauges and one INFO say so; the stuck read is still counted.
func TestE2ESharedCacheFIFOEntry(t *testing.T) {
	e := newParallelE2E(t, time.Hour)
	dir := t.TempDir()
	key := fleet.Key(e.tokenURL(), testClientID, []string{"booking.show", "organization.show"}, nil)
	fifo := makeFIFO(t, dir, key)
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
		if s, body := e.adminDo("POST", "/desko_auth/refresh"); s != 200 || strings.Contains(body, "refresh_error") {
			t.Errorf("refresh: status %d: %s", s, body)
		}
	})
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("%d token requests, want 2 (the request's, the refresh's)", n)
	}
	_, text := e.adminDo("GET", "/metrics")
	src := e.label("booking.show", "organization.show")
	if got := metricValue(t, text, "desko_auth_shared_cache_total", map[string]string{"source": src, "result": "timeout"}); got != 2 {
		t.Errorf("shared cache timeouts = %v, want 2", got)
	}
	if n := e.logCount("warn", msgSharedDown); n != 1 {
		t.Errorf("%d WARNs about the shared cache, want 1", n)
	}

	// The outage, as operators see it.
	if sc := e.sharedCacheOf(); sc == nil || sc.State != "degraded" || sc.StuckCalls != 1 || sc.Since.Before(start.Add(-time.Second)) ||
		!strings.Contains(sc.LastError, "the storage does not answer") {
		t.Errorf("during the outage the status shows the shared cache as %+v; want degraded since the request, 1 stuck call, the error", sc)
	}
	if degraded, stuck := e.sharedGauges(src); degraded != 1 || stuck != 1 {
		t.Errorf("during the outage the gauges are degraded=%v stuck_calls=%v; want 1 and 1", degraded, stuck)
	}

	// The FIFO is removed; the read blocked in it stays blocked.
	keep := filepath.Join(t.TempDir(), "fifo")
	if err := os.Link(fifo, keep); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unblockFIFO(keep) })
	if err := os.Remove(fifo); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	entry := filepath.Join(dir, filepath.FromSlash(key))
	var lastRefresh time.Time
	waitFor(t, "the shared cache to store a token again, without a reload", func() bool {
		// Pacing: a forced refresh (a fetch) every 200 ms at most.
		if time.Since(lastRefresh) >= 200*time.Millisecond {
			lastRefresh = time.Now()
			if s, body := e.adminDo("POST", "/desko_auth/refresh"); s != 200 || strings.Contains(body, "refresh_error") {
				t.Errorf("refresh: status %d: %s", s, body)
			}
		}
		fi, err := os.Lstat(entry)
		return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
	})
	// The gate's wait (10 × 500 ms) began before the removal.
	t.Logf("the shared cache was used again %v after the FIFO was removed, %v after the first request", time.Since(removed), time.Since(start))
	if took := time.Since(removed); took > 5*time.Second+2*time.Second {
		t.Errorf("the shared cache was used again %v after the FIFO was removed; want within the gate's 5 s wait", took)
	}
	if sc := e.sharedCacheOf(); sc == nil || sc.State != "ok" || sc.StuckCalls != 1 || sc.Since.Before(removed) || sc.LastError != "" {
		t.Errorf("after the recovery the status shows the shared cache as %+v; want ok since the recovery, the blocked read still counted", sc)
	}
	if degraded, stuck := e.sharedGauges(src); degraded != 0 || stuck != 1 {
		t.Errorf("after the recovery the gauges are degraded=%v stuck_calls=%v; want 0 and 1", degraded, stuck)
	}
	if w, i := e.logCount("warn", msgSharedDown), e.logCount("info", msgSharedBack); w != 1 || i != 1 {
		t.Errorf("%d WARNs and %d INFOs about the shared cache, want 1 and 1", w, i)
	}
	data, _ := os.ReadFile(entry)
	e.leakCheck().AssertNone(t, "the stored entry", string(data))
	e.assertNoLeaks()
}

// TestE2ESharedCacheReadOnlyStorage: a shared_cache storage that can be
// read but not written (no lock can be taken: the locks folder is a file,
// since root writes into a read-only folder) is one outage for as long as
// it lasts: one WARN over many refreshes of short tokens, never an "available
// again" from the reads that work; the status and the gauge say degraded.
func TestE2ESharedCacheReadOnlyStorage(t *testing.T) {
	e := newParallelE2E(t, 2*time.Second)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "locks"), []byte("not a folder"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	e.load("shared_cache {\n\t\t\tstorage file_system " + dir + "\n\t\t}")
	if s, _, body := e.do("GET", "/ro", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	const fetches = 3 // the first token and two refreshes, each a read and a failed lock
	waitFor(t, fmt.Sprintf("%d token requests", fetches), func() bool { return e.desko.TokenRequests() >= fetches })
	if s, _, body := e.do("GET", "/ro", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	src := e.label("booking.show", "organization.show")
	_, text := e.adminDo("GET", "/metrics")
	if got := metricValue(t, text, "desko_auth_shared_cache_total", map[string]string{"source": src, "result": "error"}); got < fetches {
		t.Errorf("shared cache errors = %v, want at least %d (one per fetch)", got, fetches)
	}
	if w, i := e.logCount("warn", msgSharedDown), e.logCount("info", msgSharedBack); w != 1 || i != 0 {
		t.Errorf("%d WARNs and %d INFOs about the shared cache over %d fetches; want one WARN for the one outage", w, i, e.desko.TokenRequests())
	}
	if sc := e.sharedCacheOf(); sc == nil || sc.State != "degraded" || !strings.Contains(sc.LastError, "lock") {
		t.Errorf("the status shows the shared cache as %+v; want degraded, with the lock's error", sc)
	}
	if degraded, _ := e.sharedGauges(src); degraded != 1 {
		t.Errorf("the degraded gauge is %v, want 1", degraded)
	}
	e.assertNoLeaks()
}
