package deskoauth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/fleet"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// Issue 16 point 6 through Caddy: time. A token reaches the upstream only
// while it lives, whatever the clocks of a peer or of the token endpoint
// say, and never in its last moments. The stand-in's API answers 401 to a
// token that has expired: its count of 401s is the count of requests that
// carried one.

// clientPace is the shortest time between two requests of one of the
// clients' workers: dense beside the token's safety margin (300 ms: each
// worker tries it 15 times), so that every moment of a token's life is
// tried, but a steady load rather than as many requests as the CPUs can
// make. Every request costs the test binary, which runs with -race, its
// share as client, as the stand-in and in reading the DEBUG log for
// leaks: unpaced, these were the package's most expensive tests.
const clientPace = 20 * time.Millisecond

// statusCounts counts the answers clients got.
type statusCounts struct {
	mu sync.Mutex
	by map[int]int
}

func (c *statusCounts) add(code int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.by == nil {
		c.by = map[int]int{}
	}
	c.by[code]++
}

func (c *statusCounts) get(code int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.by[code]
}

// only reports whether every answer had the status code, and there was one.
func (c *statusCounts) only(code int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, n := range c.by {
		if k != code && n > 0 {
			return false
		}
	}
	return c.by[code] > 0
}

func (c *statusCounts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.by)
}

// clients sends requests through Caddy from workers goroutines for d, each
// at most one per clientPace, and counts the answers (-1: no answer).
func (e *e2e) clients(workers int, d time.Duration) *statusCounts {
	var counts statusCounts
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			pace := time.NewTicker(clientPace)
			defer pace.Stop()
			for i := 0; ctx.Err() == nil; i++ {
				if resp, err := e.client.Get(fmt.Sprintf("%s/clock/%d-%d", e.base, w, i)); err != nil {
					counts.add(-1)
				} else {
					_, _ = io.Copy(io.Discard, resp.Body) // so that the connection is used again
					resp.Body.Close()
					counts.add(resp.StatusCode)
				}
				select {
				case <-pace.C:
				case <-ctx.Done():
				}
			}
		})
	}
	wg.Wait()
	return &counts
}

// peerToken asks the stand-in's token endpoint for a token, as a peer of
// the fleet would, and returns it with its expires_in.
func (e *e2e) peerToken(t *testing.T) (string, time.Duration) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{
		"grant_type": "client_credentials", "client_id": testClientID, "client_secret": testSecret,
		"scope": "booking.show organization.show",
	})
	resp, err := http.Post(e.tokenURL(), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != 200 || a.AccessToken == "" {
		t.Fatalf("the peer's token request: %d %v", resp.StatusCode, err)
	}
	return a.AccessToken, time.Duration(a.ExpiresIn) * time.Second
}

// TestE2EPeerClockAhead: a peer of the fleet whose clock runs 10 min
// ahead, and which cannot tell (an older version, or a token endpoint
// without a Date header), stores its 4 s tokens with times 10 min ahead,
// one every 3.1 s (77.5% of their life), as such a peer refreshes. Caddy
// adopts them, but uses each no longer than the life its issuer gave it,
// on Caddy's clock (and its JWT exp): over two and a half lifetimes, no
// request reaches the upstream with an expired token, and clients see
// only 200s.
func TestE2EPeerClockAhead(t *testing.T) {
	const ttl, ahead = 3 * time.Second, 10 * time.Minute
	e := newParallelE2E(t, ttl)
	dir := t.TempDir()
	peer, err := fleet.New(&certmagic.FileStorage{Path: dir}, e.tokenURL(), []string{"booking.show", "organization.show"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := &token.Credentials{ClientID: testClientID, ClientSecret: testSecret}
	store := func() {
		tok, life := e.peerToken(t)
		now := time.Now().Add(ahead) // the peer's clock
		if err := peer.Save(context.Background(), creds, &token.Stored{AccessToken: tok, Obtained: now, Expiry: now.Add(life)}); err != nil {
			t.Errorf("the peer's Save: %v", err)
		}
	}
	store()
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(ttl * 775 / 1000) // the peer's refreshes
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				store()
			}
		}
	}()
	defer func() { close(stop); <-stopped }()

	e.load("warm_up off\n\t\tshared_cache {\n\t\t\tstorage file_system " + dir + "\n\t\t}")
	// The first request finds a token the peer stored a moment ago (on a
	// busy machine, the one stored before the load may be past its
	// refresh point by then, and Caddy would fetch its own).
	store()
	if s, _, body := e.do("GET", "/first", ""); s != 200 {
		t.Fatalf("the first request: %d %s", s, body)
	}
	counts := e.clients(2, ttl*3/2)
	t.Logf("clients: %v; upstream 401s: %d; token requests: %d (the peer's and Caddy's)", counts, e.desko.APIRejected(), e.desko.TokenRequests())
	if n := e.desko.APIRejected(); n != 0 {
		t.Errorf("%d requests reached the upstream with an expired token", n)
	}
	if !counts.only(200) {
		t.Errorf("clients got %v; want only 200s", counts)
	}
	_, text := e.adminDo("GET", "/metrics")
	adopted := 0.0
	for _, result := range []string{"hit", "adopted"} { // without the lock, and under it
		adopted += max(0, metricValue(t, text, "desko_auth_shared_cache_total", map[string]string{"source": e.label("booking.show", "organization.show"), "result": result}))
	}
	if adopted < 1 {
		t.Errorf("Caddy adopted %v tokens from the peer, want at least 1 (the test would prove nothing)", adopted)
	}
	e.assertNoLeaks()
}

