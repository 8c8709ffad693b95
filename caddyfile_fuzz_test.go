package deskoauth

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzUnmarshalCaddyfile feeds arbitrary text as the inside of a desko_auth
// block. UnmarshalCaddyfile must never panic; an error must carry the
// Caddyfile position; a success must give a handler whose fields respect
// the parser's own rules and that survives a JSON round trip (which is how
// `caddy adapt` hands it to Caddy).
//
// The seed corpus is in testdata/fuzz/FuzzUnmarshalCaddyfile. Run with
//
//	go test -run XXX -fuzz FuzzUnmarshalCaddyfile -fuzztime 20s .
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Add("client_id a\nclient_secret {env.S}\nscope x y\nwarm_up off")
	f.Fuzz(func(t *testing.T, body string) {
		// Not NewTestDispenser: it calls log.Fatal on a lexer error (an
		// unterminated quote or heredoc), which is not the unmarshaler's
		// concern.
		tokens, err := caddyfile.Tokenize([]byte("desko_auth {\n"+body+"\n}\n"), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error without a position: %v", err)
			}
			return
		}
		_ = h.Validate() // must not panic either

		for _, s := range h.Scopes {
			if s == "" || strings.ContainsAny(s, " \t\r\n") {
				t.Errorf("scope %q: blank or with whitespace", s)
			}
		}
		if h.Timeout < 0 || h.DefaultTTL < 0 {
			t.Errorf("negative duration: timeout %d, default_ttl %d", h.Timeout, h.DefaultTTL)
		}
		if l := h.ReplayBodyLimit; l != nil && (*l < 0 || *l > 1<<40) {
			t.Errorf("replay_body_limit %d out of range", *l)
		}

		b, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("marshalling %+v: %v", h, err)
		}
		var back Handler
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshalling %s: %v", b, err)
		}
		// json.Marshal turns invalid UTF-8 into U+FFFD, so an exact round
		// trip holds only for valid text; a second one always does.
		if allValidUTF8(h) {
			if !reflect.DeepEqual(back, h) {
				t.Errorf("JSON round trip changed the handler:\n before %#v\n after  %#v", h, back)
			}
		}
		b2, err := json.Marshal(back)
		if err != nil {
			t.Fatalf("marshalling again: %v", err)
		}
		var back2 Handler
		if err := json.Unmarshal(b2, &back2); err != nil {
			t.Fatalf("unmarshalling again %s: %v", b2, err)
		}
		if !reflect.DeepEqual(back2, back) {
			t.Errorf("second JSON round trip changed the handler:\n before %#v\n after  %#v", back, back2)
		}
	})
}

func allValidUTF8(h Handler) bool {
	for _, s := range append([]string{h.ClientID, h.ClientSecret, h.TokenURL}, h.Scopes...) {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
