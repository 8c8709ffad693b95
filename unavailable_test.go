package deskoauth

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// The answers of requests that no token could be had for, end to end:
// every way for the token endpoint to fail gets its own kind, status,
// client message, log line, placeholder value, metric label and event,
// each naming what to check.

// failureScenario is one way for the token endpoint to fail, as one
// desko_auth block of the test site meets it.
type failureScenario struct {
	name     string // also the site's path prefix for it
	tokenURL string
	secret   string // the client_secret line's value
}

// observation is what the scenario's request and source showed.
type observation struct {
	status     int
	retryAfter string
	message    string // the client's fixed message
	reqKind    string // the kind field of the WARN "request answered without a token"
	reqError   string // its error field
	errorPH    string // {http.desko_auth.error}, from the access log
	level, msg string // the source's failure line
	logKind    string // its kind field
	logError   string // its error field
	result     string // the result label of its desko_auth_token_fetches_total series
	fetches    float64
	retryIn    time.Duration // the status's next_retry_at − last_fetch_at
	event      string        // the event of the failed token request
	eventData  map[string]any
	// failureLines and events count the source's failure lines and events:
	// one per token request (a scenario whose retry is 1 s away may have
	// retried once by the time the log and the events are read).
	failureLines, events int
}

// failureServers are the token endpoints of the scenarios.
type failureServers struct {
	tls        *httptest.Server // a certificate no system trusts
	redirector *httptest.Server // redirects, by path
	down       *httptest.Server // 500
	html       *httptest.Server // 200 with an HTML page
}

func newFailureServers(t *testing.T, e *e2e) *failureServers {
	t.Helper()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the TLS token endpoint got a token request: the certificate was not checked")
	}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	t.Cleanup(tlsSrv.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/elsewhere":
			http.Redirect(w, r, e.tokenURL(), http.StatusTemporaryRedirect)
		case p == "/https":
			http.Redirect(w, r, "https://"+r.Host+"/token", http.StatusMovedPermanently)
		case p == "/moved":
			http.Redirect(w, r, "/token", http.StatusFound)
		case strings.HasPrefix(p, "/loop"):
			http.Redirect(w, r, p+"/again", http.StatusTemporaryRedirect)
		case p == "/scope":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"invalid_scope","error_description":"scope not allowed for this client"}`)
		case p == "/hangup":
			// A connection that breaks once made: no answer at all.
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
		default:
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
		}
	}))
	t.Cleanup(redirector.Close)
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":500,"message":"Internal server error"}`)
	}))
	t.Cleanup(down.Close)
	html := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html><body>Maintenance</body></html>")
	}))
	t.Cleanup(html.Close)
	return &failureServers{tls: tlsSrv, redirector: redirector, down: down, html: html}
}

// failureRuns counts the runs of the scenarios: sources outlive configs
// (and tests), so the token URLs that are not a test server's differ by
// run, or a run would meet the sources of the one before in their backoff.
var failureRuns atomic.Int64

// failureScenarios are the scenarios, by name.
func failureScenarios(e *e2e, s *failureServers) []failureScenario {
	good := "{env.DESKO_TEST_SECRET}"
	run := failureRuns.Add(1)
	return []failureScenario{
		{"refused", e.tokenURL(), "wrong-" + good},
		{"refused_scope", s.redirector.URL + "/scope", good},
		{"tls", s.tls.URL + "/token", good},
		{"redirect_elsewhere", s.redirector.URL + "/elsewhere", good},
		{"redirect_https", s.redirector.URL + "/https", good},
		{"redirect_moved", s.redirector.URL + "/moved", good},
		{"redirect_loop", s.redirector.URL + "/loop", good},
		// .invalid never resolves (RFC 6761); the fetch timeout bounds a
		// resolver that does not answer.
		{"dns", fmt.Sprintf("https://desko-auth-test.invalid/token/%d", run), good},
		// Port 1 on loopback: nothing listens there (see closedPort).
		{"connect", fmt.Sprintf("http://127.0.0.1:%d/token/%d", closedPort(nil), run), good},
		{"transient", s.down.URL + "/token", good},
		{"transient_hangup", s.redirector.URL + "/hangup", good},
		{"invalid_answer", s.html.URL + "/token", good},
	}
}

