package deskoauth

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A credential written into the config as it is — the secret, a token URL
// query parameter or a param or token_header whose name looks like a
// credential — is shown by the admin API's /config/: each gets a WARN at
// load, naming the parameter, never the value. Placeholders and ordinary
// names get none.
func TestE2ELiteralCredentialsWarn(t *testing.T) {
	e := newE2E(t, time.Hour)
	e.setenv("DESKO_TEST_KEY", "KEY-FROM-ENV-value")
	e.loadRaw(fmt.Sprintf(e.base+` {
	desko_auth {
		client_id     %s
		client_secret {env.DESKO_TEST_SECRET}
		token_url     %s?api_key=QUERYKEY-literal-1&tenant=acme
		auth_style    form
		param         api_token PARAM-literal-2
		param         audience https://aud.example
		param         signature_key {env.DESKO_TEST_KEY}
		token_header  X-Api-Key HEADER-literal-3
		token_header  X-Tenant acme
		warm_up       off
	}
	respond ok
}`, testClientID, e.tokenURL()))
	log := readLog(t, e.logFile)
	for _, want := range []string{
		`token_url has a query parameter that looks like a credential`, `"parameter":"api_key"`,
		`param looks like a credential and is a literal value`, `"name":"api_token"`,
		`token_header looks like a credential and is a literal value`, `"name":"X-Api-Key"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
	for _, unwanted := range []string{`"parameter":"tenant"`, `"name":"audience"`, `"name":"signature_key"`, `"name":"X-Tenant"`,
		"client_secret is a literal value", "QUERYKEY-literal-1", "PARAM-literal-2", "HEADER-literal-3"} {
		if strings.Contains(log, unwanted) {
			t.Errorf("the log holds %s", unwanted)
		}
	}
	if n := e.logCount("warn", "looks like a credential"); n != 3 {
		t.Errorf("%d WARNs about literal credentials, want 3", n)
	}
}
