package deskoauth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/caddyserver/certmagic"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/fleet"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// End-to-end tests: a real Caddy with desko_auth + reverse_proxy in front
// of the Desko stand-in. newE2E gives a test the in-process Caddy
// (caddytest runs one per test binary, admin on localhost:2999, built with
// the test binary's -race): the test is parallel with the tests that run
// Caddy processes, but holds the in-process Caddy (inProcessCaddy) until it
// ends, so that those tests load their configs one at a time.
// newParallelE2E gives a test a Caddy process of its own (e2eproc_test.go),
// for the tests that mostly wait for tokens to age.

const (
	testClientID = "e2e-client"
	testSecret   = "s3cr3t-Value-That-Must-Never-Leak"
)

// e2e is one test's world: a stand-in Desko, a Caddy and its log file.
type e2e struct {
	t       *testing.T
	desko   *deskotest.Server
	srv     *httptest.Server
	logFile string
	// base is the test site's base URL, admin the admin API's; client
	// sends the test's requests to base.
	base, admin string
	client      *http.Client
	tester      *caddytest.Tester // the in-process Caddy's; nil with proc
	proc        *caddyProc        // the test's own Caddy process, or nil
}

// newE2E marks the test parallel and gives it the in-process Caddy, which
// it holds until it ends.
func newE2E(t *testing.T, ttl time.Duration) *e2e {
	t.Helper()
	t.Parallel()
	return inProcessE2E(t, ttl)
}

// newExclusiveE2E is newE2E for a test that measures the whole test
// process (its allocations): the test is not parallel, so Go runs it
// before any parallel test starts, with nothing beside it.
func newExclusiveE2E(t *testing.T, ttl time.Duration) *e2e {
	t.Helper()
	return inProcessE2E(t, ttl)
}

func inProcessE2E(t *testing.T, ttl time.Duration) *e2e {
	t.Helper()
	inProcessCaddy.Lock()
	t.Cleanup(inProcessCaddy.Unlock) // after every cleanup registered from here on
	tester := caddytest.NewTester(t)
	e := newWorld(t, ttl, proxyBase, "http://localhost:2999", tester.Client)
	e.tester = tester
	e.setenv("DESKO_TEST_SECRET", testSecret)
	return e
}

// inProcessCaddy is held by the test that uses the in-process Caddy. A
// test that loads a config there without newE2E (caddytest.AssertLoadError)
// must not be parallel: Go runs the sequential tests before any parallel
// one, so those never meet a holder.
var inProcessCaddy sync.Mutex

// newWorld starts the stand-in; the caller sets up the Caddy.
func newWorld(t *testing.T, ttl time.Duration, base, admin string, client *http.Client) *e2e {
	d := deskotest.New(testClientID, testSecret, ttl)
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	return &e2e{
		t:       t,
		desko:   d,
		srv:     srv,
		logFile: filepath.Join(t.TempDir(), "caddy.log"),
		base:    base,
		admin:   admin,
		client:  client,
	}
}

// setenv sets an environment variable for Caddy until the test ends: of
// the test binary for the in-process Caddy (t.Setenv is not for parallel
// tests; inProcessCaddy keeps the other tests that read it waiting), of
// the process (before it starts) for a Caddy process.
func (e *e2e) setenv(key, value string) {
	e.t.Helper()
	if e.proc != nil {
		e.proc.setenv(e.t, key, value)
		return
	}
	prev, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if had {
			os.Setenv(key, prev)
		} else {
			os.Unsetenv(key)
		}
	})
}

func (e *e2e) tokenURL() string { return e.srv.URL + deskotest.TokenPath }

// load runs Caddy with one site whose desko_auth block holds extra lines
// besides the credentials, proxying to the stand-in.
func (e *e2e) load(extra string) {
	e.t.Helper()
	e.loadTo(extra, e.srv.Listener.Addr().String())
}

// loadUpstream is load with another upstream in front of the stand-in:
// up answers what it wants and hands the rest to the stand-in.
func (e *e2e) loadUpstream(extra string, up http.Handler) {
	e.t.Helper()
	srv := httptest.NewServer(up)
	e.t.Cleanup(srv.Close)
	e.loadTo(extra, srv.Listener.Addr().String())
}

