package deskoauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// Sending the token request: its format, the answer size limit, redirects.

func TestEngineRequestFormat(t *testing.T) {
	documented := []string{"organization.show", "organization.upsert", "integration.checkin", "booking.show", "organization.remove"}
	tests := []struct {
		name      string
		scopes    []string
		wantScope string // "" means the field must be absent
	}{
		{"no scopes", nil, ""},
		{"empty scope list", []string{}, ""},
		{"one scope", []string{"organization.show"}, "organization.show"},
		{"documented scopes", documented, "organization.show organization.upsert integration.checkin booking.show organization.remove"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			desko := deskotest.New(tsClientID, tsSecret, time.Hour)
			srv := httptest.NewServer(desko)
			t.Cleanup(srv.Close)
			e := newTestEngine(t, srv.URL+deskotest.TokenPath, newFakeClock(t), func(c *engineConfig) { c.Scopes = tt.scopes })

			tok := mustGet(t, e)
			if !desko.Valid(tok.Value) {
				t.Fatalf("the stand-in does not recognise token %q", tok.Value)
			}
			req, body := desko.LastTokenRequest()
			if req.Method != http.MethodPost {
				t.Errorf("method = %s, want POST", req.Method)
			}
			if req.URL.Path != deskotest.TokenPath {
				t.Errorf("path = %s, want %s", req.URL.Path, deskotest.TokenPath)
			}
			if got := req.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", got)
			}
			if got := req.Header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept = %q, want application/json", got)
			}
			if got := req.Header.Get("Authorization"); got != "" {
				t.Errorf("token request carries Authorization %q; the credentials belong in the JSON body", got)
			}
			var fields map[string]any
			if err := json.Unmarshal(body, &fields); err != nil {
				t.Fatalf("body %q is not a JSON object: %v", body, err)
			}
			want := map[string]any{
				"grant_type":    "client_credentials",
				"client_id":     tsClientID,
				"client_secret": tsSecret,
			}
			if tt.wantScope != "" {
				want["scope"] = tt.wantScope
			}
			if !reflect.DeepEqual(fields, want) {
				t.Errorf("body fields = %v\nwant          %v", fields, want)
			}
		})
	}
}

func TestEngineBodyLimit(t *testing.T) {
	// A valid answer padded with whitespace to exactly 1 MiB is read whole;
	// one byte more is refused.
	valid := `{"token_type":"Bearer","expires_in":60,"access_token":"abc"}`
	for _, tc := range []struct {
		size   int
		wantOK bool
	}{{maxBodyBytes, true}, {maxBodyBytes + 1, false}} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			body := valid + strings.Repeat(" ", tc.size-len(valid))
			srv := newTokenServer(t, answer(200, "application/json", body))
			e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
			tok, err := e.Get(testCtx(t))
			if tc.wantOK {
				if err != nil || tok.Value != "abc" {
					t.Fatalf("Get = %v, %v; want token abc", tok, err)
				}
				return
			}
			var te *tokenError
			if !errors.As(err, &te) || te.Kind != kindInvalidResponse {
				t.Fatalf("Get error = %v, want an invalid_response TokenError", err)
			}
		})
	}
}

func TestEngineRedirects(t *testing.T) {
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect, http.StatusFound} {
		t.Run(fmt.Sprintf("%d to another host is not followed", code), func(t *testing.T) {
			other := newTokenServer(t, okToken(3600))
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				http.Redirect(w, r, other.tokenURL(), code)
			})
			e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
			te := mustGetErr(t, e)
			if other.count() != 0 {
				t.Fatalf("the other host received %d requests (and the secret)", other.count())
			}
			if !strings.Contains(te.Error(), "redirect") {
				t.Errorf("Error() = %q, want it to mention the redirect", te.Error())
			}
			if te.Kind != kindRejected {
				t.Errorf("Kind = %v, want rejected: a redirect elsewhere is a configuration problem", te.Kind)
			}
			if leaksSecret(te.Error()) {
				t.Errorf("Error() leaks the secret: %q", te.Error())
			}
		})
	}
	t.Run("307 on the same host is followed with the body", func(t *testing.T) {
		var bodies []string
		var mu sync.Mutex
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies = append(bodies, r.Method+" "+r.URL.Path+" "+string(b))
			mu.Unlock()
			if r.URL.Path != deskotest.TokenPath {
				http.Redirect(w, r, deskotest.TokenPath, http.StatusTemporaryRedirect)
				return
			}
			if !strings.Contains(string(b), tsSecret) {
				answer(400, "application/json", `{"error":"invalid_request"}`)(w, r, n)
				return
			}
			okToken(3600)(w, r, n)
		})
		e := newTestEngine(t, srv.URL+"/old/token", newFakeClock(t))
		tok := mustGet(t, e)
		if tok.Value != "tok-2" || srv.count() != 2 {
			t.Fatalf("got token %q after %d requests, want tok-2 after 2 (requests: %q)", tok.Value, srv.count(), bodies)
		}
		if !strings.HasPrefix(bodies[1], "POST "+deskotest.TokenPath+" {") {
			t.Fatalf("redirected request = %q, want a POST with the JSON body", bodies[1])
		}
	})
	t.Run("same-host redirect loop stops", func(t *testing.T) {
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			http.Redirect(w, r, fmt.Sprintf("/loop/%d", n), http.StatusTemporaryRedirect)
		})
		e := newTestEngine(t, srv.tokenURL(), newFakeClock(t))
		mustGetErr(t, e)
		if n := srv.count(); n > 4 {
			t.Fatalf("followed %d redirects", n-1)
		}
	})
}