// runFailureScenarios runs Caddy with one desko_auth block per scenario,
// each behind its own path, with an access log that shows the error
// placeholder and a subscription to the module's events; sends one
// request to each, and returns what each showed.
func runFailureScenarios(t *testing.T) map[string]observation {
	t.Helper()
	e := newE2E(t, time.Hour)
	scenarios := failureScenarios(e, newFailureServers(t, e))
	// A tag of this run's own: the sources of the run before (a test of
	// its own) may still be in their backoff while this one loads.
	tag := fmt.Sprintf("failure_kinds/%d", failureRuns.Load())
	var site strings.Builder
	fmt.Fprintf(&site, "%s {\n\tlog\n\tlog_append desko_error {http.desko_auth.error}\n", e.base)
	for _, sc := range scenarios {
		fmt.Fprintf(&site, `	handle /%s/* {
		desko_auth {
			client_id     %s
			client_secret %s
			token_url     %s
			timeout       5s
			warm_up       off
		}
		reverse_proxy %s
	}
`, sc.name, testClientID, sc.secret, sc.tokenURL, e.srv.Listener.Addr())
	}
	site.WriteString("}\n")
	loadWithEventRecorder(t, e, site.String(), tag, EventRefreshFailed, EventCredentialsRefused)

	obs := map[string]observation{}
	ids := map[string]string{} // correlation ID → scenario
	for _, sc := range scenarios {
		status, hdr, body := e.do("GET", "/"+sc.name+"/x", "")
		d := decodeErr(t, body)
		ids[d.CorrelationID] = sc.name
		obs[sc.name] = observation{status: status, retryAfter: hdr.Get("Retry-After"), message: d.Message}
	}
	if n := e.desko.APIRequests(); n != 0 {
		t.Errorf("%d requests reached the upstream without a token", n)
	}
	if n := e.desko.TokenRequests(); n != 1 {
		t.Errorf("the stand-in got %d token requests, want only the refused one: a redirect was followed to it", n)
	}

	// The sources, by token URL: their labels, retry times and metrics.
	code, body := e.adminDo("GET", "/desko_auth/status")
	var list []SourceStatus
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list) != len(scenarios) {
		t.Fatalf("status endpoint: %d %s (%v), want %d sources", code, body, err, len(scenarios))
	}
	_, metrics := e.adminDo("GET", "/metrics")
	labels := map[string]string{} // source label → scenario
	for _, sc := range scenarios {
		o := obs[sc.name]
		for _, st := range list {
			if st.TokenURL == sc.tokenURL {
				labels[st.Source] = sc.name
				o.retryIn = st.NextRetryAt.Sub(st.LastFetchAt)
				o.result = metricResult(metrics, st.Source)
				o.fetches = metricValue(t, metrics, "desko_auth_token_fetches_total", map[string]string{"source": st.Source, "result": o.result})
			}
		}
		obs[sc.name] = o
	}

	// The log: each source's failure line (by token_url) and each
	// request's WARN (by correlation ID); the access log's placeholder.
	byURL := map[string]string{}
	for _, sc := range scenarios {
		byURL[sc.tokenURL] = sc.name
	}
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	failureLines := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(string(logs)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Level, Logger, Msg, Kind, Error string
			TokenURL                        string `json:"token_url"`
			CorrelationID                   string `json:"correlation_id"`
			DeskoError                      string `json:"desko_error"`
			Request                         struct {
				URI string `json:"uri"`
			}
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch {
		case l.Logger == "http.handlers.desko_auth" && l.Msg == "request answered without a token":
			if name, ok := ids[l.CorrelationID]; ok {
				o := obs[name]
				o.reqKind, o.reqError = l.Kind, l.Error
				obs[name] = o
			}
		case l.Logger == "http.handlers.desko_auth" && l.Kind != "":
			if name, ok := byURL[l.TokenURL]; ok {
				failureLines[name]++
				o := obs[name]
				o.level, o.msg, o.logKind, o.logError = strings.ToUpper(l.Level), l.Msg, l.Kind, l.Error
				obs[name] = o
			}
		case strings.HasPrefix(l.Logger, "http.log.access"):
			name, _, _ := strings.Cut(strings.TrimPrefix(l.Request.URI, "/"), "/")
			if o, ok := obs[name]; ok {
				o.errorPH = l.DeskoError
				obs[name] = o
			}
		}
	}
	for _, sc := range scenarios {
		o := obs[sc.name]
		o.failureLines = failureLines[sc.name]
		obs[sc.name] = o
	}

	// The events, by source.
	waitFor(t, "an event per failed token request", func() bool {
		return len(recordedFor(tag)) >= len(scenarios)
	})
	for _, ev := range recordedFor(tag) {
		name, ok := labels[fmt.Sprint(ev.Data["source"])]
		if !ok {
			t.Errorf("event %s %v of no scenario", ev.Name(), ev.Data)
			continue
		}
		o := obs[name]
		if o.event != "" && (o.event != ev.Name() || fmt.Sprint(o.eventData["result"]) != fmt.Sprint(ev.Data["result"])) {
			t.Errorf("%s: events %s %v and %s %v", name, o.event, o.eventData, ev.Name(), ev.Data)
		}
		o.event, o.eventData = ev.Name(), ev.Data
		o.events++
		obs[name] = o
	}
	e.assertNoLeaks()
	return obs
}

