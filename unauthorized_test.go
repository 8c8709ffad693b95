package deskoauth

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// End-to-end tests, through Caddy, of what happens when the upstream
// answers 401: the token source always hears of it, a replayable request is
// replayed, kept bodies stay within the memory budget, and the two attacks
// of issue 10 fail.

// outcomes reads desko_auth_requests_total for the test's source; the
// collectors are process-wide, so tests compare before and after.
func (e *e2e) outcomes() map[string]float64 {
	m := metricsFor(e.label("booking.show", "organization.show"))
	out := map[string]float64{}
	for o, c := range m.requests {
		var d dto.Metric
		if err := c.Write(&d); err != nil {
			e.t.Fatal(err)
		}
		out[outcome(o).String()] = d.GetCounter().GetValue()
	}
	return out
}

func (e *e2e) wantOutcomes(before map[string]float64, want map[string]float64) {
	e.t.Helper()
	after := e.outcomes()
	for k, v := range want {
		if got := after[k] - before[k]; got != v {
			e.t.Errorf("requests_total{outcome=%q} grew by %v, want %v (all: %v → %v)", k, got, v, before, after)
		}
	}
}

// assertBudgetReturned checks that every kept body gave its memory back.
func assertBudgetReturned(t *testing.T) {
	t.Helper()
	if n := replayMemory.used.Load(); n != 0 {
		t.Errorf("%d bytes of the replay budget still reserved after the requests ended", n)
	}
}

// A 401 on a request that is not replayed still reaches the token source:
// a body over replay_body_limit, a body that does not fit the memory
// budget, and an upgrade.
func TestE2EUnreplayed401ReachesTheTokenSource(t *testing.T) {
	t.Parallel() // its subtests are (newE2E)
	big := strings.Repeat("x", 64)
	for _, tt := range []struct {
		name, extra string
		send        func(e *e2e) (int, string)
	}{
		{"body over replay_body_limit", "replay_body_limit 16", func(e *e2e) (int, string) {
			s, _, b := e.do("POST", "/big", big, "Content-Type", "text/plain")
			return s, b
		}},
		{"body over replay_memory", "replay_memory 32", func(e *e2e) (int, string) {
			s, _, b := e.do("POST", "/big", big, "Content-Type", "text/plain")
			return s, b
		}},
		{"upgrade", "", func(e *e2e) (int, string) {
			s, _, b := e.do("GET", "/ws", "", "Connection", "Upgrade", "Upgrade", "websocket")
			return s, b
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newE2E(t, time.Hour)
			e.load("warm_up off\n\t\t" + tt.extra)
			if s, _, _ := e.do("GET", "/a", ""); s != 200 {
				t.Fatal("warm request failed")
			}
			e.desko.RevokeAll()
			apiBefore := e.desko.APIRequests()
			if s, body := tt.send(e); s != 401 {
				t.Fatalf("status %d (%s), want the upstream's 401, not replayed", s, body)
			}
			if n := e.desko.APIRequests() - apiBefore; n != 1 {
				t.Errorf("%d API requests, want 1 (no replay)", n)
			}
			if s, _, body := e.do("GET", "/next", ""); s != 200 {
				t.Fatalf("the request after the 401: status %d %s, want 200 with a new token", s, body)
			}
			if n := e.desko.TokenRequests(); n != 2 {
				t.Errorf("token requests = %d, want 2", n)
			}
			assertBudgetReturned(t)
		})
	}
}

// Attack: with the token endpoint down, anonymous requests to a path that
// answers 401 whatever the token must not take away the token that works.
func TestE2EA401NeverLeavesTheProxyWorseOff(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	e.desko.SetMode(deskotest.ModeDown)
	for i := range 3 {
		if s, _, _ := e.do("GET", deskotest.DeniedPrefix+"admin", ""); s != 401 {
			t.Fatalf("attack %d: status %d, want the upstream's 401", i+1, s)
		}
		for j := range 6 {
			if s, _, body := e.do("GET", fmt.Sprintf("/legit/%d", j), ""); s != 200 {
				t.Fatalf("after attack %d, legitimate request %d: status %d %s, want 200 with the token that still works", i+1, j+1, s, body)
			}
		}
	}
	e.assertNoLeaks()
}

