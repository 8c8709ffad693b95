package deskoauth

import "time"

// This file is what operators and metrics see of an engine: its state,
// a status snapshot, and the observer of its events.

// engineObserver receives engine events, for metrics. Implementations must be
// fast and must not block.
type engineObserver interface {
	// FetchDone is called after every token request with its outcome:
	// "ok" or an ErrorKind's String.
	FetchDone(result string, took time.Duration)
	// TokenChanged is called with the wall-clock expiry of the token now
	// being served, or the zero time when none is.
	TokenChanged(expiry time.Time)
	// SharedCache is called with the outcome of each use of the shared
	// cache: "hit", "miss", "adopted", "lock_timeout", "timeout" or "error".
	SharedCache(result string)
}

// engineState is the engine's health, as shown to operators.
type engineState string

// tokenEngine states.
const (
	stateEmpty      engineState = "empty"       // no token and no failure yet
	stateFresh      engineState = "fresh"       // a valid token is held
	stateRefreshing engineState = "refreshing"  // a token request is in flight
	stateBackingOff engineState = "backing_off" // the last request failed transiently
	stateRejected   engineState = "rejected"    // the last request was refused
)

// engineStatus is a snapshot of the engine for operators. It holds no secret and no
// token.
type engineStatus struct {
	State       engineState `json:"state"`
	ExpiresAt   time.Time   `json:"expires_at,omitzero"`
	LastFetchAt time.Time   `json:"last_fetch_at,omitzero"`
	NextRetryAt time.Time   `json:"next_retry_at,omitzero"`
	LastError   string      `json:"last_error,omitempty"`
	Fetches     uint64      `json:"fetches"`
}

func (e *tokenEngine) notifyToken(t *accessToken) {
	if e.obs == nil {
		return
	}
	if t == nil {
		e.obs.TokenChanged(time.Time{})
		return
	}
	e.obs.TokenChanged(t.wallExpiry)
}

// engineStatus returns a snapshot for operators.
func (e *tokenEngine) Status() engineStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := engineStatus{Fetches: e.fetches, LastFetchAt: e.lastFetchAt}
	now := e.clock.Now()
	t := e.cur.Load()
	if t.Valid(now) {
		s.ExpiresAt = t.wallExpiry
	}
	switch {
	case e.inflight != nil:
		s.State = stateRefreshing
	case e.lastErr != nil && e.lastErr.Kind == kindRejected:
		s.State = stateRejected
	case e.lastErr != nil:
		s.State = stateBackingOff
	case t.Valid(now):
		s.State = stateFresh
	default:
		s.State = stateEmpty
	}
	if e.lastErr != nil {
		s.LastError = e.lastErr.Error()
		s.NextRetryAt = e.nextAttempt.Round(0)
	}
	return s
}