// metricResult is the result label of the (first)
// desko_auth_token_fetches_total series of a source.
func metricResult(metrics, source string) string {
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "desko_auth_token_fetches_total{") && strings.Contains(line, `source="`+source+`"`) {
			_, rest, _ := strings.Cut(line, `result="`)
			v, _, _ := strings.Cut(rest, `"`)
			return v
		}
	}
	return ""
}

// loadWithEventRecorder loads the Caddyfile sites as JSON with the events
// app, whose subscription to the events named records them under tag.
func loadWithEventRecorder(t *testing.T, e *e2e, sites, tag string, events ...string) {
	t.Helper()
	recordedEvents.Lock()
	recordedEvents.list = nil
	recordedEvents.Unlock()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(e.caddyfile(sites)), nil)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(cfg, &m); err != nil {
		t.Fatal(err)
	}
	m["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   events,
		"handlers": []any{map[string]any{"handler": "desko_auth_test", "tag": tag}},
	}}}
	out, _ := json.Marshal(m)
	e.tester.InitServer(string(out), "json")
	if t.Failed() {
		t.FailNow()
	}
}

// recordedFor returns the events recorded under tag.
func recordedFor(tag string) []caddy.Event {
	recordedEvents.Lock()
	defer recordedEvents.Unlock()
	var out []caddy.Event
	for _, r := range recordedEvents.list {
		if r.tag == tag {
			out = append(out, r.ev)
		}
	}
	return out
}

// The expectations are written out: they are what clients and operators
// read, and what docs/failures.md and docs/troubleshooting.md state.
const (
	wantMsgRefused     = "could not obtain a Desko access token: the token endpoint refused this proxy's credentials"
	wantMsgTLS         = "could not obtain a Desko access token: this proxy does not trust the token endpoint's certificate"
	wantMsgRedirect    = "could not obtain a Desko access token: the token endpoint redirects this proxy's token requests"
	wantMsgUnresolved  = "could not obtain a Desko access token: the token endpoint's address does not resolve; try again later"
	wantMsgUnreachable = "could not obtain a Desko access token: the token endpoint cannot be reached; try again later"
	wantMsgUnavailable = "could not obtain a Desko access token: the token endpoint is unavailable; try again later"

	wantLogRefused  = "token endpoint refused the credentials; check client_id, client_secret and scope"
	wantLogTLS      = "token endpoint's certificate does not verify; check tls_ca and the endpoint's certificate"
	wantLogRedirect = "token endpoint redirected the token request; check token_url"
	wantLogDNS      = "could not obtain a token: the token endpoint's host does not resolve; check token_url and DNS"
	wantLogConnect  = "could not obtain a token: no connection to the token endpoint; check token_url's host and port, and the network"
	wantLogOutage   = "could not obtain a token"
)

