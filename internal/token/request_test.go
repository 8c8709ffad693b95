package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
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
		inBubble(t, tt.name, func(t *testing.T) {
			desko := deskotest.New(tsClientID, tsSecret, time.Hour)
			url := serveInMemory(t, desko)
			s := newTestSource(t, url+deskotest.TokenPath, func(c *Config) { c.Scopes = tt.scopes })

			tok := mustGet(t, s)
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
			if got := req.Header.Get("User-Agent"); got != "caddy-desko-auth" {
				t.Errorf("User-Agent = %q, want caddy-desko-auth", got)
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

// Params never override the fields the source sets itself, and headers
// never override its fixed ones, whatever the credentials hold.
func TestEngineRequestReservedFields(t *testing.T) {
	inBubble(t, "", func(t *testing.T) {
		var got capturedRequest
		url := serveInMemory(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = capture(r)
			okToken(60)(w, r, 1)
		}))
		s := newTestSource(t, url+"/token", func(c *Config) {
			c.Scopes = []string{"a"}
			static(c).Params = map[string]string{
				"grant_type": "password", "client_id": "other", "client_secret": "other-secret", "scope": "admin",
				"audience": "https://api.example",
			}
			static(c).Headers = map[string]string{"Content-Type": "text/plain", "User-Agent": "spoof", "Accept": "*/*", "X-Tenant": "acme"}
		})
		mustGet(t, s)
		var fields map[string]string
		if err := json.Unmarshal([]byte(got.body), &fields); err != nil {
			t.Fatalf("body %q: %v", got.body, err)
		}
		want := map[string]string{
			"grant_type": "client_credentials", "client_id": tsClientID, "client_secret": tsSecret,
			"scope": "a", "audience": "https://api.example",
		}
		if !reflect.DeepEqual(fields, want) {
			t.Errorf("body fields = %v\nwant          %v", fields, want)
		}
		for k, v := range map[string]string{"Content-Type": "application/json", "User-Agent": "caddy-desko-auth", "Accept": "application/json", "X-Tenant": "acme"} {
			if h := got.header.Values(k); len(h) != 1 || h[0] != v {
				t.Errorf("%s = %q, want [%s]", k, h, v)
			}
		}
	})
}

func TestParseAuthStyle(t *testing.T) {
	for in, want := range map[string]AuthStyle{"": AuthJSON, "json": AuthJSON, "form": AuthForm, "basic": AuthBasic,
		"private_key_jwt": AuthPrivateKeyJWT, "client_secret_jwt": AuthClientSecretJWT} {
		got, err := ParseAuthStyle(in)
		if err != nil || got != want {
			t.Errorf("ParseAuthStyle(%q) = %v, %v; want %v", in, got, err, want)
		}
		if in != "" && got.String() != in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), in)
		}
	}
	for _, in := range []string{"JSON", "post", "client_secret_basic", " form"} {
		if _, err := ParseAuthStyle(in); err == nil || !strings.Contains(err.Error(), "want json, form, basic, private_key_jwt or client_secret_jwt") {
			t.Errorf("ParseAuthStyle(%q) error = %v, want one naming the styles", in, err)
		}
	}
}

func TestEngineBodyLimit(t *testing.T) {
	t.Parallel() // one of the slow ones (TestMain)
	// A valid answer padded with whitespace to exactly 1 MiB is read whole;
	// one byte more is refused.
	valid := `{"token_type":"Bearer","expires_in":60,"access_token":"abc"}`
	for _, tc := range []struct {
		size   int
		wantOK bool
	}{{maxBodyBytes, true}, {maxBodyBytes + 1, false}} {
		inBubble(t, fmt.Sprint(tc.size), func(t *testing.T) {
			body := valid + strings.Repeat(" ", tc.size-len(valid))
			srv := newTokenServer(t, answer(200, "application/json", body))
			s := newTestSource(t, srv.tokenURL())
			tok, err := s.Get(t.Context())
			if tc.wantOK {
				if err != nil || tok.Value != "abc" {
					t.Fatalf("Get = %v, %v; want token abc", tok, err)
				}
				return
			}
			var te *Error
			if !errors.As(err, &te) || te.Kind != KindInvalidAnswer || te.Status != 200 {
				t.Fatalf("Get error = %v, want an invalid_answer *Error with status 200", err)
			}
		})
	}
}