func (e *e2e) loadTo(extra, upstream string) {
	e.t.Helper()
	e.loadRaw(fmt.Sprintf(`
`+e.base+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		scope         booking.show organization.show
		token_url     %s
		%s
	}
	reverse_proxy %s
}`, testClientID, e.tokenURL(), extra, upstream))
}

// loadRaw runs Caddy with the given sites, test globals and a DEBUG log.
func (e *e2e) loadRaw(sites string) {
	e.t.Helper()
	if e.proc != nil {
		e.proc.load(e.t, e.caddyfile(sites))
		return
	}
	e.tester.InitServer(e.caddyfile(sites), "caddyfile")
	if e.t.Failed() {
		e.t.FailNow()
	}
}

// caddyfile is the test globals (free ports, the admin address, a DEBUG
// log into e.logFile) followed by sites.
func (e *e2e) caddyfile(sites string) string {
	globals := fmt.Sprintf(`	admin localhost:2999
	http_port %s
	https_port %s`, httpPort, httpsPort)
	if e.proc != nil {
		globals = e.proc.globals()
	}
	return fmt.Sprintf(`{
	skip_install_trust
%s
	grace_period 1ns
	log {
		output file %s
		level DEBUG
	}
}
%s`, globals, e.logFile, sites)
}

// do sends a request through Caddy and returns status, headers and body.
func (e *e2e) do(method, path, body string, hdr ...string) (int, http.Header, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// assertNoLeaks checks that neither the secret nor any token the stand-in
// ever issued appears in the Caddy log or in the given response bodies.
func (e *e2e) assertNoLeaks(bodies ...string) {
	e.t.Helper()
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		e.t.Fatalf("reading Caddy's log: %v", err)
	}
	if len(logs) == 0 {
		e.t.Fatal("Caddy's DEBUG log is empty: the leak check would prove nothing")
	}
	lc := e.leakCheck()
	lc.AssertNone(e.t, "Caddy's log", string(logs))
	for i, b := range bodies {
		lc.AssertNone(e.t, fmt.Sprintf("answer body %d", i+1), b)
	}
}

// leakCheck checks for the test secret and every token the stand-in ever
// issued.
func (e *e2e) leakCheck() scrubtest.Check {
	return scrubtest.NewCheck(testClientID, testSecret, e.desko.Issued()...)
}

type apiAnswer struct {
	OK     bool   `json:"ok"`
	Method string `json:"method"`
	Path   string `json:"path"`
	Body   string `json:"body"`
}

func decodeAPI(t *testing.T, body string) apiAnswer {
	t.Helper()
	var a apiAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		t.Fatalf("answer is not the stand-in API's JSON: %v: %q", err, body)
	}
	return a
}

type deskoErr struct {
	Error         int    `json:"error"`
	ID            string `json:"id"`
	Message       string `json:"message"`
	CorrelationID string `json:"correlation_id"`
}

// detail returns the error logged under a client answer's correlation ID:
// what the operator sees of a failure that the client saw only as a fixed
// message.
func (e *e2e) detail(d deskoErr) string {
	e.t.Helper()
	if d.CorrelationID == "" {
		e.t.Fatalf("error answer %+v has no correlation_id", d)
	}
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		e.t.Fatalf("reading Caddy's log: %v", err)
	}
	for _, line := range strings.Split(string(logs), "\n") {
		var entry struct {
			Msg   string `json:"msg"`
			ID    string `json:"correlation_id"`
			Error string `json:"error"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.ID == d.CorrelationID {
			return entry.Error
		}
	}
	e.t.Fatalf("no log line with correlation_id %s", d.CorrelationID)
	return ""
}

// unavailable sends GET path through Caddy, which must answer 503 with
// Retry-After and the client message message in Desko's error shape, and
// returns that error and the body (it fails the test on any other answer).
func (e *e2e) unavailable(path, message string) (deskoErr, string) {
	e.t.Helper()
	s, hdr, body := e.do("GET", path, "")
	if s != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		e.t.Fatalf("GET %s: status %d Retry-After %q, want 503 with Retry-After: %s", path, s, hdr.Get("Retry-After"), body)
	}
	d := decodeErr(e.t, body)
	if d.Error != http.StatusServiceUnavailable || d.Message != message {
		e.t.Fatalf("GET %s: error %d %q, want 503 %q", path, d.Error, d.Message, message)
	}
	return d, body
}

func decodeErr(t *testing.T, body string) deskoErr {
	t.Helper()
	var d deskoErr
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("error answer is not Desko-shaped JSON: %v: %q", err, body)
	}
	return d
}

