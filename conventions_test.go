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
`+e.base+` {
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
	source := e.onlySource().Source

	e.desko.SetMode(deskotest.ModeDown)
	s, hdr, body := e.do("GET", "/a", "")
	if want := "handled 503 why=transient source=" + source; s != 503 || body != want {
		t.Fatalf("token endpoint down: %d %q, want 503 %q", s, body, want)
	}
	if hdr.Get("Retry-After") == "" {
		t.Error("the 503 through handle_errors lost its Retry-After")
	}

	e.loadRaw(fmt.Sprintf(`
`+e.base+` {
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
`+e.base+` {
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
	if want := e.onlySource().Source; s != 200 || hdr.Get("X-Desko-Source") != want {
		t.Fatalf("status %d, X-Desko-Source %q, want %q", s, hdr.Get("X-Desko-Source"), want)
	}
}

// eventRecorder is an events.handlers module for tests: it records the
// events it is given, under its tag (one tag per subscription).
type eventRecorder struct {
	Tag string `json:"tag,omitempty"`
}

// recordedEvent is an event as a recorder got it.
type recordedEvent struct {
	tag string
	ev  caddy.Event
}

var recordedEvents = struct {
	sync.Mutex
	list []recordedEvent
}{}

func init() { caddy.RegisterModule(eventRecorder{}) }

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.desko_auth_test", New: func() caddy.Module { return new(eventRecorder) }}
}

func (r eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recordedEvents.Lock()
	recordedEvents.list = append(recordedEvents.list, recordedEvent{tag: r.Tag, ev: e})
	recordedEvents.Unlock()
	return nil
}

// Tags of the two subscriptions of TestE2EEvents.
const (
	tagAnyModule   = "any"        // no module filter
	tagDeskoFilter = "desko_auth" // modules: [http.handlers.desko_auth]
)

// waitEvent waits (bounded) for an event of that name recorded under tag,
// and returns it.
func waitEvent(t *testing.T, tag, name string) caddy.Event {
	t.Helper()
	var ev caddy.Event
	waitFor(t, "a "+name+" event", func() bool {
		recordedEvents.Lock()
		defer recordedEvents.Unlock()
		for _, r := range recordedEvents.list {
			if r.tag == tag && r.ev.Name() == name {
				ev = r.ev
				return true
			}
		}
		return false
	})
	return ev
}

// recordedUnder reports whether the event with that ID was recorded
// under tag.
func recordedUnder(tag string, ev caddy.Event) bool {
	recordedEvents.Lock()
	defer recordedEvents.Unlock()
	for _, r := range recordedEvents.list {
		if r.tag == tag && r.ev.ID() == ev.ID() {
			return true
		}
	}
	return false
}

func TestE2EEvents(t *testing.T) {
	t.Parallel() // its subtests are (newE2E)
	// The names operators subscribe to.
	for name, want := range map[string]string{
		EventTokenObtained: "desko_auth_token_obtained", EventRefreshFailed: "desko_auth_refresh_failed",
		EventCredentialsRefused: "desko_auth_credentials_refused",
	} {
		if name != want {
			t.Errorf("event %q, want %q", name, want)
		}
	}
	// Where desko_auth sits in the config: alone before reverse_proxy in a
	// site, and, as in the README, in a handle block with reverse_proxy
	// after it: Caddy provisions reverse_proxy in the same slot of the
	// module ancestry as desko_auth, so an event emitted with the context
	// desko_auth kept from Provision named reverse_proxy as its origin.
	for _, layout := range []struct{ name, site string }{
		{"site", `
	desko_auth {
		%s
	}
	reverse_proxy %s`},
		{"handle", `
	@private remote_ip private_ranges
	handle @private {
		desko_auth {
			%s
		}
		reverse_proxy %s
	}
	handle {
		respond "forbidden" 403
	}`},
	} {
		t.Run(layout.name, func(t *testing.T) { testEvents(t, layout.site) })
	}
}

// testEvents checks the three events of a site whose desko_auth block and
// upstream are filled into the site's body.
func testEvents(t *testing.T, site string) {
	e := newE2E(t, time.Hour)
	recordedEvents.Lock()
	recordedEvents.list = nil
	recordedEvents.Unlock()
	events := []string{EventTokenObtained, EventRefreshFailed, EventCredentialsRefused}
	loadWithEvents := func(secret string) {
		t.Helper()
		block := fmt.Sprintf("client_id %s\n\t\tclient_secret %s\n\t\ttoken_url %s\n\t\twarm_up off",
			testClientID, secret, e.tokenURL())
		cf := e.caddyfile(e.base + " {" + fmt.Sprintf(site, block, e.srv.Listener.Addr()) + "\n}")
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(cfg, &m); err != nil {
			t.Fatal(err)
		}
		m["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{
			map[string]any{
				"events":   events,
				"modules":  []string{"http.handlers.desko_auth"},
				"handlers": []any{map[string]any{"handler": "desko_auth_test", "tag": tagDeskoFilter}},
			},
			map[string]any{
				"events":   events,
				"handlers": []any{map[string]any{"handler": "desko_auth_test", "tag": tagAnyModule}},
			},
		}}
		out, _ := json.Marshal(m)
		e.tester.InitServer(string(out), "json")
	}
	// checkOrigin checks that the event names desko_auth as its origin,
	// and so reached the subscription filtered by module. Emit calls the
	// handlers of an event one after the other, the module's subscribers
	// before the others: the event was recorded under tagDeskoFilter, if
	// at all, before it was under tagAnyModule.
	checkOrigin := func(ev caddy.Event) {
		t.Helper()
		origin := "<nil>"
		if ev.Origin() != nil {
			origin = string(ev.Origin().CaddyModule().ID)
		}
		if origin != "http.handlers.desko_auth" {
			t.Errorf("%s: origin %s, want http.handlers.desko_auth", ev.Name(), origin)
		}
		if !recordedUnder(tagDeskoFilter, ev) {
			t.Errorf("%s did not reach the subscription for module http.handlers.desko_auth", ev.Name())
		}
	}

	loadWithEvents("{env.DESKO_TEST_SECRET}")
	if s, _, _ := e.do("GET", "/a", ""); s != 200 {
		t.Fatalf("status %d", s)
	}
	source := e.onlySource().Source
	ev := waitEvent(t, tagAnyModule, EventTokenObtained)
	if d := ev.Data; d["source"] != source || d["result"] != "ok" {
		t.Errorf("%s data %v, want source %q and result ok", EventTokenObtained, d, source)
	}
	checkOrigin(ev)

	e.desko.SetMode(deskotest.ModeDown)
	loadWithEvents("other-{env.DESKO_TEST_SECRET}") // a new source: fetches at once
	e.do("GET", "/b", "")
	ev = waitEvent(t, tagAnyModule, EventRefreshFailed)
	if d := ev.Data; d["result"] != "transient" {
		t.Errorf("%s data %v, want result transient", EventRefreshFailed, d)
	}
	checkOrigin(ev)

	e.desko.SetMode(deskotest.ModeReject)
	loadWithEvents("third-{env.DESKO_TEST_SECRET}")
	e.do("GET", "/c", "")
	ev = waitEvent(t, tagAnyModule, EventCredentialsRefused)
	if d := ev.Data; d["result"] != "refused" {
		t.Errorf("%s data %v, want result refused", EventCredentialsRefused, d)
	}
	checkOrigin(ev)

	recordedEvents.Lock()
	defer recordedEvents.Unlock()
	for _, r := range recordedEvents.list {
		b, _ := json.Marshal(r.ev.Data)
		for _, n := range append([]string{testSecret}, e.desko.Issued()...) {
			if strings.Contains(string(b), n) {
				t.Errorf("event %s carries a secret or token", r.ev.Name())
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