// Attack: "Connection: Authorization" would make reverse_proxy strip the
// token as hop-by-hop. The token header always reaches the upstream; and a
// 401 to a request that did not carry the token (here something after
// desko_auth removes it) does not count against the token.
func TestE2ETokenHeaderCannotBeStrippedByTheClient(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	for _, conn := range []string{"Authorization", "keep-alive, authorization", "X-Foo, AUTHORIZATION, close"} {
		s, _, body := e.do("GET", "/a", "", "Connection", conn)
		if s != 200 {
			t.Fatalf("Connection: %s → status %d %s, want 200 (the upstream got the token)", conn, s, body)
		}
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}

	e.loadRaw(fmt.Sprintf(`
`+e.base+` {
	route {
		desko_auth {
			client_id     %s
			client_secret {env.DESKO_TEST_SECRET}
			scope         booking.show organization.show
			token_url     %s
		}
		request_header -Authorization
		reverse_proxy %s
	}
}`, testClientID, e.tokenURL(), e.srv.Listener.Addr()))
	apiBefore := e.desko.APIRequests()
	for range 3 {
		if s, _, _ := e.do("GET", "/stripped", ""); s != 401 {
			t.Fatalf("status %d, want the upstream's 401", s)
		}
	}
	if n := e.desko.APIRequests() - apiBefore; n != 3 {
		t.Errorf("%d API requests for 3 requests, want 3 (no replay of a request that lacked the token)", n)
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want still 1 (the 401s were not about the token)", n)
	}
}

// Genuine revocations stay invisible to clients: five revocations in a row,
// each found by a request (GET and POST with bodies of known and unknown
// length), all replayed with a new token at once.
func TestE2ERepeatedRevocationsAreInvisible(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, _ := e.do("GET", "/first", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	before := e.outcomes()
	start := time.Now()
	for i := range 5 {
		e.desko.RevokeAll()
		payload := fmt.Sprintf(`{"n":%d,"note":"ação ✓"}`, i)
		var s int
		var body string
		switch i % 3 {
		case 0:
			s, _, body = e.do("GET", fmt.Sprintf("/get/%d", i), "")
		case 1:
			s, _, body = e.do("POST", "/v1.1/bookings", payload, "Content-Type", "application/json")
			if s == 200 && decodeAPI(t, body).Body != payload {
				t.Errorf("revocation %d: the replayed POST carried %q, want %q", i+1, decodeAPI(t, body).Body, payload)
			}
		case 2:
			s, body = e.chunkedPost("/chunked", payload)
			if s == 200 && decodeAPI(t, body).Body != payload {
				t.Errorf("revocation %d: the replayed chunked POST carried %q, want %q", i+1, decodeAPI(t, body).Body, payload)
			}
		}
		if s != 200 {
			t.Fatalf("revocation %d after %v: status %d %s, want 200 (replayed with a new token)", i+1, time.Since(start), s, body)
		}
	}
	if n := e.desko.TokenRequests(); n != 6 {
		t.Errorf("token requests = %d, want 6 (one initial, one per revocation)", n)
	}
	e.wantOutcomes(before, map[string]float64{"replayed": 5, "replay_failed": 0})
	assertBudgetReturned(t)
	e.assertNoLeaks()
}

// chunkedPost sends body with no Content-Length (chunked).
func (e *e2e) chunkedPost(path, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.base+path, io.MultiReader(strings.NewReader(body)))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The replay is not sent before the first attempt is done with the body:
// an upstream that answers 401 before reading a large body gets the whole
// body, in order, on the replay.
func TestE2EEarly401WithALargeBodyIsReplayedWhole(t *testing.T) {
	e := newE2E(t, time.Hour)
	var attempts atomic.Int64
	e.loadUpstream("warm_up off", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/early" && attempts.Add(1) == 1 {
			w.WriteHeader(http.StatusUnauthorized) // before reading a byte
			return
		}
		e.desko.ServeHTTP(w, r)
	}))
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	var b strings.Builder
	for i := 0; b.Len() < 900<<10; i++ {
		fmt.Fprintf(&b, "%08d,", i)
	}
	payload := b.String()
	for _, send := range []func() (int, string){
		func() (int, string) { s, _, body := e.do("POST", "/early", payload); return s, body },
		func() (int, string) { return e.chunkedPost("/early", payload) },
	} {
		attempts.Store(0)
		s, body := send()
		if s != 200 {
			t.Fatalf("status %d %.200s, want 200 from the replay", s, body)
		}
		if got := decodeAPI(t, body).Body; got != payload {
			t.Fatalf("the replay carried %d bytes, want the %d sent (first difference at %d)", len(got), len(payload), firstDiff(got, payload))
		}
	}
	assertBudgetReturned(t)
}

