package deskoauth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// Many tenants through one block, end to end through Caddy: the header
// picks the credentials (named blocks, then credentials_dir); unknown and
// hostile values are refused and read nothing outside the folder; tenants
// start on demand, are added and removed without a reload, released when
// idle or past max_tenants; and no request ever carries another tenant's
// token.

// tenantWorld is a stand-in that knows several clients, a credentials_dir
// with some of them, and Caddy in front.
type tenantWorld struct {
	*e2e
	dir string
}

// tenantSecret is a tenant's secret: random-looking, sharing no 8 bytes
// with its name or anything else a log holds (the leak check counts any 8
// bytes of a secret as a leak).
func tenantSecret(name string) string {
	sum := sha256.Sum256([]byte("tenant secret " + name))
	return base64.RawURLEncoding.EncodeToString(sum[:18])
}

func newTenantWorld(t *testing.T, ttl time.Duration, dirTenants ...string) *tenantWorld {
	t.Helper()
	return tenantWorldOn(newE2E(t, ttl), dirTenants...)
}

// tenantWorldOn is newTenantWorld around e (an in-process or a process
// Caddy, not loaded yet).
func tenantWorldOn(e *e2e, dirTenants ...string) *tenantWorld {
	e.t.Helper()
	w := &tenantWorld{e2e: e, dir: e.t.TempDir()}
	for _, name := range append([]string{"acme", "globex"}, dirTenants...) {
		e.desko.AddClient("client-"+name, tenantSecret(name))
	}
	for _, name := range dirTenants {
		w.addDirTenant(name, "")
	}
	e.setenv("ACME_SECRET", tenantSecret("acme"))
	e.setenv("GLOBEX_SECRET", tenantSecret("globex"))
	return w
}

// addDirTenant writes a tenant's files into the credentials_dir.
func (w *tenantWorld) addDirTenant(name, scope string) {
	w.t.Helper()
	d := filepath.Join(w.dir, name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		w.t.Fatal(err)
	}
	writeFile(w.t, filepath.Join(d, dirClientID), "client-"+name+"\n")
	writeFile(w.t, filepath.Join(d, dirClientSecret), tenantSecret(name)+"\n")
	if scope != "" {
		writeFile(w.t, filepath.Join(d, dirScope), scope+"\n")
	}
}

// load runs Caddy with one tenant block; extra lines go into the block.
func (w *tenantWorld) load(extra string) {
	w.t.Helper()
	w.loadRaw(fmt.Sprintf(w.base+` {
	desko_auth {
		tenant          {http.request.header.X-Desko-Tenant}
		token_url       %s
		credentials acme {
			client_id     client-acme
			client_secret {env.ACME_SECRET}
			scope         booking.show
		}
		credentials globex {
			client_id     client-globex
			client_secret {env.GLOBEX_SECRET}
		}
		credentials_dir %s
		%s
	}
	reverse_proxy %s
}`, w.tokenURL(), w.dir, extra, w.srv.Listener.Addr()))
}