func TestE2EInjectsTokenAndReplacesClientAuthorization(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")

	var bodies []string
	for i := range 20 {
		// The stand-in's API accepts exactly one Authorization header
		// holding a token it issued: the client's own must be gone.
		status, _, body := e.do("GET", fmt.Sprintf("/v1.1/bookings/%d", i), "", "Authorization", "Basic dXNlcjpwYXNz")
		if status != 200 {
			t.Fatalf("request %d: status %d, body %s", i, status, body)
		}
		a := decodeAPI(t, body)
		if !a.OK || a.Path != fmt.Sprintf("/v1.1/bookings/%d", i) {
			t.Fatalf("request %d: unexpected answer %+v", i, a)
		}
		bodies = append(bodies, body)
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1 for 20 requests", n)
	}
	if n := e.desko.APIRejected(); n != 0 {
		t.Errorf("API rejected %d requests", n)
	}
	req, body := e.desko.LastTokenRequest()
	var sent map[string]string
	if err := json.Unmarshal(body, &sent); err != nil {
		t.Fatalf("token request body is not JSON: %v", err)
	}
	want := map[string]string{"grant_type": "client_credentials", "client_id": testClientID, "client_secret": testSecret, "scope": "booking.show organization.show"}
	if fmt.Sprint(sent) != fmt.Sprint(want) {
		t.Errorf("token request body = %v, want %v", sent, want)
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("token request Content-Type = %q", ct)
	}
	e.assertNoLeaks(bodies...)
}

func TestE2ERefusedCredentialsAnswer502AndForwardNothing(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.desko.SetClientSecret("the-real-one-is-different")
	e.load("warm_up off")

	// Refusals back off (5 s at first, less 20% jitter): client requests
	// while the source backs off cause no token request of their own. The
	// source's status says when it retries: the traffic must end before,
	// or the bound below would prove nothing.
	const requests = 40
	var bodies []string
	var retryAt time.Time
	n := 0
	for n < requests {
		status, hdr, body := e.do("GET", "/v1.1/organizations", "")
		n++
		if status != http.StatusBadGateway {
			t.Fatalf("status %d, want 502; body %s", status, body)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q", ct)
		}
		d := decodeErr(t, body)
		if d.Error != 502 || d.ID != "desko_auth" || d.Message != msgRefused {
			t.Fatalf("error body = %+v", d)
		}
		if got, want := e.detail(d), "token endpoint answered 401: Client authentication failed"; got != want {
			t.Fatalf("logged detail %q, want %q", got, want)
		}
		bodies = append(bodies, body)
		if n == 1 {
			st := e.onlySource()
			if st.State != token.StateRefused || !st.NextRetryAt.After(st.LastFetchAt) {
				t.Fatalf("after the refusal: state %s, retry %v after the fetch; want refused, and a retry later",
					st.State, st.NextRetryAt.Sub(st.LastFetchAt))
			}
			retryAt = st.NextRetryAt
		}
	}
	if time.Now().After(retryAt) {
		t.Fatalf("the %d requests outlasted the backoff (the retry was due %v ago): the bound below would prove nothing", n, time.Since(retryAt))
	}
	if got := e.desko.APIRequests(); got != 0 {
		t.Errorf("%d requests reached the API without a token", got)
	}
	if got := e.desko.TokenRequests(); got != 1 {
		t.Errorf("token requests = %d for %d client requests within the backoff, want 1", got, n)
	}
	e.assertNoLeaks(bodies...)
	logs, _ := os.ReadFile(e.logFile)
	if c := strings.Count(string(logs), "token endpoint refused the credentials"); c != 1 {
		t.Errorf("refusal logged %d times, want once per state change", c)
	}
}

func TestE2EReloadReusesTheEngine(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, body := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	// A different config with the same credentials: reload.
	e.load("warm_up off\n\t\ttimeout 10s")
	e.load("warm_up off")
	if s, _, body := e.do("GET", "/b", ""); s != 200 {
		t.Fatalf("after reload: status %d: %s", s, body)
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d after two reloads, want 1", n)
	}
	// The admin API shows the placeholder, not the secret.
	resp, err := http.Get("http://localhost:2999/config/")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(cfg), testSecret) || !strings.Contains(string(cfg), "{env.DESKO_TEST_SECRET}") {
		t.Errorf("admin /config/ should show the placeholder only")
	}
	e.assertNoLeaks()
}

