package token

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// What operators and metrics see of a source: Status and the Observer.

func TestEngineStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(3600))
		s := newTestSource(t, srv.tokenURL())

		checkClean := func(st Status, tok *Token) {
			t.Helper()
			b, _ := json.Marshal(st)
			for _, text := range []string{st.LastError, string(b)} {
				if leaksSecret(text) {
					t.Errorf("Status leaks the secret: %s", text)
				}
				if tok != nil && strings.Contains(text, tok.Value) {
					t.Errorf("Status leaks the token: %s", text)
				}
			}
		}

		st := s.Status()
		if st.State != StateEmpty || st.Fetches != 0 || st.LastError != "" || !st.ExpiresAt.IsZero() || !st.LastFetchAt.IsZero() || !st.NextRetryAt.IsZero() {
			t.Fatalf("new source Status = %+v, want empty", st)
		}
		if b, _ := json.Marshal(st); string(b) != `{"state":"empty","fetches":0}` {
			t.Errorf("new source Status in JSON = %s, want only the state and the count", b)
		}

		tok := mustGet(t, s)
		st = s.Status()
		if st.State != StateFresh || st.Fetches != 1 || st.LastError != "" || !st.LastFetchAt.Equal(time.Now()) {
			t.Fatalf("Status after a token = %+v, want fresh, fetched now", st)
		}
		if want := tok.Expiry(); !st.ExpiresAt.Equal(want) || st.ExpiresAt.Sub(time.Now()) != time.Hour {
			t.Errorf("ExpiresAt = %v, want %v (one hour after the fetch)", st.ExpiresAt, want)
		}
		checkClean(st, tok)

		// A failing refresh: backing off, still holding the token. The server
		// echoes the secret.
		settle(time.Minute)
		srv.setRespond(echoSecret(500, "application/json", func(s string) string {
			return `{"error":500,"message":"database down while checking ` + s + `"}`
		}))
		if _, err := s.Refresh(t.Context()); err == nil {
			t.Fatal("Refresh against a failing server succeeded")
		}
		st = s.Status()
		if st.State != StateBackingOff || st.ExpiresAt.IsZero() || st.NextRetryAt.IsZero() || st.Fetches != 2 {
			t.Fatalf("Status after a failed refresh = %+v, want backing_off with the token still held", st)
		}
		if !st.LastFetchAt.Equal(time.Now()) {
			t.Errorf("LastFetchAt = %v, want now (%v)", st.LastFetchAt, time.Now())
		}
		if !strings.Contains(st.LastError, "500") || !strings.Contains(st.LastError, "database down") {
			t.Errorf("LastError = %q, want the status and the message", st.LastError)
		}
		// (That NextRetryAt is a wall time without a monotonic reading is
		// checked on the real clock, in TestEngineExpiryUsesMonotonicClock.)
		if st.NextRetryAt.Sub(time.Now()) != time.Second {
			t.Errorf("NextRetryAt = %v, want 1s from now", st.NextRetryAt)
		}
		checkClean(st, tok)

		// An answer whose token is unusable: its value must not leak either.
		srv.setRespond(answer(200, "application/json", `{"access_token":"leaky-token-value\r\n","token_type":"mac"}`))
		s.Refresh(t.Context())
		st = s.Status()
		if st.State != StateBackingOff || st.LastError == "" || strings.Contains(st.LastError, "leaky-token-value") {
			t.Errorf("Status after an unusable answer = %+v", st)
		}

		// Refused credentials.
		srv.setRespond(echoSecret(401, "application/json", func(s string) string {
			return `{"error":401,"id":"oauth_server","message":"Client authentication failed: ` + s + `"}`
		}))
		if _, err := s.Refresh(t.Context()); err == nil {
			t.Fatal("Refresh against a refusing server succeeded")
		}
		st = s.Status()
		if st.State != StateRefused || !strings.Contains(st.LastError, "Client authentication failed") {
			t.Fatalf("Status after a refusal = %+v, want refused", st)
		}
		checkClean(st, tok)

		// Recovery.
		srv.setRespond(okToken(3600))
		tok2, err := s.Refresh(t.Context())
		if err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		st = s.Status()
		if st.State != StateFresh || st.LastError != "" || !st.NextRetryAt.IsZero() || st.Fetches != 5 || !st.ExpiresAt.Equal(tok2.Expiry()) {
			t.Fatalf("Status after recovery = %+v", st)
		}
		checkClean(st, tok2)

		// Once the token expires with the endpoint down, no expiry is shown.
		srv.setRespond(answer(503, "", ""))
		settle(2 * time.Hour)
		if st := s.Status(); st.State != StateBackingOff || !st.ExpiresAt.IsZero() {
			t.Fatalf("Status after the token expired = %+v, want backing_off without an expiry", st)
		}
	})
}