// TestE2ENoTokenInItsLastMoments: the upstream is 50 ms away, and the
// token endpoint fails after the first token. A token the API accepts for
// exactly its 6 s (an opaque token: expires_in is all Caddy knows of it)
// is not sent in its last moments, where it would arrive dead: no request
// reaches the upstream with an expired token (no 401 there); clients get
// 200s, then, past the token's safety margin (300 ms), 503s.
func TestE2ENoTokenInItsLastMoments(t *testing.T) {
	const ttl, transit = 6 * time.Second, 50 * time.Millisecond
	e := newParallelE2E(t, ttl)
	e.desko.SetOpaqueTokens(true)
	e.loadUpstream("warm_up off", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(transit) // the way to the upstream (models latency; nothing is awaited)
		e.desko.ServeHTTP(w, r)
	}))
	if s, _, body := e.do("GET", "/first", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	e.desko.SetMode(deskotest.ModeDown)
	counts := e.clients(8, ttl+time.Second)
	t.Logf("clients: %v; upstream 401s: %d", counts, e.desko.APIRejected())
	if n := e.desko.APIRejected(); n != 0 {
		t.Errorf("%d requests reached the upstream with an expired token", n)
	}
	if counts.get(401) != 0 || counts.get(200) == 0 || counts.get(503) == 0 {
		t.Errorf("clients got %v; want 200s, then 503s, and no 401", counts)
	}
}

// TestE2ETokenEndpointClockSkew: a token endpoint whose clock is 10 min
// ahead or behind, whose answers carry no expires_in, and whose JWT exp
// claims are on its clock: Caddy reads the exp against the endpoint's Date
// header, so it neither uses a dead token (ahead) nor refuses a good one
// (behind). The token is used for its real 4 s and refreshed; no request
// reaches the upstream with an expired token; one WARN gives the skew.
func TestE2ETokenEndpointClockSkew(t *testing.T) {
	t.Parallel()
	// Ahead: read on this clock, the exp would keep a dead token in use
	// for ten minutes (upstream 401s). Behind, the token would be thrown
	// away at once; that side, and the skew on every instant a source
	// stores, are the engine's TestDateSkew (a bubble, no waiting).
	for _, offset := range []time.Duration{10 * time.Minute} {
		t.Run(fmt.Sprint(offset), func(t *testing.T) {
			const ttl = 3 * time.Second
			e := newParallelE2E(t, ttl)
			e.desko.SetClockOffset(offset)
			e.desko.SetOmitExpiresIn(true)
			e.load("warm_up off")
			if s, _, body := e.do("GET", "/first", ""); s != 200 {
				t.Fatalf("status %d: %s", s, body)
			}
			// The exp claim is rounded up to a whole second.
			st := e.onlySource()
			if life := st.ExpiresAt.Sub(st.LastFetchAt); life < ttl-time.Second || life > ttl+time.Second {
				t.Errorf("the token expires %v after its fetch; want its real %v", life, ttl)
			}
			counts := e.clients(2, ttl*4/3)
			t.Logf("clients: %v; upstream 401s: %d; token requests: %d", counts, e.desko.APIRejected(), e.desko.TokenRequests())
			if n := e.desko.APIRejected(); n != 0 {
				t.Errorf("%d requests reached the upstream with an expired token", n)
			}
			if !counts.only(200) {
				t.Errorf("clients got %v; want only 200s", counts)
			}
			if n := e.desko.TokenRequests(); n < 2 {
				t.Errorf("%d token requests in %v of %v tokens: the token was not refreshed", n, ttl*4/3, ttl)
			}
			if n := e.logCount("warn", "clock"); n != 1 {
				t.Errorf("%d WARNs about the token endpoint's clock, want 1", n)
			}
			e.assertNoLeaks()
		})
	}
}
