package deskoauth

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Blocks that differ in any one field that makes a source get their own
// source, label, metric series and status entry; blocks that differ in
// nothing share one. The label is the client ID and 8 hex digits of the
// identity, the same across reloads.
func TestE2ESourceLabelsAreDistinct(t *testing.T) {
	e := newParallelE2E(t, time.Hour)
	e.setenv("DESKO_TEST_SECRET_2", testSecret)
	ca := newTestPKI(t).caFile
	base := map[string]string{
		"client_id":     testClientID,
		"client_secret": "{env.DESKO_TEST_SECRET}",
		"token_url":     e.tokenURL(),
		"scope":         "booking.show",
	}
	variants := map[string]string{ // one line added to, or replacing a line of, the base
		"base":          "",
		"same as base":  "",
		"param":         "param audience https://a.example",
		"param value":   "param audience https://b.example",
		"token_header":  "token_header X-Tenant acme",
		"client_secret": "client_secret {env.DESKO_TEST_SECRET_2}",
		"client_id":     "client_id other-client",
		"token_url":     "token_url " + e.tokenURL() + "?tenant=2",
		"scope":         "scope organization.show",
		"auth_style":    "auth_style form",
		"timeout":       "timeout 7s",
		"default_ttl":   "default_ttl 2m",
		"tls_ca":        "tls_ca " + ca,
		"shared_cache":  "shared_cache",
	}
	var routes strings.Builder
	for name, line := range variants {
		fields := map[string]string{}
		for k, v := range base {
			fields[k] = v
		}
		extra := line
		if k, v, _ := strings.Cut(line, " "); fields[k] != "" {
			fields[k], extra = v, ""
		}
		fmt.Fprintf(&routes, `
	handle /%s {
		desko_auth {
			client_id     %s
			client_secret %s
			token_url     %s
			scope         %s
			warm_up       off
			%s
		}
		reverse_proxy %s
	}`, strings.ReplaceAll(name, " ", "-"), fields["client_id"], fields["client_secret"], fields["token_url"], fields["scope"], extra, e.srv.Listener.Addr())
	}
	cfg := e.base + " {" + routes.String() + "\n}"
	e.loadRaw(cfg)
	list := e.sourceStatuses()
	if len(list) != len(variants)-1 {
		b, _ := json.MarshalIndent(list, "", " ")
		t.Fatalf("%d sources for %d blocks of which two are the same, want %d: %s", len(list), len(variants), len(variants)-1, b)
	}
	labels := map[string]bool{}
	for _, s := range list {
		labels[s.Source] = true
		if !strings.HasPrefix(s.Source, s.ClientID+"@") || len(s.Source) != len(s.ClientID)+9 {
			t.Errorf("label %q is not client_id@<8 hex>", s.Source)
		}
	}
	if len(labels) != len(list) {
		t.Fatalf("labels collide: %d distinct for %d sources", len(labels), len(list))
	}
	// Every source fetches: one metric series each.
	for name := range variants {
		e.do("GET", "/"+strings.ReplaceAll(name, " ", "-"), "")
	}
	_, text := e.adminDo("GET", "/metrics")
	for l := range labels {
		if metricValue(t, text, "desko_auth_token_fetches_total", map[string]string{"source": l}) < 1 {
			t.Errorf("no token_fetches_total series for %s", l)
		}
	}
	// What tells them apart is shown, never a value that may be secret.
	var sawParam, sawHeader, sawForm, sawShared, sawTLS bool
	for _, s := range list {
		sawParam = sawParam || (len(s.Params) == 1 && s.Params[0] == "audience")
		sawHeader = sawHeader || (len(s.TokenHeaders) == 1 && s.TokenHeaders[0] == "X-Tenant")
		sawForm = sawForm || s.AuthStyle == "form"
		sawShared = sawShared || s.Status.SharedCache != nil
		sawTLS = sawTLS || s.CustomTLS
		if strings.Contains(s.TokenURL, "tenant=2") {
			t.Errorf("the status shows the token URL's query: %s", s.TokenURL)
		}
	}
	if !sawParam || !sawHeader || !sawForm || !sawShared || !sawTLS {
		t.Errorf("the status does not tell the sources apart (param %v, header %v, form %v, shared %v, tls %v)", sawParam, sawHeader, sawForm, sawShared, sawTLS)
	}

	// The same config again (a restart gives the same labels: they depend
	// on nothing else).
	e.loadRaw(strings.Replace(cfg, "\n", "\n\t# reloaded\n", 1))
	for _, s := range e.sourceStatuses() {
		if !labels[s.Source] {
			t.Errorf("label %s is new after a reload of the same blocks", s.Source)
		}
	}
}

// sourceStatuses lists the running config's sources from the admin API.
func (e *e2e) sourceStatuses() []SourceStatus {
	e.t.Helper()
	code, body := e.adminDo("GET", "/desko_auth/status")
	var list []SourceStatus
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil {
		e.t.Fatalf("status endpoint: %d %s (%v)", code, body, err)
	}
	return list
}