func TestE2EChangedSecretGetsANewEngine(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, body := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	const rotated = "rotated-s3cr3t-also-secret"
	e.desko.SetClientSecret(rotated)
	e.setenv("DESKO_TEST_SECRET", rotated)
	// Caddy skips a reload whose config text is unchanged (`caddy reload
	// --force` overrides that); change something else too.
	e.load("warm_up off\n\t\ttimeout 9s")
	s, _, body := e.do("GET", "/b", "")
	if s != 200 {
		t.Fatalf("after rotation: status %d: %s", s, body)
	}
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2 (one per secret)", n)
	}
	e.assertNoLeaks()
	logs, _ := os.ReadFile(e.logFile)
	if strings.Contains(string(logs), rotated) {
		t.Error("rotated secret in the logs")
	}
}

func TestE2ESitesWithTheSameCredentialsShareOneToken(t *testing.T) {
	e := newE2E(t, time.Hour)
	block := fmt.Sprintf(`desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     %s
		warm_up       off
	}
	reverse_proxy %s`, testClientID, e.tokenURL(), e.srv.Listener.Addr())
	e.loadRaw(fmt.Sprintf(e.base+" {\n\t%s\n}\nhttp://127.0.0.1:"+httpPort+" {\n\t%s\n}\n", block, block))
	for _, host := range []string{"localhost", "127.0.0.1", "localhost"} {
		resp, err := e.client.Get("http://" + host + ":" + httpPort + "/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", host, resp.StatusCode)
		}
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d for two sites with one credential set, want 1", n)
	}
}

func TestE2EWarmUpFetchesAtStartup(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("") // warm_up defaults to on
	waitFor(t, "the warm-up's token request", func() bool { return e.desko.TokenRequests() > 0 })
	if n := e.desko.TokenRequests(); n != 1 {
		t.Fatalf("token requests after warm-up = %d, want 1", n)
	}
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d", s)
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1: the request should find the warm token", n)
	}
}

func TestE2ERevokedTokenIsReplayedWithBody(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, body := e.do("GET", "/first", ""); s != 200 {
		t.Fatalf("status %d: %s", s, body)
	}
	e.desko.RevokeAll()
	s, hdr, body := e.do("GET", "/after-revocation", "")
	if s != 200 || decodeAPI(t, body).Path != "/after-revocation" {
		t.Fatalf("GET after revocation: status %d body %s", s, body)
	}
	if hdr.Get("X-Attempt-Rejected") != "" || hdr.Get("WWW-Authenticate") != "" {
		t.Errorf("headers of the rejected attempt leaked into the replayed answer: %v", hdr)
	}
	if hdr.Get("X-Upstream") != "desko-standin" {
		t.Errorf("replayed answer lacks the upstream's headers: %v", hdr)
	}

	// The replacement worked (the replayed GET succeeded), so revoking it
	// too is a revocation, acted on at once however young the token.
	e.desko.RevokeAll()
	payload := `{"name":"Sala 1","seats":[1,2,3],"note":"ação ✓"}`
	s, _, body = e.do("POST", "/v1.1/bookings", payload, "Content-Type", "application/json")
	if s != 200 {
		t.Fatalf("POST after revocation: status %d body %s", s, body)
	}
	if a := decodeAPI(t, body); a.Method != "POST" || a.Body != payload {
		t.Errorf("replayed POST = %+v, want the exact body", a)
	}
	bodies := e.desko.Bodies()
	if last := bodies[len(bodies)-1]; last != payload {
		t.Errorf("upstream received %q, want %q", last, payload)
	}
	if n := e.desko.TokenRequests(); n != 3 {
		t.Errorf("token requests = %d, want 3 (one initial, one per revocation)", n)
	}
	e.assertNoLeaks(body)
}

func TestE2EReplayDisabledPassesThe401Through(t *testing.T) {
	t.Parallel() // its subtests are (newE2E)
	for _, extra := range []string{"retry_on_unauthorized off", "replay_body_limit 0"} {
		t.Run(strings.Fields(extra)[0], func(t *testing.T) {
			e := newE2E(t, time.Hour)
			e.load("warm_up off\n\t\t" + extra)
			if s, _, _ := e.do("GET", "/a", ""); s != 200 {
				t.Fatalf("status %d", s)
			}
			e.desko.RevokeAll()
			s, hdr, body := e.do("GET", "/b", "")
			if s != 401 || hdr.Get("X-Attempt-Rejected") != "yes" {
				t.Fatalf("status %d headers %v, want the upstream's own 401", s, hdr)
			}
			if d := decodeErr(t, body); d.Message != "Unauthenticated." {
				t.Errorf("body %q is not the upstream's", body)
			}
			// The token source heard of the 401 all the same: it fetches a
			// new token (tokens last an hour here), in the background, and
			// requests carry it once it has come (a request sent before
			// then may still carry the old one: unreplayed, its 401 passes
			// through, and costs no other token request).
			waitFor(t, "the token request the 401 caused", func() bool { return e.desko.TokenRequests() >= 2 })
			waitFor(t, "a request with the new token", func() bool {
				s, _, _ := e.do("GET", "/c", "")
				return s == 200
			})
			if n := e.desko.TokenRequests(); n != 2 {
				t.Errorf("token requests = %d, want 2", n)
			}
		})
	}
}