func firstDiff(a, b string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A large 401 answer is not held: the client gets it whole as it comes, the
// request is not replayed, and the token source hears of it.
func TestE2ELarge401IsStreamedNotHeld(t *testing.T) {
	e := newE2E(t, time.Hour)
	big := bytes.Repeat([]byte("denied! "), 256<<10/8) // 256 KiB
	e.loadUpstream("warm_up off", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big401" {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write(big)
			return
		}
		e.desko.ServeHTTP(w, r)
	}))
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	s, _, body := e.do("GET", "/big401", "")
	if s != 401 || body != string(big) {
		t.Fatalf("status %d, %d bytes; want the upstream's 401 with its %d bytes", s, len(body), len(big))
	}
	// The replacement is fetched in the background, and a request that can
	// be replayed does not wait for it: until it lands, requests carry the
	// first token (which still works here). Wait for one that carries the
	// new token, so that it has worked before the next 401 (a token
	// rejected before it worked is replaced only once it is 1 s old).
	waitFor(t, "a request that carries the replacement", func() bool {
		s, _, body := e.do("GET", "/next", "")
		if s != 200 {
			t.Fatalf("status %d after the large 401", s)
		}
		var a struct {
			Serial int `json:"token_serial"`
		}
		_ = json.Unmarshal([]byte(body), &a)
		return a.Serial == 2
	})
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2 (the large 401 invalidated the token)", n)
	}
	// A small 401 is held and replayed as before.
	e.desko.RejectNextAPIRequests(1)
	if s, _, _ := e.do("GET", "/small401", ""); s != 200 {
		t.Errorf("status %d, want a replayed 200", s)
	}
}

// Kept bodies stay within replay_memory, shared by all requests: under
// concurrent uploads, what does not fit is forwarded without a replay and
// counted as over_replay_budget, and every upload succeeds.
func TestE2EReplayMemoryBudget(t *testing.T) {
	e := newE2E(t, time.Hour)
	release := make(chan struct{})
	var waiting sync.WaitGroup
	e.loadUpstream("warm_up off\n\t\treplay_memory 1MiB", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			waiting.Done()
			<-release // hold every upload before reading its body
		}
		e.desko.ServeHTTP(w, r)
	}))
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	before := e.outcomes()
	const n, size = 12, 256 << 10 // 3 MiB in all, against a 1 MiB budget
	payload := strings.Repeat("u", size)
	waiting.Add(n)
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Go(func() {
			resp, err := http.Post(e.base+"/upload", "text/plain", strings.NewReader(payload))
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && decodeAPI(t, string(b)).Body != payload {
				t.Error("an upload arrived altered")
			}
			statuses <- resp.StatusCode
		})
	}
	waiting.Wait() // all uploads are in the proxy at once
	if used := replayMemory.used.Load(); used > 1<<20 {
		t.Errorf("%d bytes kept for replays, over the 1 MiB budget", used)
	}
	close(release)
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("an upload got status %d", s)
		}
	}
	// The budget is taken as bytes arrive: it holds 4 whole bodies, and
	// which uploads keep theirs depends on how their bytes interleave
	// (two uploads that find the budget spent at the same instant both
	// stop keeping).
	after := e.outcomes()
	injected, over := after["injected"]-before["injected"], after["over_replay_budget"]-before["over_replay_budget"]
	if injected+over != n || injected > 4 || over < n-4 {
		t.Errorf("outcomes: %v injected, %v over_replay_budget; want %d in all, at most 4 kept whole", injected, over, n)
	}
	assertBudgetReturned(t)

	// A reload to a config that does not set replay_memory brings the
	// default back once the old config is cleaned up.
	if got := replayMemory.limit.Load(); got != 1<<20 {
		t.Fatalf("replay_memory 1MiB loaded, budget limit %d", got)
	}
	e.load("warm_up off")
	if got := replayMemory.limit.Load(); got != DefaultReplayMemory {
		t.Errorf("after a reload without replay_memory the limit is %d, want the default %d", got, DefaultReplayMemory)
	}
}