func TestE2EFailureKinds(t *testing.T) {
	obs := runFailureScenarios(t)
	const (
		slow = 5 * time.Second // the first backoff step of a configuration problem (±20%)
		fast = time.Second     // of the others (±20%)
	)
	covered := map[string]bool{}
	for _, tc := range []struct {
		scenario string
		kind     string // the label: placeholder, metric result, log kind
		status   int
		message  string
		level    string
		logMsg   string
		errorIn  []string // in the error fields
		event    string
		pace     time.Duration
	}{
		{"refused", "refused", 502, wantMsgRefused, "ERROR", wantLogRefused,
			[]string{"token endpoint answered 401: Client authentication failed"}, EventCredentialsRefused, slow},
		{"refused_scope", "refused", 502, wantMsgRefused, "ERROR", wantLogRefused,
			[]string{"token endpoint answered 400: invalid_scope: scope not allowed for this client"}, EventCredentialsRefused, slow},
		{"tls", "tls", 502, wantMsgTLS, "ERROR", wantLogTLS,
			[]string{"token endpoint's certificate does not verify (check tls_ca and the endpoint's certificate): ", "x509: certificate signed by unknown authority"},
			EventRefreshFailed, slow},
		{"redirect_elsewhere", "redirect", 502, wantMsgRedirect, "ERROR", wantLogRedirect,
			[]string{"token endpoint answered 307: redirect to http://", "/v1.1/oauth/token not followed: it points to another scheme or host (check token_url)"},
			EventRefreshFailed, slow},
		{"redirect_https", "redirect", 502, wantMsgRedirect, "ERROR", wantLogRedirect,
			[]string{"token endpoint answered 301: redirect to https://127.0.0.1:", "/token not followed: it points to another scheme or host (check token_url)"},
			EventRefreshFailed, slow},
		{"redirect_moved", "redirect", 502, wantMsgRedirect, "ERROR", wantLogRedirect,
			[]string{"token endpoint answered 302: redirect to http://127.0.0.1:", "/token not followed: a 302 would resend the token request as a GET without its body (check token_url)"},
			EventRefreshFailed, slow},
		{"redirect_loop", "redirect", 502, wantMsgRedirect, "ERROR", wantLogRedirect,
			[]string{"token endpoint answered 307: redirect to http://127.0.0.1:", "/loop/again/again/again not followed: 2 redirects followed already (check token_url)"},
			EventRefreshFailed, slow},
		{"dns", "dns", 503, wantMsgUnresolved, "WARN", wantLogDNS,
			[]string{"token endpoint's host does not resolve (check token_url and DNS): ", "desko-auth-test.invalid"},
			EventRefreshFailed, fast},
		{"connect", "connect", 503, wantMsgUnreachable, "WARN", wantLogConnect,
			[]string{"could not connect to the token endpoint (check token_url's host and port, and the network): ", "connection refused"},
			EventRefreshFailed, fast},
		{"transient", "transient", 503, wantMsgUnavailable, "WARN", wantLogOutage,
			[]string{"token endpoint answered 500: Internal server error"}, EventRefreshFailed, fast},
		{"transient_hangup", "transient", 503, wantMsgUnavailable, "WARN", wantLogOutage,
			[]string{"token request failed: Post \"http://127.0.0.1:", "/hangup\": EOF"}, EventRefreshFailed, fast},
		{"invalid_answer", "invalid_answer", 503, wantMsgUnavailable, "WARN", wantLogOutage,
			[]string{"token endpoint answered 200: unusable token answer: "}, EventRefreshFailed, fast},
	} {
		covered[tc.scenario] = true
		t.Run(tc.scenario, func(t *testing.T) {
			o := obs[tc.scenario]
			if o.status != tc.status || o.message != tc.message {
				t.Errorf("client got %d %q, want %d %q", o.status, o.message, tc.status, tc.message)
			}
			// A fixed message: never the endpoint's address, Go's error
			// text, or the operator's hints.
			for _, bad := range []string{"127.0.0.1", "invalid", "dial", "connect", "x509", "token_url", "tls_ca", "Post"} {
				if strings.Contains(o.message, bad) {
					t.Errorf("client message %q holds %q", o.message, bad)
				}
			}
			if (o.retryAfter != "") != (tc.status == 503) {
				t.Errorf("status %d with Retry-After %q: want it on 503s only", o.status, o.retryAfter)
			}
			if o.level != tc.level || o.msg != tc.logMsg {
				t.Errorf("log line %s %q, want %s %q", o.level, o.msg, tc.level, tc.logMsg)
			}
			for what, got := range map[string]string{"placeholder": o.errorPH, "log kind": o.logKind, "request's log kind": o.reqKind,
				"metric result": o.result, "event result": fmt.Sprint(o.eventData["result"])} {
				if got != tc.kind {
					t.Errorf("%s %q, want %q", what, got, tc.kind)
				}
			}
			// One token request, and its line and event; a scenario whose
			// retry comes after 1 s may have made its second meanwhile on
			// a busy machine (never one whose retry is 5 s away).
			most := 1
			if tc.pace == fast {
				most = 2
			}
			for what, n := range map[string]int{"desko_auth_token_fetches_total{result=" + tc.kind + "}": int(o.fetches),
				"failure lines": o.failureLines, "events": o.events} {
				if n < 1 || n > most {
					t.Errorf("%s: %d, want 1 (at most %d)", what, n, most)
				}
			}
			for _, w := range tc.errorIn {
				if !strings.Contains(o.logError, w) || !strings.Contains(o.reqError, w) {
					t.Errorf("error fields %q and %q, want both to hold %q", o.logError, o.reqError, w)
				}
			}
			if strings.Contains(o.logError, "check client_id") || strings.Contains(o.reqError, "check client_id") {
				t.Errorf("error %q sends operators to the credentials", o.logError)
			}
			if o.event != tc.event {
				t.Errorf("event %s, want %s", o.event, tc.event)
			}
			// The retry pace: the first backoff step, ±20% jitter (or the
			// second, twice as long, after a retry: the status was read
			// just before the metrics).
			lo, hi := tc.pace*8/10, tc.pace*12/10+time.Second/2
			if o.fetches > 1 {
				hi = 2*tc.pace*12/10 + time.Second/2
			}
			if o.retryIn < lo || o.retryIn > hi {
				t.Errorf("next retry %v after the fetch (%v fetches), want %v (±20%%)", o.retryIn, o.fetches, tc.pace)
			}
		})
	}
	for name := range obs {
		if !covered[name] {
			t.Errorf("scenario %s is not checked", name)
		}
	}
}

