package deskoauth

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// Caddy's conventions: errors through handle_errors (opt-in), placeholders
// for access logs and error routes, events through Caddy's events app.

func TestE2EErrorsThroughHandleErrors(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.loadRaw(fmt.Sprintf(`
`+proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     %s
		warm_up       off
		errors        caddy
	}
	reverse_proxy %s
	handle_errors {
		respond "handled {err.status_code} why={http.desko_auth.error} source={http.desko_auth.source}"
	}
}`, testClientID, e.tokenURL(), e.srv.Listener.Addr()))
	source := onlySource(t).Source

	e.desko.SetMode(deskotest.ModeDown)
	s, hdr, body := e.do("GET", "/a", "")
	if want := "handled 503 why=transient source=" + source; s != 503 || body != want {
		t.Fatalf("token endpoint down: %d %q, want 503 %q", s, body, want)
	}
	if hdr.Get("Retry-After") == "" {
		t.Error("the 503 through handle_errors lost its Retry-After")
	}

	e.loadRaw(fmt.Sprintf(`
`+proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret wrong-{env.DESKO_TEST_SECRET}
		token_url     %s
		warm_up       off
		errors        caddy
	}
	reverse_proxy %s
	handle_errors {
		respond "handled {err.status_code} why={http.desko_auth.error} msg={err.message}"
	}
}`, testClientID, e.tokenURL(), e.srv.Listener.Addr()))
	e.desko.SetMode(deskotest.ModeOK)
	s, _, body = e.do("GET", "/a", "")
	if s != 502 || !strings.HasPrefix(body, "handled 502 why=refused msg="+msgRefused) {
		t.Fatalf("credentials refused: %d %q, want 502 with the fixed message", s, body)
	}
	if n := e.desko.APIRequests(); n != 0 {
		t.Errorf("%d requests forwarded without a token", n)
	}
	e.assertNoLeaks(body)

	// The default stays Desko's shape, with no handle_errors involved.
	e.load("warm_up off")
	e.desko.SetMode(deskotest.ModeDown)
	if s, _, body := e.do("GET", "/a", ""); s != 503 || decodeErr(t, body).ID != "desko_auth" {
		t.Errorf("default errors: %d %q, want Desko's shape", s, body)
	}
}

func TestE2ESourcePlaceholder(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.loadRaw(fmt.Sprintf(`
`+proxyBase+` {
	route {
		desko_auth {
			client_id     %s
			client_secret {env.DESKO_TEST_SECRET}
			token_url     %s
		}
		header X-Desko-Source {http.desko_auth.source}
		reverse_proxy %s
	}
}`, testClientID, e.tokenURL(), e.srv.Listener.Addr()))
	s, hdr, _ := e.do("GET", "/a", "")
	if want := onlySource(t).Source; s != 200 || hdr.Get("X-Desko-Source") != want {
		t.Fatalf("status %d, X-Desko-Source %q, want %q", s, hdr.Get("X-Desko-Source"), want)
	}
}

// eventRecorder is an events.handlers module for tests: it records the
// events it is given.
type eventRecorder struct{}

var recordedEvents = struct {
	sync.Mutex
	list []caddy.Event
}{}

func init() { caddy.RegisterModule(eventRecorder{}) }

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.desko_auth_test", New: func() caddy.Module { return new(eventRecorder) }}
}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recordedEvents.Lock()
	recordedEvents.list = append(recordedEvents.list, e)
	recordedEvents.Unlock()
	return nil
}

// waitEvent waits (bounded) for an event of that name and returns its data.
func waitEvent(t *testing.T, name string) map[string]any {
	t.Helper()
	var data map[string]any
	waitFor(t, "a "+name+" event", func() bool {
		recordedEvents.Lock()
		defer recordedEvents.Unlock()
		for _, e := range recordedEvents.list {
			if e.Name() == name {
				data = e.Data
				return true
			}
		}
		return false
	})
	return data
}

func TestE2EEvents(t *testing.T) {
	// The names operators subscribe to.
	for name, want := range map[string]string{
		EventTokenObtained: "desko_auth_token_obtained", EventRefreshFailed: "desko_auth_refresh_failed",
		EventCredentialsRefused: "desko_auth_credentials_refused",
	} {
		if name != want {
			t.Errorf("event %q, want %q", name, want)
		}
	}
	e := newE2E(t, time.Hour)
	recordedEvents.Lock()
	recordedEvents.list = nil
	recordedEvents.Unlock()
	loadWithEvents := func(secret string) {
		t.Helper()
		cf := e.caddyfile(fmt.Sprintf(proxyBase+` {
	desko_auth {
		client_id     %s
		client_secret %s
		token_url     %s
		warm_up       off
	}
	reverse_proxy %s
}`, testClientID, secret, e.tokenURL(), e.srv.Listener.Addr()))
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(cfg, &m); err != nil {
			t.Fatal(err)
		}
		m["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
			"events":   []string{EventTokenObtained, EventRefreshFailed, EventCredentialsRefused},
			"handlers": []any{map[string]any{"handler": "desko_auth_test"}},
		}}}
		out, _ := json.Marshal(m)
		e.tester.InitServer(string(out), "json")
	}

	loadWithEvents("{env.DESKO_TEST_SECRET}")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d", s)
	}
	source := onlySource(t).Source
	if d := waitEvent(t, EventTokenObtained); d["source"] != source || d["result"] != "ok" {
		t.Errorf("%s data %v, want source %q and result ok", EventTokenObtained, d, source)
	}

	e.desko.SetMode(deskotest.ModeDown)
	loadWithEvents("other-{env.DESKO_TEST_SECRET}") // a new source: fetches at once
	e.do("GET", "/b", "")
	if d := waitEvent(t, EventRefreshFailed); d["result"] != "transient" {
		t.Errorf("%s data %v, want result transient", EventRefreshFailed, d)
	}
	e.desko.SetMode(deskotest.ModeReject)
	loadWithEvents("third-{env.DESKO_TEST_SECRET}")
	e.do("GET", "/c", "")
	if d := waitEvent(t, EventCredentialsRefused); d["result"] != "refused" {
		t.Errorf("%s data %v, want result refused", EventCredentialsRefused, d)
	}
	recordedEvents.Lock()
	defer recordedEvents.Unlock()
	for _, ev := range recordedEvents.list {
		b, _ := json.Marshal(ev.Data)
		for _, n := range append([]string{testSecret}, e.desko.Issued()...) {
			if strings.Contains(string(b), n) {
				t.Errorf("event %s carries a secret or token", ev.Name())
			}
		}
	}
}

func TestCaddyfileErrorsOption(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{"errors caddy", ErrorsCaddy, ""},
		{"errors desko", ErrorsDesko, ""},
		{"errors", "", "errors"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("desko_auth {\n" + tt.in + "\n}"))
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%q: %v", tt.in, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: error %v, want one with %q", tt.in, err, tt.err)
		case tt.err == "" && h.Errors != tt.want:
			t.Errorf("%q: Errors = %q, want %q", tt.in, h.Errors, tt.want)
		}
	}
	h := Handler{ClientID: "id", ClientSecret: "{env.X}", Errors: "html"}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "errors:") {
		t.Errorf("Validate with errors html: %v, want an error naming errors", err)
	}
}
