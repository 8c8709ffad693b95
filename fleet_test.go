package deskoauth

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// The fleet tests run two real Caddy processes (built from
// ./internal/caddycmd, the program xcaddy would build) that share one
// file_system storage folder, under concurrent load through short-lived
// tokens, against one Desko stand-in. Everything is on loopback.

const (
	fleetClientID = "fleet-client"
	fleetSecret   = "fleet-s3cr3t-never-in-logs"
	// fleetTTL is the lifetime of the stand-in's tokens: short, so that a
	// load of a few seconds spans two refreshes.
	fleetTTL = 3 * time.Second
	// fleetDefaultSeconds is how long the main load runs by default: the
	// shortest for which checkFleetBounds holds. The fleet tests run in
	// parallel with each other, so the whole takes about this long.
	fleetDefaultSeconds = 6

	// revocationBurst and revocationEvery are the token source's budget of
	// token requests that upstream 401s may cause: a burst, then one per
	// revocationEvery (internal/token's, which keeps them unexported; the
	// bound below is only as tight as they are).
	revocationBurst = 6
	revocationEvery = 10 * time.Second
)

// fleetDuration is how long each load runs: fleetDefaultSeconds, or
// DESKO_FLEET_SECONDS (e.g. 20 for a longer soak).
func fleetDuration(t *testing.T) time.Duration {
	s := fleetDefaultSeconds
	if v := os.Getenv("DESKO_FLEET_SECONDS"); v != "" {
		if _, err := fmt.Sscan(v, &s); err != nil || s < fleetDefaultSeconds {
			t.Fatalf("DESKO_FLEET_SECONDS=%q: want a whole number ≥ %d", v, fleetDefaultSeconds)
		}
	}
	return time.Duration(s) * time.Second
}