// A token endpoint behind a firewall that drops the connection attempts:
// the fetch timeout ends the dial before the dialer's own timeout, and Go
// then reports "context deadline exceeded", not a dial error. It is a
// connect failure all the same (503 "cannot be reached", kind connect, a
// WARN that names the host, port and network), not an unavailable
// endpoint. (Its own test: the 1 s it waits would push the scenarios of
// runFailureScenarios into their retries.)
func TestE2EConnectionAttemptUnanswered(t *testing.T) {
	addr, stop, err := deskotest.Unanswered()
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(stop)
	e := newParallelE2E(t, time.Hour)
	e.loadRaw(fmt.Sprintf(e.base+` {
	log
	log_append desko_error {http.desko_auth.error}
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     http://%s/token
		timeout       500ms
		warm_up       off
	}
	respond "never reached"
}`, testClientID, addr))
	d, _ := e.unavailable("/a", wantMsgUnreachable)
	detail := e.detail(d)
	for _, w := range []string{"could not connect to the token endpoint (check token_url's host and port, and the network): ",
		addr + "/token", "(no answer to the connection attempt)"} {
		if !strings.Contains(detail, w) {
			t.Errorf("logged error %q, want it to hold %q", detail, w)
		}
	}
	logs, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}
	var sourceLine, placeholder string
	for _, line := range strings.Split(string(logs), "\n") {
		var l struct {
			Logger, Msg, Kind string
			DeskoError        string `json:"desko_error"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			continue
		}
		switch {
		case l.Logger == "http.handlers.desko_auth" && l.Kind != "" && l.Msg != "request answered without a token":
			sourceLine = l.Kind + " " + l.Msg
		case strings.HasPrefix(l.Logger, "http.log.access"):
			placeholder = l.DeskoError
		}
	}
	if want := "connect " + wantLogConnect; sourceLine != want {
		t.Errorf("the source logged %q, want %q", sourceLine, want)
	}
	if placeholder != "connect" {
		t.Errorf("{http.desko_auth.error} = %q, want connect", placeholder)
	}
}
