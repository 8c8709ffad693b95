package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// The stand-in's client for these tests (a throwaway, random-looking
// secret).
const (
	testClientID     = "standin-ctl-7f3a"
	testSecret       = "Vq8rN2xKd5LwT9mZc4HbY7pE"
	tokenRequestBody = `{"grant_type":"client_credentials","client_id":"` + testClientID + `","client_secret":"` + testSecret + `"}`
)

// The control paths answer a loopback peer that POSTs, and no one else;
// every other path is the stand-in's. Revoke revokes the tokens issued so
// far.
func TestControlRevoke(t *testing.T) {
	s := deskotest.New(testClientID, testSecret, time.Hour)
	h := control(s)
	issue := func() string {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", deskotest.TokenPath,
			strings.NewReader(tokenRequestBody))
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		if rec.Code != 200 || len(s.Issued()) == 0 {
			t.Fatalf("token request through the control wrapper: %d %s", rec.Code, rec.Body)
		}
		return s.Issued()[len(s.Issued())-1]
	}
	revoke := func(method, remote string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, RevokePath, nil)
		req.RemoteAddr = remote
		h.ServeHTTP(rec, req)
		return rec.Code
	}

	tok := issue()
	for _, tt := range []struct {
		method, remote string
		want           int
	}{
		{"POST", "192.0.2.7:4000", http.StatusForbidden},
		{"POST", "[2001:db8::1]:4000", http.StatusForbidden},
		{"GET", "127.0.0.1:4000", http.StatusMethodNotAllowed},
	} {
		if got := revoke(tt.method, tt.remote); got != tt.want {
			t.Errorf("%s from %s: %d, want %d", tt.method, tt.remote, got, tt.want)
		}
		if !s.Valid(tok) {
			t.Fatalf("%s from %s revoked the token", tt.method, tt.remote)
		}
	}
	for _, remote := range []string{"127.0.0.1:4000", "[::1]:4000"} {
		if got := revoke("POST", remote); got != http.StatusNoContent {
			t.Fatalf("POST from %s: %d, want 204", remote, got)
		}
		if s.Valid(tok) {
			t.Fatalf("POST from %s: the token is still valid", remote)
		}
		tok = issue()
	}
}

// The token-delay control path sets how long the token endpoint waits.
func TestControlTokenDelay(t *testing.T) {
	s := deskotest.New(testClientID, testSecret, time.Hour)
	h := control(s)
	post := func(query string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", TokenDelayPath+query, nil)
		req.RemoteAddr = "127.0.0.1:4000"
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, q := range []string{"", "?d=soon", "?d=-1s"} {
		if got := post(q); got != http.StatusBadRequest {
			t.Errorf("POST %s: %d, want 400", q, got)
		}
	}
	if got := post("?d=200ms"); got != http.StatusNoContent {
		t.Fatalf("POST ?d=200ms: %d, want 204", got)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", deskotest.TokenPath,
		strings.NewReader(tokenRequestBody))
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	h.ServeHTTP(rec, req)
	if took := time.Since(start); rec.Code != 200 || took < 200*time.Millisecond {
		t.Errorf("token request: %d after %v, want 200 after at least 200ms", rec.Code, took)
	}
}
