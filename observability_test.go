package deskoauth

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// End-to-end tests of what operators see: /metrics, the admin API, and
// several credential sets in one Caddy.

// adminDo sends a request to the test's Caddy's admin API.
func (e *e2e) adminDo(method, path string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.admin+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// onlySource returns the status of the one token source of the running
// config, from the admin API.
func (e *e2e) onlySource() SourceStatus {
	e.t.Helper()
	code, body := e.adminDo("GET", "/desko_auth/status")
	var list []SourceStatus
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list) != 1 {
		e.t.Fatalf("status endpoint: %d %s (%v), want one source", code, body, err)
	}
	return list[0]
}

// metricValue finds one sample in Prometheus text output; labels must all
// match. It returns -1 when the sample is absent.
func metricValue(t *testing.T, text, name string, labels map[string]string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for k, v := range labels {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", k, v)) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		return f
	}
	return -1
}

// label is the label of the running config's source for the test's
// client ID and these scopes, from the admin API.
func (e *e2e) label(scopes ...string) string {
	e.t.Helper()
	code, body := e.adminDo("GET", "/desko_auth/status")
	var list []SourceStatus
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil {
		e.t.Fatalf("status endpoint: %d %s (%v)", code, body, err)
	}
	for _, s := range list {
		if s.ClientID == testClientID && strings.Join(s.Scopes, " ") == strings.Join(scopes, " ") {
			return s.Source
		}
	}
	e.t.Fatalf("no source for %s with scopes %q in %s", testClientID, scopes, body)
	return ""
}

func TestE2EMetricsSurviveReload(t *testing.T) {
	e := newParallelE2E(t, time.Hour)
	e.load("warm_up off")
	for range 5 {
		if s, _, _ := e.do("GET", "/m", ""); s != 200 {
			t.Fatal("request failed")
		}
	}
	e.load("warm_up off\n\t\ttimeout 10s") // a reload with the same credentials
	for range 5 {
		if s, _, _ := e.do("GET", "/m", ""); s != 200 {
			t.Fatal("request failed after reload")
		}
	}
	e.desko.RevokeAll()
	if s, _, _ := e.do("GET", "/m", ""); s != 200 {
		t.Fatal("replayed request failed")
	}

	_, text := e.adminDo("GET", "/metrics")
	src := e.label("booking.show", "organization.show")
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"desko_auth_requests_total", map[string]string{"source": src, "outcome": "injected"}, 10},
		{"desko_auth_requests_total", map[string]string{"source": src, "outcome": "replayed"}, 1},
		{"desko_auth_requests_total", map[string]string{"source": src, "outcome": "unavailable"}, 0},
		{"desko_auth_token_fetches_total", map[string]string{"source": src, "result": "ok"}, 2},
		{"desko_auth_token_fetch_duration_seconds_count", map[string]string{"source": src}, 2},
	}
	for _, c := range checks {
		if got := metricValue(t, text, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	exp := metricValue(t, text, "desko_auth_token_expiry_timestamp_seconds", map[string]string{"source": src})
	if now := float64(time.Now().Unix()); exp < now+3500 || exp > now+3601 {
		t.Errorf("expiry gauge = %v, want about now+3600 (%v)", exp, now+3600)
	}
	e.leakCheck().AssertNone(t, "/metrics", text)
}

func TestE2EMetricsCountFailures(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.desko.SetClientSecret("other")
	e.load("warm_up off")
	for range 3 {
		if s, _, _ := e.do("GET", "/m", ""); s != 502 {
			t.Fatal("want 502")
		}
	}
	_, text := e.adminDo("GET", "/metrics")
	src := e.label("booking.show", "organization.show")
	if got := metricValue(t, text, "desko_auth_token_fetches_total", map[string]string{"source": src, "result": "refused"}); got != 1 {
		t.Errorf("refused fetches = %v, want 1", got)
	}
	if got := metricValue(t, text, "desko_auth_requests_total", map[string]string{"source": src, "outcome": "unavailable"}); got != 3 {
		t.Errorf("unavailable requests = %v, want 3", got)
	}
}

func TestE2EAdminStatusAndRefresh(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.load("warm_up off")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatal("request failed")
	}
	code, body := e.adminDo("GET", "/desko_auth/status")
	if code != 200 {
		t.Fatalf("status endpoint: %d %s", code, body)
	}
	var list []SourceStatus
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("status is not JSON: %v: %s", err, body)
	}
	if len(list) != 1 {
		t.Fatalf("want 1 source, got %d: %s", len(list), body)
	}
	s := list[0]
	if s.ClientID != testClientID || s.TokenURL != e.tokenURL() || strings.Join(s.Scopes, " ") != "booking.show organization.show" ||
		s.State != "fresh" || s.Fetches != 1 || s.Sites != 1 || s.ExpiresAt.IsZero() || s.LastFetchAt.IsZero() {
		t.Errorf("unexpected status %+v", s)
	}
	e.leakCheck().AssertNone(t, "the status", body)

	if code, _ := e.adminDo("POST", "/desko_auth/status"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST status: %d, want 405", code)
	}
	code, body = e.adminDo("POST", "/desko_auth/refresh")
	if code != 200 {
		t.Fatalf("refresh: %d %s", code, body)
	}
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests after forced refresh = %d, want 2", n)
	}
	s2, _, b := e.do("GET", "/b", "")
	if s2 != 200 {
		t.Fatalf("after refresh: %d", s2)
	}
	var ans struct {
		Serial int `json:"token_serial"`
	}
	_ = json.Unmarshal([]byte(b), &ans)
	if ans.Serial != 2 {
		t.Errorf("after refresh the upstream saw token #%d, want #2", ans.Serial)
	}
	e.leakCheck().AssertNone(t, "the refresh answer", body)

	// Refused credentials show up as such, with the server's message.
	e.desko.SetClientSecret("changed-on-the-server")
	if code, body := e.adminDo("POST", "/desko_auth/refresh"); code != 200 || !strings.Contains(body, `"refresh_error"`) {
		t.Errorf("refresh with refused credentials: %d %s", code, body)
	}
	_, body = e.adminDo("GET", "/desko_auth/status")
	list = nil
	_ = json.Unmarshal([]byte(body), &list)
	if len(list) != 1 || list[0].State != "refused" || !strings.Contains(list[0].LastError, "Client authentication failed") {
		t.Errorf("after a refused refresh: %s", body)
	}
	// The old token is still valid and still served.
	if s, _, _ := e.do("GET", "/c", ""); s != 200 {
		t.Errorf("a refused refresh must not stop the valid token: %d", s)
	}
}

