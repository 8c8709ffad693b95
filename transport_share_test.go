package deskoauth

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// Sources toward one token endpoint share one transport per TLS
// configuration: many credential sets hold the idle connections of one.
func TestE2ECredentialSetsShareOneTransport(t *testing.T) {
	e := newE2E(t, time.Hour)
	var sites string
	for i := range 20 {
		sites += fmt.Sprintf(`
`+proxyBase+`/s%d/* {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		scope         scope.%d
		token_url     %s
	}
	reverse_proxy %s
}`, i, testClientID, i, e.tokenURL(), e.srv.Listener.Addr())
	}
	e.loadRaw(sites)
	var first http.RoundTripper
	n := 0
	sources.Range(func(_, v any) bool {
		src := v.(*source)
		base := src.engine.client.Transport.(headerTransport).base
		if first == nil {
			first = base
		} else if base != first {
			t.Errorf("source %s has a transport of its own", src.label)
		}
		n++
		return true
	})
	if n != 20 {
		t.Fatalf("%d sources, want 20", n)
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