func TestE2ELargeBodyIsSentOnceAnd401PassesThrough(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off\n\t\treplay_body_limit 16")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	e.desko.RevokeAll()
	s, hdr, _ := e.do("POST", "/big", strings.Repeat("x", 64), "Content-Type", "text/plain")
	if s != 401 || hdr.Get("X-Attempt-Rejected") != "yes" {
		t.Fatalf("status %d, want the upstream's 401 for a body over the limit", s)
	}
	if n := e.desko.APIRequests(); n != 2 {
		t.Errorf("API requests = %d, want 2 (the big body is sent once)", n)
	}
}

func TestE2EReplayThatFailsAgainIsNotLooped(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	before := e.desko.APIRequests()
	e.desko.RejectNextAPIRequests(2) // the first attempt and the replay
	s, hdr, _ := e.do("GET", "/b", "")
	if s != 401 || hdr.Get("X-Attempt-Rejected") != "yes" {
		t.Fatalf("status %d, want the replay's 401", s)
	}
	if n := e.desko.APIRequests() - before; n != 2 {
		t.Errorf("API requests = %d, want exactly 2 (one replay, no loop)", n)
	}
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2", n)
	}
	// The replacement token was rejected within its first second: another
	// 401 now must not cause another fetch.
	e.desko.RejectNextAPIRequests(1)
	if s, _, _ := e.do("GET", "/c", ""); s != 401 {
		t.Fatalf("status %d", s)
	}
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d after a second 401 storm, want still 2", n)
	}
}

func TestE2ETokenEndpointDown(t *testing.T) {
	t.Parallel()
	t.Run("with a valid token every request succeeds", func(t *testing.T) {
		e := newParallelE2E(t, 4*time.Second)
		e.load("warm_up off")
		start := time.Now() // the token is obtained after this: valid ≥ 4 s from here
		if s, _, _ := e.do("GET", "/a", ""); s != 200 {
			t.Fatal("warm request failed")
		}
		e.desko.SetMode(deskotest.ModeDown)
		// Traffic through the refresh point (75–80% of 4 s, at most 3.2 s
		// after start) until 0.6 s before expiry: the refresh fails, the
		// current token is still served. A request each time the wait
		// looks again.
		i := 0
		waitFor(t, "the failed refresh, then 0.6 s before expiry, with traffic", func() bool {
			i++
			if s, _, body := e.do("GET", "/b", ""); s != 200 {
				t.Fatalf("request %d: status %d: %s", i, s, body)
			}
			return e.desko.TokenRequests() >= 2 && time.Since(start) >= 3400*time.Millisecond
		})
		if n := e.desko.TokenRequests(); n < 2 {
			t.Errorf("token requests = %d: the refresh was never attempted", n)
		}
		e.assertNoLeaks()
	})
	t.Run("with no token: 503, Retry-After, nothing forwarded", func(t *testing.T) {
		e := newParallelE2E(t, time.Hour)
		e.desko.SetMode(deskotest.ModeDown)
		e.load("warm_up off")
		for range 10 {
			if d, _ := e.unavailable("/a", msgUnavailable); !strings.Contains(e.detail(d), "token endpoint answered 500") {
				t.Fatalf("logged detail %q, want the endpoint's 500", e.detail(d))
			}
		}
		if n := e.desko.APIRequests(); n != 0 {
			t.Errorf("%d requests forwarded without a token", n)
		}
		if n := e.desko.TokenRequests(); n > 2 {
			t.Errorf("token requests = %d for 10 client requests, want fail-fast", n)
		}
	})
}