// Bodies that lie about their length, and a client that goes away
// mid-body, lose nothing and leak no budget.
func TestE2EBrokenBodies(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	raw := func(req string, closeWrite bool) string {
		t.Helper()
		c, err := net.Dial("tcp", "localhost:"+httpPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		if closeWrite {
			c.(*net.TCPConn).CloseWrite()
		}
		status, _ := bufio.NewReader(c).ReadString('\n')
		return status
	}
	head := "POST /lie HTTP/1.1\r\nHost: localhost:" + httpPort + "\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"

	// Longer than its Content-Length: the upstream gets exactly the
	// declared bytes.
	if st := raw(fmt.Sprintf(head, 5, "12345EXTRA"), false); !strings.Contains(st, " 200 ") {
		t.Errorf("body longer than Content-Length: %q", st)
	}
	if got := e.desko.Bodies(); got[len(got)-1] != "12345" {
		t.Errorf("upstream got %q, want the 5 declared bytes", got[len(got)-1])
	}
	// Shorter, then the client stops sending: no 2xx, nothing forwarded
	// as complete. Also with a revoked token, so the replay path runs.
	for _, revoke := range []bool{false, true} {
		if revoke {
			e.desko.RevokeAll()
		}
		bodies := len(e.desko.Bodies())
		st := raw(fmt.Sprintf(head, 100, "only-part"), true)
		if strings.Contains(st, " 200 ") {
			t.Errorf("a truncated body (revoked %v) was answered %q", revoke, st)
		}
		if n := len(e.desko.Bodies()); n != bodies {
			t.Errorf("the upstream accepted a truncated body (revoked %v)", revoke)
		}
	}
	// A client that disconnects mid-body.
	c, err := net.Dial("tcp", "localhost:"+httpPort)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, fmt.Sprintf(head, 1<<20, strings.Repeat("p", 4096)))
	c.Close()
	if s, _, body := e.do("GET", "/after", ""); s != 200 {
		t.Fatalf("status %d %s after broken bodies", s, body)
	}
	// The server ends the handlers of the broken requests on its own
	// schedule; the budget must be back once they are done.
	waitFor(t, "the broken requests' kept bodies to give the replay budget back", func() bool { return replayMemory.used.Load() == 0 })
	e.assertNoLeaks()
}