// freePort returns a loopback port that was free a moment ago, below the
// ephemeral range (see freeLoopbackPorts).
func freePort(t *testing.T) int {
	t.Helper()
	ports, err := freeLoopbackPorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

// runCaddy runs `caddy run` on the Caddyfile cfg in dir, with extra
// environment variables, until the test ends, and waits until port
// accepts connections.
func runCaddy(t *testing.T, bin, dir, cfg string, port int, env ...string) []string {
	t.Helper()
	cfgFile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgFile, "--adapter", "caddyfile")
	cmd.Env = append(append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir), env...)
	out, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		out.Close()
	})
	gone := false
	listening := eventually(func() bool {
		select {
		case <-exited:
			gone = true
			return true
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if gone || !listening {
		b, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
		if gone {
			t.Fatalf("Caddy exited before listening on %d: %s", port, b)
		}
		t.Fatalf("Caddy did not start listening on %d within %v: %s", port, waitLimit, b)
	}
	return cmd.Env
}

// startCaddy runs one Caddy process of the fleet, with a site on a free
// loopback port, and returns the site's base URL and its log file.
func startCaddy(t *testing.T, bin, storageDir, desko, block string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	logFile := filepath.Join(dir, "caddy.log")
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
}
http://127.0.0.1:%d {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_FLEET_SECRET}
		token_url     %s%s
		%s
	}
	reverse_proxy %s
}
`, storageDir, logFile, port, fleetClientID, desko, deskotest.TokenPath, block, strings.TrimPrefix(desko, "http://"))
	runCaddy(t, bin, dir, cfg, port, "DESKO_FLEET_SECRET="+fleetSecret)
	return fmt.Sprintf("http://127.0.0.1:%d", port), logFile
}

// loadResult counts what the clients saw.
type loadResult struct {
	requests, ok, unauthorized, other atomic.Int64
}

func (r *loadResult) String() string {
	return fmt.Sprintf("%d requests: %d ok, %d 401, %d other", r.requests.Load(), r.ok.Load(), r.unauthorized.Load(), r.other.Load())
}

// fleetPace is the shortest time between two requests of one worker: with
// fleetWorkers, 100 requests a second for each instance, some at the same
// moment, through every refresh and revocation. Every proxied request also
// costs the test binary (the client, the stand-in, reading the DEBUG
// logs), which runs with -race: as many requests as the CPUs could make
// made these the package's most expensive tests, and found nothing more.
const (
	fleetPace    = 20 * time.Millisecond
	fleetWorkers = 2
)

// runLoad sends requests from `workers` goroutines per target for d, each
// at most one per fleetPace.
func runLoad(targets []string, workers int, d time.Duration) *loadResult {
	var res loadResult
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var wg sync.WaitGroup
	for _, target := range targets {
		for w := range workers {
			wg.Go(func() {
				pace := time.NewTicker(fleetPace)
				defer pace.Stop()
				for i := 0; ctx.Err() == nil; i++ {
					res.requests.Add(1)
					resp, err := client.Get(fmt.Sprintf("%s/v1.1/bookings/%d-%d", target, w, i))
					switch {
					case err != nil:
						res.other.Add(1)
					case resp.StatusCode == http.StatusOK:
						res.ok.Add(1)
					case resp.StatusCode == http.StatusUnauthorized:
						res.unauthorized.Add(1)
					default:
						res.other.Add(1)
					}
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					select {
					case <-pace.C:
					case <-ctx.Done():
					}
				}
			})
		}
	}
	wg.Wait()
	return &res
}

// fleetRun starts a stand-in and two Caddy processes sharing a storage
// folder, loads them for d, and returns what clients saw and how many
// token requests the stand-in received.
func fleetRun(t *testing.T, block string, revokePrevious bool, d time.Duration) (*loadResult, int64, []string) {
	t.Helper()
	bin := buildCaddy(t)
	desko := deskotest.New(fleetClientID, fleetSecret, fleetTTL)
	desko.SetRevokePrevious(revokePrevious)
	srv := httptest.NewServer(desko)
	t.Cleanup(srv.Close)
	storage := t.TempDir()
	a, logA := startCaddy(t, bin, storage, srv.URL, block)
	b, logB := startCaddy(t, bin, storage, srv.URL, block)
	res := runLoad([]string{a, b}, fleetWorkers, d)
	n := desko.TokenRequests()
	t.Logf("fleet (%s, revoke_previous=%v) over %v: %s; token requests %d; API answered 401 %d times",
		strings.TrimSpace(block), revokePrevious, d, res, n, desko.APIRejected())

	// The stored entries and the logs hold neither the secret nor a token.
	lc := scrubtest.NewCheck(fleetClientID, fleetSecret, desko.Issued()...)
	stored := 0
	_ = filepath.WalkDir(storage, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return nil
		}
		data, _ := os.ReadFile(p)
		lc.AssertNone(t, p, string(data))
		stored++
		return nil
	})
	if strings.Contains(block, "shared_cache") && stored == 0 {
		t.Error("shared_cache stored nothing: the leak check of the storage would prove nothing")
	}
	// The logs are megabytes of DEBUG lines: both are checked at once.
	var wg sync.WaitGroup
	for _, f := range []string{logA, logB} {
		wg.Go(func() {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Error(err)
			}
			lc.AssertNone(t, f, string(data))
		})
	}
	wg.Wait()
	return res, n, []string{logA, logB}
}

// maxFleetFetches is one token per lifetime for the whole fleet (a refresh
// at 75–80% of each token's life, plus the first) with a little slack for
// the rare race where both instances miss the cache at the same moment.
func maxFleetFetches(d time.Duration) int64 {
	return int64(d/(fleetTTL*3/4)) + 3
}

// checkFleetBounds fails the test when d is too short for the bounds to
// tell a shared token from two instances that each fetch their own (one
// per 80% of a lifetime each, plus the first).
func checkFleetBounds(t *testing.T, d time.Duration) {
	t.Helper()
	unshared := 2 * (int64(d/(fleetTTL*4/5)) + 1)
	if max := maxFleetFetches(d); max >= unshared {
		t.Fatalf("a %v load with %v tokens allows %d token requests, as many as two unshared instances make (%d): load longer", d, fleetTTL, max, unshared)
	}
	if d/fleetTTL < 2 {
		t.Fatalf("a %v load with %v tokens spans fewer than two lifetimes", d, fleetTTL)
	}
}

func TestFleetSharesOneTokenPerLifetime(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy processes under load")
	}
	t.Parallel()
	d := fleetDuration(t)
	checkFleetBounds(t, d)
	res, n, logs := fleetRun(t, "shared_cache", false, d)
	if res.ok.Load() != res.requests.Load() || res.requests.Load() == 0 {
		t.Errorf("client-visible errors: %s", res)
	}
	if max := maxFleetFetches(d); n > max {
		t.Errorf("the fleet made %d token requests in %v with %v tokens, want ≤ %d (one per lifetime)", n, d, fleetTTL, max)
	}
	if n < int64(d/fleetTTL) {
		t.Errorf("only %d token requests in %v of %v tokens: were tokens refreshed at all?", n, d, fleetTTL)
	}
	// Tokens were adopted from the shared cache (which instance adopts
	// depends on whose jittered refresh point comes first).
	adopted := 0
	for _, f := range logs {
		data, _ := os.ReadFile(f)
		adopted += strings.Count(string(data), "token adopted from the shared cache")
	}
	if adopted == 0 {
		t.Error("no instance ever adopted a token from the shared cache")
	}
}

func TestFleetRevokingServer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two Caddy processes under load")
	}
	t.Parallel()
	d := fleetDuration(t) * 3 / 4
	if d < fleetTTL {
		t.Fatalf("a %v load is shorter than a token's lifetime: the bounds below would prove nothing", d)
	}
	t.Run("shared_cache", func(t *testing.T) {
		t.Parallel()
		res, n, _ := fleetRun(t, "shared_cache", true, d)
		if res.ok.Load() != res.requests.Load() || res.requests.Load() == 0 {
			t.Errorf("with shared_cache no 401 may reach clients: %s", res)
		}
		if max := maxFleetFetches(d); n > max {
			t.Errorf("%d token requests, want ≤ %d", n, max)
		}
	})
	t.Run("per-process cache", func(t *testing.T) {
		t.Parallel()
		// No assertion on the churn itself (that is what shared_cache is
		// for); the numbers go to the README. Only: the proxy stays sane
		// (no 5xx) and the invalidation guard and the budget of 401-driven
		// token requests bound the token requests, while without them
		// every one of the hundreds of 401s would cost one.
		res, n, _ := fleetRun(t, "", true, d)
		if res.other.Load() != 0 {
			t.Errorf("errors other than 401: %s", res)
		}
		// Per instance: the first token, the proactive refreshes (one
		// more for rounding, one for the other instance's start-up), and
		// the 401-driven ones the budget allows.
		perInstance := 1 + int64(d/(fleetTTL*3/4)) + 2 + revocationBurst + int64(d/revocationEvery) + 1
		if max := 2 * perInstance; n > max {
			t.Errorf("%d token requests in %v: the invalidation guard and the 401 budget should keep it ≤ %d", n, d, max)
		}
		if n < 2 {
			t.Errorf("%d token requests: each instance should have fetched its own", n)
		}
	})
}

// TestE2ESharedCacheInlineStorage loads `shared_cache { storage file_system
// <dir> }` in the in-process Caddy: the storage module is loaded, the token
// is stored there, encrypted.
func TestE2ESharedCacheInlineStorage(t *testing.T) {
	e := newE2E(t, time.Hour)
	dir := t.TempDir()
	e.load("warm_up off\n\t\tshared_cache {\n\t\t\tstorage file_system " + dir + "\n\t\t}")
	if s, _, body := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	entries, err := filepath.Glob(filepath.Join(dir, "desko_auth", "tokens", "*.json"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("stored entries %v (%v), want one", entries, err)
	}
	data, _ := os.ReadFile(entries[0])
	e.leakCheck().AssertNone(t, "the stored entry", string(data))
	e.assertNoLeaks()
}
