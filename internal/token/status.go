package token

import "time"

// This file is what operators and metrics see of a source: its state, a
// status snapshot, and the observer of its events.

// Observer receives a source's events, for metrics and events. Its methods
// must be fast and must not block.
type Observer interface {
	// Fetched is called after every token request with its error, nil
	// when it succeeded.
	Fetched(err *Error, took time.Duration)
	// TokenChanged is called with the wall-clock expiry of the token now
	// being served.
	TokenChanged(expiry time.Time)
	// StoreUsed is called with the outcome of each use of the store.
	StoreUsed(r StoreResult)
}

// CredentialsObserver is an Observer that also hears when the source picks
// up new credentials from its CredentialSource.
type CredentialsObserver interface {
	CredentialsChanged()
}

// State is a source's health, as shown to operators.
type State string

// The states of a source.
const (
	StateEmpty      State = "empty"       // no token and no failure yet
	StateFresh      State = "fresh"       // a valid token is held
	StateRefreshing State = "refreshing"  // a fetch is in flight
	StateBackingOff State = "backing_off" // the last fetch failed for another reason (LastError says which)
	StateRefused    State = "refused"     // the token endpoint refused the credentials
)

// Status is a snapshot of a source for operators. It holds no secret and
// no token.
type Status struct {
	State       State     `json:"state"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	LastFetchAt time.Time `json:"last_fetch_at,omitzero"`
	NextRetryAt time.Time `json:"next_retry_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Fetches     uint64    `json:"fetches"`
	// SharedCache is the state of the shared cache; nil without one.
	SharedCache *SharedCacheStatus `json:"shared_cache,omitempty"`
}

// Status returns a snapshot for operators.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Fetches: s.fetches, LastFetchAt: s.lastFetchAt}
	now := time.Now()
	t := s.cur.Load()
	if t.Valid(now) {
		st.ExpiresAt = t.wallExpiry
	}
	switch {
	case s.flight != nil:
		st.State = StateRefreshing
	case s.lastErr != nil && s.lastErr.Kind == KindRefused:
		st.State = StateRefused
	case s.lastErr != nil:
		st.State = StateBackingOff
	case t.Valid(now):
		st.State = StateFresh
	default:
		st.State = StateEmpty
	}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
		st.NextRetryAt = s.nextAttempt.Round(0)
	}
	st.SharedCache = s.SharedCache()
	return st
}