// An upstream that rejects every token, under concurrent load: every
// request is sent at most twice (one replay), and the guard keeps the token
// requests to a handful (1 s, 2 s, 4 s … between replacements).
func TestE2EUpstreamRejectingEverything(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	const workers, perWorker = 8, 40
	deadline := time.Now().Add(10 * time.Second)
	var wg sync.WaitGroup
	var sent, other atomic.Int64
	for range workers {
		wg.Go(func() {
			for i := 0; i < perWorker && time.Now().Before(deadline); i++ {
				resp, err := http.Get(e.base + deskotest.DeniedPrefix + "everything")
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				sent.Add(1)
				if resp.StatusCode != http.StatusUnauthorized {
					other.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := other.Load(); n != 0 {
		t.Errorf("%d answers other than the upstream's 401", n)
	}
	if api, n := e.desko.APIRequests(), sent.Load(); api > 2*n {
		t.Errorf("%d API requests for %d client requests: more than one replay per request", api, n)
	}
	// Within 15 s the guard allows the first fetch, its replacement and
	// replacements at 1 s, 3 s, 7 s and 15 s.
	if n := e.desko.TokenRequests(); n > 6 {
		t.Errorf("%d token requests for %d requests against an upstream that rejects every token, want ≤ 6", n, sent.Load())
	}
}

// rawConn opens a connection to the test site, writes req on it and
// returns it; the test's cleanup closes it.
func rawConn(t *testing.T, req string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", "localhost:"+httpPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	return c
}

// Issue 16.3: replay memory follows the bytes, not the headers. Clients
// that declare a large Content-Length and send nothing hold no budget,
// whether the upstream waits for their bodies or answers before reading
// them (before the fix, 32 such connections held the whole default budget
// for as long as they stayed open, and a handler whose upstream had
// answered waited for the client's next bytes to give it back): a small
// request beside them is still replayed.
func TestE2EDeclaredLengthsHoldNoReplayMemory(t *testing.T) {
	t.Parallel() // its subtests are (newE2E)
	const conns, declared = DefaultReplayMemory / DefaultReplayBodyLimit, DefaultReplayBodyLimit
	for _, tt := range []struct {
		name      string
		readsBody bool
	}{
		{"upstream waiting for the bodies", true},
		{"upstream answering without reading", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newE2E(t, time.Hour)
			arrived := make(chan struct{}, conns)
			e.loadUpstream("warm_up off", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/held" {
					e.desko.ServeHTTP(w, r)
					return
				}
				arrived <- struct{}{}
				if tt.readsBody {
					io.Copy(io.Discard, r.Body) // until the client goes away
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			if s, _, _ := e.do("GET", "/a", ""); s != 200 {
				t.Fatal("warm request failed")
			}
			started := e.outcomes()
			head := fmt.Sprintf("POST /held HTTP/1.1\r\nHost: localhost:%s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", httpPort, declared)
			held := make([]net.Conn, conns)
			for i := range held {
				held[i] = rawConn(t, head)
			}
			for i := range conns {
				waitChan(t, arrived, fmt.Sprintf("held request %d of %d to reach the upstream", i+1, conns))
			}
			if !tt.readsBody {
				// The handlers are done (each counts its outcome as it
				// returns) although every client still owes its whole
				// body. (net/http itself then waits for the body before
				// it writes the answer: it discards the unread rest of
				// a request body first.)
				waitFor(t, fmt.Sprintf("the %d handlers to return once the upstream answered", conns), func() bool {
					return e.outcomes()["injected"]-started["injected"] == conns
				})
			}
			if used := replayMemory.used.Load(); used != 0 {
				t.Errorf("%d bytes of the replay budget reserved for %d bodies that never came", used, conns)
			}
			e.desko.RevokeAll()
			before := e.outcomes()
			payload := strings.Repeat("r", 1000)
			s, _, body := e.do("POST", "/beside", payload, "Content-Type", "text/plain")
			if s != 200 {
				t.Fatalf("a 1,000-byte POST beside the held connections: status %d %s, want 200 from its replay", s, body)
			}
			if got := decodeAPI(t, body).Body; got != payload {
				t.Errorf("the replay carried %d bytes, want the %d sent", len(got), len(payload))
			}
			e.wantOutcomes(before, map[string]float64{"replayed": 1, "over_replay_budget": 0})
			for _, c := range held {
				c.Close()
			}
			waitFor(t, "the held requests to end and the budget to be back", func() bool { return replayMemory.used.Load() == 0 })
		})
	}
}

// Issue 16.3: with replay_body_limit and replay_memory at their maxima, a
// request that declares a huge Content-Length and sends 3 bytes costs at
// most one chunk of memory (before the fix, the declared length was
// allocated at once: 2 TiB killed the process). The bound on the process's
// allocations leaves Caddy and the test a quarter of the limit.
func TestE2EForgedContentLengthCostsNothing(t *testing.T) {
	e := newExclusiveE2E(t, time.Hour) // it measures the process's allocations
	got := make(chan string, 1)
	e.loadUpstream(fmt.Sprintf("warm_up off\n\t\treplay_body_limit %d\n\t\treplay_memory %d", MaxReplayBodyLimit, MaxReplayMemory),
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/forged" {
				e.desko.ServeHTTP(w, r)
				return
			}
			b := make([]byte, 3)
			_, err := io.ReadFull(r.Body, b)
			got <- fmt.Sprintf("%s %v", b, err)
			io.Copy(io.Discard, r.Body) // until the client goes away
		}))
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	for _, declared := range []int64{MaxReplayBodyLimit, 2 << 40} {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		c := rawConn(t, fmt.Sprintf("POST /forged HTTP/1.1\r\nHost: localhost:%s\r\nContent-Length: %d\r\n\r\nabc", httpPort, declared))
		if b := waitChan(t, got, "the upstream to read the 3 bytes"); b != "abc <nil>" {
			t.Fatalf("the upstream read %q, want the 3 bytes sent", b)
		}
		used := replayMemory.used.Load()
		runtime.ReadMemStats(&m1)
		if used > replayChunk {
			t.Errorf("Content-Length %d, 3 bytes sent: %d bytes of the replay budget reserved, want at most one %d-byte chunk", declared, used, replayChunk)
		}
		if grew := m1.TotalAlloc - m0.TotalAlloc; grew > MaxReplayBodyLimit/4 {
			t.Errorf("Content-Length %d, 3 bytes sent: the process allocated %d bytes meanwhile, want under %d", declared, grew, MaxReplayBodyLimit/4)
		}
		c.Close()
		waitFor(t, "the forged request to end and the budget to be back", func() bool { return replayMemory.used.Load() == 0 })
	}
	if s, _, _ := e.do("GET", "/after", ""); s != 200 {
		t.Fatalf("status %d after the forged requests", s)
	}
}
