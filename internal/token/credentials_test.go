package token

import (
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// secretServer issues tokens to one secret at a time, and refuses the
// others in Desko's shape.
func secretServer(t *testing.T, accepted *atomic.Value) *tokenServer {
	return newTokenServer(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		var req struct {
			ClientSecret string `json:"client_secret"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		if req.ClientSecret != accepted.Load().(string) {
			answer(401, "application/json", `{"error":401,"id":"oauth_server","message":"Client authentication failed"}`)(w, r, n)
			return
		}
		okToken(3)(w, r, n)
	})
}

// countingObserver counts what a CredentialsObserver hears.
type countingObserver struct {
	recordingObserver
	changed atomic.Int64
}

func (o *countingObserver) CredentialsChanged() { o.changed.Add(1) }

// A hard rotation: the server refuses the old secret first; the new one
// reaches the source a second later. While refused, the source asks its
// credentials every PollCredentials: the new ones lift the refusal's
// 5 s backoff at once, with one INFO line and one CredentialsChanged.
func TestEngineRefusedCredentialsPolledUntilTheyChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var accepted atomic.Value
		accepted.Store("old-secret-value-1")
		srv := secretServer(t, &accepted)
		creds := &rotating{cur: &Credentials{ClientID: tsClientID, ClientSecret: "old-secret-value-1"}}
		obs := &countingObserver{}
		core, logs := observer.New(zapcore.DebugLevel)
		s := newTestSource(t, srv.tokenURL(), func(c *Config) {
			c.Credentials, c.PollCredentials, c.Observer, c.Logger = creds, time.Second, obs, zap.New(core)
		})
		mustGet(t, s)
		start := time.Now()
		accepted.Store("new-secret-value-2") // the server refuses the old secret
		settle(3 * time.Second)              // the refresh at 2.325 s is refused
		if st := s.Status(); st.State != StateRefused {
			t.Fatalf("state %s, want refused", st.State)
		}
		settle(500 * time.Millisecond)
		creds.set(&Credentials{ClientID: tsClientID, ClientSecret: "new-secret-value-2"}) // at 3.5 s
		settle(time.Second)
		// The poll after the refusal at 2.325 s looks at 3.325 s (nothing
		// new), 4.325 s (new): the token request goes out then, not at the
		// end of the 5 s backoff (7.325 s).
		assertArrivals(t, srv, start, []time.Duration{0, 2325 * time.Millisecond, 4325 * time.Millisecond})
		if tok := mustGet(t, s); tok.Value != "tok-3" {
			t.Fatalf("Get = %q, want tok-3", tok.Value)
		}
		if n := obs.changed.Load(); n != 1 {
			t.Fatalf("CredentialsChanged heard %d times, want 1", n)
		}
		if n := logs.FilterMessageSnippet("credentials changed").Len(); n != 1 {
			t.Fatalf("%d 'credentials changed' lines, want 1", n)
		}
		// Unchanged credentials are not polled once the source is healthy.
		settle(time.Minute)
		if n := obs.changed.Load(); n != 1 {
			t.Fatalf("CredentialsChanged heard %d times, want 1", n)
		}
	})
}

// Credentials that changed while the refused request was in flight are
// tried at once, without waiting for a poll or the backoff; unchanged
// ones are not polled without PollCredentials.
func TestEngineRefusalOfOldCredentialsRetriesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var accepted atomic.Value
		accepted.Store("new-secret-value-2")
		srv := secretServer(t, &accepted)
		creds := &rotating{cur: &Credentials{ClientID: tsClientID, ClientSecret: "old-secret-value-1"}}
		s := newTestSource(t, srv.tokenURL(), func(c *Config) { c.Credentials = creds })
		start := time.Now()
		release := srv.holdRequests(t)
		s.WarmUp()
		synctest.Wait()
		creds.set(&Credentials{ClientID: tsClientID, ClientSecret: "new-secret-value-2"})
		release()
		synctest.Wait()
		assertArrivals(t, srv, start, []time.Duration{0, 0})
		if tok := mustGet(t, s); tok.Value != "tok-2" {
			t.Fatalf("Get = %q, want tok-2", tok.Value)
		}

		// Refused, nothing changes, no PollCredentials: the backoff holds.
		accepted.Store("third-secret-value-3")
		settle(3 * time.Second) // the refresh at 2.325 s is refused
		n := srv.count()
		settle(4 * time.Second) // the retry is at 2.325 s + 5 s
		if got := srv.count(); got != n {
			t.Fatalf("%d token requests during the backoff, want none", got-n)
		}
	})
}