// The labels operators and metrics see are fixed strings.
func TestStateAndKindLabels(t *testing.T) {
	for _, l := range []struct{ got, want string }{
		{string(StateEmpty), "empty"},
		{string(StateFresh), "fresh"},
		{string(StateRefreshing), "refreshing"},
		{string(StateBackingOff), "backing_off"},
		{string(StateRefused), "refused"},
		{KindTransient.String(), "transient"},
		{KindRefused.String(), "refused"},
		{KindInvalidAnswer.String(), "invalid_answer"},
		{KindTLS.String(), "tls"},
		{KindRedirect.String(), "redirect"},
		{KindDNS.String(), "dns"},
		{KindConnect.String(), "connect"},
		{Kind(0).String(), "unknown"},
		{string(StoreHit), "hit"},
		{string(StoreAdopted), "adopted"},
		{string(StoreMiss), "miss"},
		{string(StoreLockTimeout), "lock_timeout"},
		{string(StoreTimeout), "timeout"},
		{string(StoreError), "error"},
	} {
		if l.got != l.want {
			t.Errorf("label %q, want %q", l.got, l.want)
		}
	}
	// Kinds lists every kind once; the configuration problems are the
	// ones retried slowly and answered 502.
	var labels, slow []string
	for _, k := range Kinds {
		labels = append(labels, k.String())
		if k.Misconfigured() {
			slow = append(slow, k.String())
		}
	}
	if got, want := strings.Join(labels, " "), "transient refused invalid_answer tls redirect dns connect"; got != want {
		t.Errorf("Kinds = %s, want %s", got, want)
	}
	if got, want := strings.Join(slow, " "), "refused tls redirect"; got != want {
		t.Errorf("misconfigured kinds = %s, want %s", got, want)
	}
}

// recordingObserver records a source's events.
type recordingObserver struct {
	mu      sync.Mutex
	fetched []*Error // nil for a success
	took    []time.Duration
	expiry  []time.Time
	store   []StoreResult
}

func (o *recordingObserver) Fetched(err *Error, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fetched = append(o.fetched, err)
	o.took = append(o.took, took)
}

func (o *recordingObserver) TokenChanged(expiry time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.expiry = append(o.expiry, expiry)
}

func (o *recordingObserver) StoreUsed(r StoreResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.store = append(o.store, r)
}

// The observer hears of every token request with its error and duration,
// and of every new token with its wall-clock expiry; without a store, of
// no store use.
func TestEngineObserver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newTokenServer(t, okToken(100))
		obs := &recordingObserver{}
		s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Observer = obs })
		release := srv.holdRequests(t)
		s.WarmUp()
		synctest.Wait()
		settle(250 * time.Millisecond) // the answer takes 250 ms
		release()
		tok := mustGet(t, s)
		srv.setRespond(answer(401, "application/json", `{"error":"invalid_client"}`))
		if _, err := s.Refresh(t.Context()); err == nil {
			t.Fatal("Refresh against a refusing server succeeded")
		}
		srv.setRespond(okToken(100))
		tok2, err := s.Refresh(t.Context())
		if err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		synctest.Wait() // TokenChanged comes after the waiters are released

		obs.mu.Lock()
		defer obs.mu.Unlock()
		if len(obs.fetched) != 3 || obs.fetched[0] != nil || obs.fetched[2] != nil ||
			obs.fetched[1] == nil || obs.fetched[1].Kind != KindRefused || obs.fetched[1].Status != 401 {
			t.Fatalf("Fetched with %v, want nil, a refused 401, nil", obs.fetched)
		}
		if obs.took[0] != 250*time.Millisecond || obs.took[1] != 0 {
			t.Errorf("Fetched took %v, want 250ms then 0", obs.took)
		}
		if len(obs.expiry) != 2 || !obs.expiry[0].Equal(tok.Expiry()) || !obs.expiry[1].Equal(tok2.Expiry()) {
			t.Errorf("TokenChanged with %v, want %v and %v", obs.expiry, tok.Expiry(), tok2.Expiry())
		}
		if len(obs.store) != 0 {
			t.Errorf("StoreUsed with %v without a store", obs.store)
		}
	})
}
