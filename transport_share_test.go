package deskoauth

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// Sources toward one token endpoint share one transport per TLS
// configuration: many credential sets hold the idle connections of one.
// The token endpoint counts the connections it accepts: the first token
// requests of 20 sources, one after the other, reuse one keep-alive
// connection (20 transports would open 20).
func TestE2ECredentialSetsShareOneTransport(t *testing.T) {
	e := newE2E(t, time.Hour) // in-process: it counts the module's pools
	var conns atomic.Int64
	tokens := httptest.NewUnstartedServer(e.desko)
	tokens.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	tokens.Start()
	t.Cleanup(tokens.Close)

	var sites string
	for i := range 20 {
		sites += fmt.Sprintf(`
`+e.base+`/s%d/* {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		scope         scope.%d
		token_url     %s
		warm_up       off
	}
	reverse_proxy %s
}`, i, testClientID, i, tokens.URL+deskotest.TokenPath, e.srv.Listener.Addr())
	}
	e.loadRaw(sites)
	n := 0
	sources.Range(func(_, _ any) bool {
		n++
		return true
	})
	if n != 20 {
		t.Fatalf("%d sources, want 20", n)
	}
	for i := range 20 {
		if s, _, body := e.do("GET", fmt.Sprintf("/s%d/x", i), ""); s != 200 {
			t.Fatalf("site %d: status %d: %s", i, s, body)
		}
	}
	if got := e.desko.TokenRequests(); got != 20 {
		t.Fatalf("%d token requests, want one per source (20)", got)
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("the token requests of 20 sources, one after the other, opened %d connections, want 1: a source has a transport of its own", got)
	}
	if got, _ := transports.References("tls:"); got != 20 {
		t.Errorf("the shared transport has %d references, want 20 (one per handler)", got)
	}
	// A reload to a config without them releases every reference.
	e.load("warm_up off")
	if got, _ := transports.References("tls:"); got != 1 {
		t.Errorf("after the reload the shared transport has %d references, want 1", got)
	}
}