func TestE2ESeveralCredentialSets(t *testing.T) {
	e := newE2E(t, time.Hour)
	block := func(scope string) string {
		return fmt.Sprintf(`desko_auth {
			client_id     %s
			client_secret {env.DESKO_TEST_SECRET}
			scope         %s
			token_url     %s
			warm_up       off
		}
		reverse_proxy %s`, testClientID, scope, e.tokenURL(), e.srv.Listener.Addr())
	}
	e.loadRaw(fmt.Sprintf(`
`+e.base+` {
	handle /bookings/* {
		%s
	}
	handle /orgs/* {
		%s
	}
	handle {
		%s
	}
}`, block("booking.show"), block("organization.show"), block("booking.show")))

	scopeOf := func(path string) (string, int) {
		s, _, body := e.do("GET", path, "")
		if s != 200 {
			t.Fatalf("%s: %d %s", path, s, body)
		}
		var a struct {
			Scope  string `json:"scope"`
			Serial int    `json:"token_serial"`
		}
		_ = json.Unmarshal([]byte(body), &a)
		return a.Scope, a.Serial
	}
	bScope, bSerial := scopeOf("/bookings/1")
	oScope, oSerial := scopeOf("/orgs/1")
	dScope, dSerial := scopeOf("/other")
	if bScope != "booking.show" || oScope != "organization.show" || dScope != "booking.show" {
		t.Errorf("scopes seen upstream: %q %q %q", bScope, oScope, dScope)
	}
	if bSerial == oSerial {
		t.Errorf("two credential sets used the same token #%d", bSerial)
	}
	if bSerial != dSerial {
		t.Errorf("identical blocks used different tokens #%d and #%d", bSerial, dSerial)
	}
	if n := e.desko.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2 (one per credential set)", n)
	}
	_, body := e.adminDo("GET", "/desko_auth/status")
	var list []SourceStatus
	_ = json.Unmarshal([]byte(body), &list)
	sites := map[string]int{}
	for _, s := range list {
		sites[strings.Join(s.Scopes, " ")] = s.Sites
	}
	if sites["booking.show"] != 2 || sites["organization.show"] != 1 {
		t.Errorf("sites per source = %v, want booking.show:2 organization.show:1", sites)
	}
}