func TestEngineRedirects(t *testing.T) {
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect, http.StatusFound} {
		inBubble(t, fmt.Sprintf("%d to another host is not followed", code), func(t *testing.T) {
			other := newTokenServer(t, okToken(3600))
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				http.Redirect(w, r, other.tokenURL()+"?key=QUERYKEY", code)
			})
			s := newTestSource(t, srv.tokenURL())
			te := mustGetErr(t, s)
			if other.count() != 0 {
				t.Fatalf("the other host received %d requests (and the secret)", other.count())
			}
			want := fmt.Sprintf("token endpoint answered %d: redirect to %s not followed: it points to another scheme or host (check token_url)", code, other.tokenURL())
			if te.Error() != want {
				t.Errorf("Error() = %q, want %q", te.Error(), want)
			}
			if te.Kind.String() != "redirect" || te.Status != code {
				t.Errorf("Kind = %v, Status %d; want redirect, %d: a redirect elsewhere is a configuration problem", te.Kind, te.Status, code)
			}
			if leaksSecret(te.Error()) {
				t.Errorf("Error() leaks the secret: %q", te.Error())
			}
		})
	}
	inBubble(t, "http to https on the same host is not followed", func(t *testing.T) {
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			http.Redirect(w, r, "https://"+r.Host+r.URL.Path, http.StatusMovedPermanently)
		})
		s := newTestSource(t, srv.tokenURL())
		te := mustGetErr(t, s)
		https := strings.Replace(srv.tokenURL(), "http://", "https://", 1)
		if want := "token endpoint answered 301: redirect to " + https + " not followed: it points to another scheme or host (check token_url)"; te.Error() != want || te.Kind.String() != "redirect" {
			t.Errorf("error %q (%v), want redirect %q", te, te.Kind, want)
		}
		if srv.count() != 1 {
			t.Errorf("%d requests, want 1", srv.count())
		}
	})
	inBubble(t, "307 on the same host is followed with the body", func(t *testing.T) {
		var bodies []string
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			b, _ := io.ReadAll(r.Body)
			bodies = append(bodies, r.Method+" "+r.URL.Path+" "+string(b))
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
		s := newTestSource(t, srv.url+"/old/token")
		tok := mustGet(t, s)
		if tok.Value != "tok-2" || srv.count() != 2 {
			t.Fatalf("got token %q after %d requests, want tok-2 after 2 (requests: %q)", tok.Value, srv.count(), bodies)
		}
		if !strings.HasPrefix(bodies[1], "POST "+deskotest.TokenPath+" {") {
			t.Fatalf("redirected request = %q, want a POST with the JSON body", bodies[1])
		}
	})
	// A 301, 302 or 303 would make the token request a GET without its
	// body: the endpoint would answer that as a refusal, which would send
	// operators to the credentials.
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther} {
		inBubble(t, fmt.Sprintf("%d on the same host is not followed", code), func(t *testing.T) {
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				if r.Method != http.MethodPost {
					answer(401, "application/json", `{"error":401,"message":"Client authentication failed"}`)(w, r, n)
					return
				}
				http.Redirect(w, r, "/new/token", code)
			})
			s := newTestSource(t, srv.tokenURL())
			te := mustGetErr(t, s)
			want := fmt.Sprintf("token endpoint answered %d: redirect to %s/new/token not followed: a %d would resend the token request as a GET without its body (check token_url)", code, srv.url, code)
			if te.Kind.String() != "redirect" || te.Error() != want {
				t.Errorf("error %q (%v), want redirect %q", te, te.Kind, want)
			}
			if srv.count() != 1 {
				t.Errorf("%d requests, want 1: the GET was sent", srv.count())
			}
		})
	}
	// The same host, spelled otherwise: in another case, or with the
	// scheme's default port. A redirect there is followed; one to another
	// port is not.
	for _, tc := range []struct {
		name, from, to string
		follow         bool
	}{
		{"in another case", "TOKEN-X.test", "token-x.test", true},
		{"with the default port", "token-x.test:80", "token-x.test", true},
		{"to the default port", "token-x.test", "token-x.test:80", true},
		{"to another port", "token-x.test", "token-x.test:8080", false},
	} {
		inBubble(t, "307 to the same host "+tc.name, func(t *testing.T) {
			srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
				if r.URL.Path != deskotest.TokenPath {
					http.Redirect(w, r, "http://"+tc.to+deskotest.TokenPath, http.StatusTemporaryRedirect)
					return
				}
				okToken(3600)(w, r, n)
			})
			h, _ := testHosts.Load(strings.TrimPrefix(srv.url, "http://"))
			for _, host := range []string{tc.from, tc.to} {
				testHosts.Store(host, h)
				t.Cleanup(func() { testHosts.Delete(host) })
			}
			s := newTestSource(t, "http://"+tc.from+"/old/token")
			tok, err := s.Get(t.Context())
			if tc.follow && err != nil {
				t.Fatalf("Get: %v, want the redirect to %s followed", err, tc.to)
			}
			if !tc.follow {
				var te *Error
				if !errors.As(err, &te) || te.Kind != KindRedirect || !strings.Contains(te.Error(), "another scheme or host") {
					t.Fatalf("Get = %v, %v; want a redirect error", tok, err)
				}
			}
		})
	}
	inBubble(t, "same-host redirect loop stops", func(t *testing.T) {
		srv := newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
			http.Redirect(w, r, fmt.Sprintf("/loop/%d", n), http.StatusTemporaryRedirect)
		})
		s := newTestSource(t, srv.tokenURL())
		te := mustGetErr(t, s)
		// The first request and two redirects; the third is not followed.
		if n := srv.count(); n != 3 {
			t.Fatalf("%d requests, want the first and 2 redirects", n)
		}
		want := "token endpoint answered 307: redirect to " + srv.url + "/loop/3 not followed: 2 redirects followed already (check token_url)"
		if te.Error() != want || te.Kind.String() != "redirect" || te.Status != 307 {
			t.Errorf("error %q (%v, %d), want redirect %q", te, te.Kind, te.Status, want)
		}
	})
}