// call sends a request as tenant and returns the status and the client
// the upstream saw the token of.
func (w *tenantWorld) call(tenant string) (int, string) {
	req, _ := http.NewRequest("GET", w.base+"/api", nil)
	if tenant != "\x00none" {
		req.Header.Set("X-Desko-Tenant", tenant)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		w.t.Fatalf("tenant %q: %v", tenant, err)
	}
	defer resp.Body.Close()
	var body struct {
		ClientID string `json:"client_id"`
		Error    int    `json:"error"`
		Message  string `json:"message"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode == 403 && (body.Error != 403 || !strings.Contains(body.Message, "unknown tenant")) {
		w.t.Errorf("tenant %q: 403 not in Desko's shape: %+v", tenant, body)
	}
	return resp.StatusCode, body.ClientID
}

func (e *e2e) tenantPage(query string) TenantPage {
	e.t.Helper()
	code, body := e.adminDo("GET", "/desko_auth/tenants"+query)
	var p TenantPage
	if err := json.Unmarshal([]byte(body), &p); code != 200 || err != nil {
		e.t.Fatalf("tenants endpoint: %d %s (%v)", code, body, err)
	}
	return p
}

func TestE2ETenantsPickCredentials(t *testing.T) {
	w := newTenantWorld(t, time.Hour, "initech", "umbrella")
	w.load("")
	// Named tenants warm up; credentials_dir tenants cost nothing at load.
	waitFor(t, "the named tenants' warm-up", func() bool { return w.desko.TokenRequests() == 2 })
	for tenant, client := range map[string]string{"acme": "client-acme", "globex": "client-globex", "initech": "client-initech", "umbrella": "client-umbrella"} {
		if s, got := w.call(tenant); s != 200 || got != client {
			t.Errorf("tenant %s: %d with a token of %q, want 200 with %s's", tenant, s, got, client)
		}
	}
	if n := w.desko.TokenRequests(); n != 4 {
		t.Errorf("%d token requests, want 4 (one per tenant)", n)
	}
	// A tenant added while Caddy runs is served without a reload.
	w.addDirTenant("hooli", "")
	w.desko.AddClient("client-hooli", tenantSecret("hooli"))
	if s, got := w.call("hooli"); s != 200 || got != "client-hooli" {
		t.Errorf("a new tenant: %d %q", s, got)
	}
	// The status lists the live tenants, paged; the sources list keeps
	// out the credentials_dir tenants.
	p := w.tenantPage("?per_page=2")
	if p.Total != 5 || len(p.Tenants) != 2 || p.Tenants[0].Tenant != "acme" || p.Tenants[0].Kind != "named" {
		t.Errorf("tenants page 1: %+v", p)
	}
	if p := w.tenantPage("?per_page=2&page=3"); len(p.Tenants) != 1 || p.Tenants[0].Tenant != "umbrella" || p.Tenants[0].Kind != "dir" {
		t.Errorf("tenants page 3: %+v", p)
	}
	if code, _ := w.adminDo("GET", "/desko_auth/tenants?per_page=100000"); code != 400 {
		t.Errorf("per_page over the maximum: %d, want 400", code)
	}
	if n := len(w.sourceStatuses()); n != 2 {
		t.Errorf("the status lists %d sources, want the 2 named tenants'", n)
	}
	// A reload of the same block starts nothing again.
	before := w.desko.TokenRequests()
	w.load("")
	for _, tenant := range []string{"acme", "initech", "hooli"} {
		if s, _ := w.call(tenant); s != 200 {
			t.Errorf("after a reload, tenant %s: %d", tenant, s)
		}
	}
	if n := w.desko.TokenRequests() - before; n != 0 {
		t.Errorf("a reload cost %d token requests, want 0", n)
	}
	// Metrics: the named tenants have series of their own; the
	// credentials_dir tenants are counted under the block.
	_, text := w.adminDo("GET", "/metrics")
	block := p.Tenants[0].Block
	if v := metricValue(t, text, "desko_auth_tenants", map[string]string{"source": block}); v != 3 {
		t.Errorf("desko_auth_tenants = %v, want 3", v)
	}
	if v := metricValue(t, text, "desko_auth_tenant_starts_total", map[string]string{"source": block}); v != 3 {
		t.Errorf("tenant_starts_total = %v, want 3", v)
	}
	if v := metricValue(t, text, "desko_auth_token_fetches_total", map[string]string{"source": block, "result": "ok"}); v != 3 {
		t.Errorf("the block's fetches = %v, want 3", v)
	}
	// One expiry gauge cannot tell the block's tenants apart, and the last
	// one set would outlive its tenant (an alert on it would fire once the
	// tenant is released): the block's stays 0; a named tenant has its own.
	if v := metricValue(t, text, "desko_auth_token_expiry_timestamp_seconds", map[string]string{"source": block}); v != 0 {
		t.Errorf("the block's token expiry = %v, want 0", v)
	}
	if v := metricValue(t, text, "desko_auth_token_expiry_timestamp_seconds", map[string]string{"source": p.Tenants[0].Source}); v < float64(time.Now().Unix()) {
		t.Errorf("the named tenant acme's token expiry = %v, want its token's", v)
	}
	logs, _ := os.ReadFile(w.logFile)
	for _, name := range []string{"acme", "globex", "initech", "umbrella", "hooli"} {
		scrubtest.NewCheck("client-"+name, tenantSecret(name), w.desko.Issued()...).AssertNone(t, "Caddy's log", string(logs))
	}
}

// Values that name nothing get 403 in Desko's shape, are never forwarded,
// are counted and logged at most once a minute each; values that try to
// leave the folder read nothing outside it.
func TestE2ETenantsRefuseUnknownAndHostileValues(t *testing.T) {
	w := newTenantWorld(t, time.Hour, "initech")
	// A tenant outside the folder that a symlink inside points at, and a
	// file next to the folder.
	outside := t.TempDir()
	w.desko.AddClient("client-outside", tenantSecret("outside"))
	writeFile(t, filepath.Join(outside, dirClientID), "client-outside\n")
	writeFile(t, filepath.Join(outside, dirClientSecret), tenantSecret("outside")+"\n")
	if err := os.Symlink(outside, filepath.Join(w.dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(w.dir, "halfway"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, dirClientSecret), filepath.Join(w.dir, "halfway", dirClientSecret)); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(w.dir, "halfway", dirClientID), "client-outside\n")
	w.load("")
	apiBefore := w.desko.APIRequests()
	hostile := []string{"", "\x00none", "unknown", "../x", "..", ".", "./initech", "%2e%2e%2f", "..%2F" + filepath.Base(outside),
		outside, "/etc/passwd", "initech/../initech", strings.Repeat("a", 10*1024), "іnitech" /* Cyrillic і */, "ＩＮＩＴＥＣＨ", "escape", "halfway"}
	for _, v := range hostile {
		s, got := w.call(v)
		if s != 403 && !(v == "halfway" && s == 502) {
			t.Errorf("tenant %q: %d %q, want 403", v, s, got)
		}
	}
	if n := w.desko.APIRequests() - apiBefore; n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
	waitFor(t, "the named tenants' warm-up", func() bool { return w.desko.TokenRequests() >= 2 })
	if n, out := w.desko.TokenRequests(), w.desko.IssuedTo("client-outside"); n != 2 || out != 0 {
		t.Errorf("%d token requests, %d with the credentials outside the folder; want the 2 named tenants' and none", n, out)
	}
	// The same unknown value, again and again: logged once.
	for range 20 {
		w.call("unknown")
	}
	if n := strings.Count(readLog(t, w.logFile), `"tenant":"\"unknown\""`); n != 1 {
		t.Errorf("the unknown tenant was logged %d times, want once a minute", n)
	}
	_, text := w.adminDo("GET", "/metrics")
	block := w.tenantPage("").Tenants[0].Block
	if v := metricValue(t, text, "desko_auth_requests_total", map[string]string{"source": block, "outcome": "unknown_tenant"}); v < float64(len(hostile)) {
		t.Errorf("unknown_tenant = %v, want at least %d", v, len(hostile))
	}
	// A valid tenant still works.
	if s, got := w.call("initech"); s != 200 || got != "client-initech" {
		t.Errorf("initech: %d %q", s, got)
	}

	// A tenant from the query string, which Caddy decodes: no decoding
	// game reaches a path.
	w.loadRaw(fmt.Sprintf(w.base+` {
	desko_auth {
		tenant          {http.request.uri.query.t}
		token_url       %s
		credentials_dir %s
	}
	reverse_proxy %s
}`, w.tokenURL(), w.dir, w.srv.Listener.Addr()))
	for _, q := range []string{"%2e%2e%2finitech", "..%2finitech", "initech%00", "%00", "%2fetc%2fpasswd", "%252e%252e", "init%C3%A9ch", "escape"} {
		s, _, _ := w.do("GET", "/api?t="+q, "")
		if s != 403 {
			t.Errorf("query tenant %q: %d, want 403", q, s)
		}
	}
	if s, _, _ := w.do("GET", "/api?t=initech", ""); s != 200 {
		t.Errorf("query tenant initech: %d", s)
	}
	if n := w.desko.APIRequests() - apiBefore; n != 2 {
		t.Errorf("%d requests reached the upstream, want the 2 valid ones", n)
	}
}

// Tenants are released when idle and past max_tenants (least recently used
// first), and start again on demand; a tenant whose folder is removed is
// released at its next token request and then refused.
func TestE2ETenantsLifecycle(t *testing.T) {
	w := tenantWorldOn(newParallelE2E(t, 3*time.Second), "t1", "t2", "t3")
	w.load("max_tenants 2\n\t\ttenant_idle 2s")
	// t2 starts first: the least recently used (a start records its time
	// exactly; later uses to the second).
	for _, name := range []string{"t2", "t1"} {
		if s, _ := w.call(name); s != 200 {
			t.Fatalf("%s: %d", name, s)
		}
	}
	if s, _ := w.call("t3"); s != 200 {
		t.Fatalf("t3: %d", s)
	}
	live := func() map[string]bool {
		m := map[string]bool{}
		for _, tn := range w.tenantPage("").Tenants {
			if tn.Kind == "dir" {
				m[tn.Tenant] = true
			}
		}
		return m
	}
	if l := live(); len(l) != 2 || !l["t1"] || !l["t3"] {
		t.Errorf("live tenants %v, want t1 and t3 (t2 least recently used)", l)
	}
	// Unused for tenant_idle: released, and started again on demand, with
	// one token request of its own (t1's or t3's refresh may have been in
	// flight when they were released: it is not counted here).
	waitFor(t, "the idle tenants to be released", func() bool { return len(live()) == 0 })
	before := w.desko.IssuedTo("client-t2")
	if s, _ := w.call("t2"); s != 200 || w.desko.IssuedTo("client-t2") != before+1 {
		t.Errorf("t2 after release: %d, %d token requests for t2", s, w.desko.IssuedTo("client-t2")-before)
	}
	// Removed: served from its token until its next token request (3 s
	// tokens refresh at about 2.3 s), released then, and refused after.
	// The calls keep t2 in use, so that the idle sweep (2 s unused) cannot
	// release it first.
	if err := os.RemoveAll(filepath.Join(w.dir, "t2")); err != nil {
		t.Fatal(err)
	}
	var statuses []int
	waitFor(t, "the removed tenant to be refused", func() bool {
		s, _ := w.call("t2")
		if len(statuses) == 0 || statuses[len(statuses)-1] != s {
			statuses = append(statuses, s)
		}
		return s != 200
	})
	if len(statuses) != 2 || statuses[0] != 200 || statuses[1] != 403 {
		t.Errorf("a removed tenant answered %v in turn, want 200 until its next token request, then 403", statuses)
	}
	if live()["t2"] {
		t.Error("a refused tenant is still live")
	}
	_, text := w.adminDo("GET", "/metrics")
	block := w.tenantPage("").Tenants[0].Block
	for reason, want := range map[string]float64{"max_tenants": 1, "idle": 2, "removed": 1} {
		if v := metricValue(t, text, "desko_auth_tenant_evictions_total", map[string]string{"source": block, "reason": reason}); v != want {
			t.Errorf("evictions{%s} = %v, want %v", reason, v, want)
		}
	}
}

// Under concurrent mixed-tenant load, with refreshes (3 s tokens) and a
// revocation (replays), every upstream request carries its own tenant's
// token.
func TestE2ETenantsNeverCrossTokens(t *testing.T) {
	names := []string{"t1", "t2", "t3", "t4", "t5"}
	w := tenantWorldOn(newParallelE2E(t, 3*time.Second), names...)
	w.load("")
	all := append([]string{"acme", "globex"}, names...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var wrong []string
	deadline := time.Now().Add(4 * time.Second) // spans a refresh of every token
	// Two revocations of every token at once, during the load: replays.
	wg.Go(func() {
		for _, at := range []time.Duration{time.Second, 2500 * time.Millisecond} {
			waitFor(t, "the moment to revoke", func() bool { return time.Until(deadline) <= 4*time.Second-at })
			w.desko.RevokeAll()
		}
	})
	for i := range 8 {
		wg.Go(func() {
			pace := time.NewTicker(clientPace)
			defer pace.Stop()
			for n := i; time.Now().Before(deadline); n++ {
				tenant := all[n%len(all)]
				if s, got := w.call(tenant); s != 200 || got != "client-"+tenant {
					mu.Lock()
					wrong = append(wrong, fmt.Sprintf("%s: %d %s", tenant, s, got))
					mu.Unlock()
				}
				<-pace.C
			}
		})
	}
	wg.Wait()
	if len(wrong) != 0 {
		t.Errorf("%d requests got another tenant's token or none: %v", len(wrong), wrong[:min(len(wrong), 10)])
	}
}

// token_concurrency bounds the token requests in flight to one endpoint:
// twenty named tenants warming up at once against a slow endpoint never
// have more than 3 in flight.
func TestE2ETokenConcurrency(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.desko.SetDelay(200 * time.Millisecond) // long enough for three at once on a busy machine
	var blocks strings.Builder
	for i := range 20 {
		name := fmt.Sprintf("n%d", i)
		e.desko.AddClient("client-"+name, tenantSecret(name))
		e.setenv("SECRET_"+name, tenantSecret(name))
		fmt.Fprintf(&blocks, "\t\tcredentials %s {\n\t\t\tclient_id client-%s\n\t\t\tclient_secret {env.SECRET_%s}\n\t\t}\n", name, name, name)
	}
	e.loadRaw(fmt.Sprintf(e.base+` {
	desko_auth {
		tenant            {http.request.header.X-Desko-Tenant}
		token_url         %s
		token_concurrency 3
%s	}
	reverse_proxy %s
}`, e.tokenURL(), blocks.String(), e.srv.Listener.Addr()))
	waitFor(t, "the twenty warm-ups", func() bool { return e.desko.TokenRequests() == 20 })
	if m := e.desko.MaxInFlight(); m != 3 {
		t.Errorf("at most %d token requests were in flight, want 3", m)
	}
}

// A 429 with Retry-After from the token endpoint pauses every tenant of
// that endpoint, not only the one that got it: the others send nothing
// until then and answer 503 with the time left.
func TestE2ETokenEndpointPauseHoldsEveryTenant(t *testing.T) {
	w := newTenantWorld(t, time.Hour)
	w.load("warm_up off")
	w.desko.SetRetryAfter("30")
	w.desko.SetMode(deskotest.ModeBusy)
	if s, _ := w.call("acme"); s != http.StatusServiceUnavailable {
		t.Fatalf("acme against a busy endpoint: %d", s)
	}
	if n := w.desko.TokenRequests(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
	req, _ := http.NewRequest("GET", w.base+"/api", nil)
	req.Header.Set("X-Desko-Tenant", "globex")
	resp, err := w.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != http.StatusServiceUnavailable || ra < 25 || ra > 30 {
		t.Errorf("globex during the pause: %d, Retry-After %q; want 503 with the pause's time left", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := w.desko.TokenRequests(); n != 1 {
		t.Errorf("%d token requests during the pause, want 1 (only acme's)", n)
	}
}

// Every log line about a credentials_dir tenant names it once: a line with
// two "tenant" keys is JSON that log pipelines read one way or the other
// (or refuse). The lines of a tenant whose credentials become unreadable,
// then whose folder is removed, and of its source, are checked.
func TestE2ETenantLogLinesNameTheTenantOnce(t *testing.T) {
	w := tenantWorldOn(newParallelE2E(t, 2*time.Second), "initech")
	w.load("")
	if s, got := w.call("initech"); s != 200 || got != "client-initech" {
		t.Fatalf("initech: %d %q", s, got)
	}
	// An empty secret: the last good credentials are kept, with a WARN, at
	// the next token request (2 s tokens refresh within about 1.5 s).
	writeFile(t, filepath.Join(w.dir, "initech", dirClientSecret), "")
	waitFor(t, "the WARN about initech's unreadable credentials", func() bool {
		return strings.Contains(readLog(t, w.logFile), "a tenant's credentials cannot be read; keeping the last good ones")
	})
	if err := os.RemoveAll(filepath.Join(w.dir, "initech")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the INFO about initech's folder being gone", func() bool {
		return strings.Contains(readLog(t, w.logFile), "a tenant's folder is gone from credentials_dir")
	})
	seen := 0
	for line := range strings.Lines(readLog(t, w.logFile)) {
		if !strings.Contains(line, "initech") {
			continue
		}
		if n := strings.Count(line, `"tenant":`); n > 1 {
			t.Errorf("a log line names its tenant %d times: %s", n, line)
		}
		seen++
	}
	if seen < 2 {
		t.Errorf("%d log lines name initech, want at least the WARN and the INFO", seen)
	}
}

// The shared cache's gauges count a credentials_dir tenant under its
// block's label, like its other series: a storage that fails for the
// tenants of a folder shows as degraded (and DeskoAuthSharedCacheDegraded
// can fire), not as nothing.
func TestE2ETenantsSharedCacheGauges(t *testing.T) {
	w := newTenantWorld(t, time.Hour, "initech")
	notADir := filepath.Join(t.TempDir(), "not-a-folder")
	writeFile(t, notADir, "a file where the storage wants a folder\n")
	w.load(fmt.Sprintf("warm_up off\n\t\tshared_cache {\n\t\t\tstorage file_system %s\n\t\t}", notADir))
	if s, got := w.call("initech"); s != 200 || got != "client-initech" {
		t.Fatalf("initech with a failing storage: %d %q (a token fetched locally is still served)", s, got)
	}
	var block string
	for _, tn := range w.tenantPage("").Tenants {
		if tn.Kind == "dir" {
			block = tn.Block
		}
	}
	if block == "" {
		t.Fatal("initech is not live")
	}
	if degraded, stuck := w.sharedGauges(block); degraded != 1 || stuck != 0 {
		t.Errorf("the block's shared cache gauges: degraded %v, stuck %v; want 1 and 0", degraded, stuck)
	}
}