func TestE2EHTMLAnswerThenRecovery(t *testing.T) {
	e := newParallelE2E(t, time.Hour)
	e.desko.SetMode(deskotest.ModeHTML)
	e.load("warm_up off")
	if d, _ := e.unavailable("/a", msgUnavailable); !strings.Contains(e.detail(d), "unusable token answer") {
		t.Errorf("logged detail %q, want the unusable answer", e.detail(d))
	}
	e.desko.SetMode(deskotest.ModeOK)
	// The first backoff step is ~1 s (±20%): the background retry gets a
	// token then, without any client request causing a fetch.
	waitFor(t, "the background retry", func() bool { return e.desko.TokenRequests() >= 2 })
	if s, _, body := e.do("GET", "/b", ""); s != 200 {
		t.Fatalf("after recovery: status %d %s", s, body)
	}
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2", n)
	}
}

func TestE2EConcurrentRequestsShareOneSlowFetch(t *testing.T) {
	e := newE2E(t, time.Hour) // in-process: the race detector sees the 50 requests
	e.desko.SetDelay(200 * time.Millisecond)
	e.load("warm_up off")
	var wg sync.WaitGroup
	statuses := make(chan int, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.client.Get(e.base + "/c")
			if err != nil {
				statuses <- -1
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("status %d", s)
		}
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d for 50 concurrent requests, want 1", n)
	}
}

func TestE2ERFCErrorShape(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.desko.SetMode(deskotest.ModeRFCReject)
	e.load("warm_up off")
	s, _, body := e.do("GET", "/a", "")
	if s != 502 {
		t.Fatalf("status %d", s)
	}
	if d := decodeErr(t, body); d.Message != msgRefused ||
		!strings.Contains(e.detail(d), "token endpoint answered 400: invalid_client: Client authentication failed") {
		t.Errorf("message %q", d.Message)
	}
}

func TestE2EProvisionErrorsNameTheField(t *testing.T) {
	for name, tc := range map[string]struct{ block, want string }{
		"unset env":    {"client_id x\n client_secret {env.DESKO_SURELY_UNSET_VAR}", "{env.DESKO_SURELY_UNSET_VAR}"},
		"missing file": {"client_id x\n client_secret {file./nonexistent/desko-secret}", "{file./nonexistent/desko-secret}"},
		"no secret":    {"client_id x", "client_secret"},
		"bad url":      {"client_id x\n client_secret y\n token_url ftp://example.com/t", "token_url"},
	} {
		t.Run(name, func(t *testing.T) {
			caddytest.AssertLoadError(t, fmt.Sprintf(`{
	skip_install_trust
	admin localhost:2999
	http_port `+httpPort+`
}
`+proxyBase+` {
	desko_auth {
		%s
	}
	respond ok
}`, tc.block), "caddyfile", tc.want)
		})
	}
}

// A POST whose body arrives chunked (unknown length) is sent once.
func TestE2EChunkedBodyIsNotBuffered(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("warm request failed")
	}
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("streamed"))
		_ = pw.Close()
	}()
	req, _ := http.NewRequest("POST", e.base+"/stream", pr)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"body":"streamed"`)) {
		t.Fatalf("status %d body %s", resp.StatusCode, b)
	}
}

// Extra parameters and token request headers set credential sets apart in
// the shared cache: an entry's key covers them (header names canonical),
// and a set with neither keeps the key it had before they existed.
func TestSharedIdentitySeparatesAudiences(t *testing.T) {
	const tokenURL = "https://auth.example/token"
	scopes := []string{"a"}
	now := time.Now()
	stored := &token.Stored{AccessToken: "tok", Obtained: now, Expiry: now.Add(time.Hour)}
	for _, tc := range []struct {
		name  string
		creds token.Credentials
		extra map[string]string
	}{
		{"no params and no token headers", token.Credentials{}, nil},
		{"an audience and a tenant", token.Credentials{Params: map[string]string{"audience": "x"}, Headers: map[string]string{"x-tenant": "acme"}},
			map[string]string{"param:audience": "x", "header:X-Tenant": "acme"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			entry, err := fleet.New(&certmagic.FileStorage{Path: dir}, tokenURL, scopes, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := tc.creds
			c.ClientID, c.ClientSecret = "id", "secret"
			if err := entry.Save(context.Background(), &c, stored); err != nil {
				t.Fatal(err)
			}
			want := filepath.Join(dir, filepath.FromSlash(fleet.Key(tokenURL, "id", scopes, tc.extra)))
			if files := filesUnder(t, dir); len(files) != 1 || files[0] != want {
				t.Errorf("entry stored as %v, want %s", files, want)
			}
		})
	}
}
