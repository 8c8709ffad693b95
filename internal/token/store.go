package token

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// This file is a source's side of a fleet: instances that share a store
// share one token per credential set, so a fleet makes one token request
// per token lifetime, and reacts to a revoked token with one fetch.

// Store is a fleet-wide token store: one entry per credential set, which
// the credentials given identify and protect (a store keeps entries that
// only holders of the same credentials can read). Every method returns when
// ctx ends at the latest.
type Store interface {
	// Load returns the stored token, nil if there is none (or none that
	// these credentials can read).
	Load(ctx context.Context, c *Credentials) (*Stored, error)
	// Save stores t, replacing the entry.
	Save(ctx context.Context, c *Credentials, t *Stored) error
	// Lock takes the fleet's lock on the entry; unlock releases it.
	Lock(ctx context.Context, c *Credentials) (unlock func(), err error)
}

// Stored is what a fleet shares: a token and its wall-clock times, on the
// token endpoint's clock as the instance that stored them read it from the
// Date header of its answers (on its own clock if they had none). Its
// lifetime is Expiry - Obtained.
type Stored struct {
	AccessToken string    `json:"access_token"`
	Obtained    time.Time `json:"obtained"`
	Expiry      time.Time `json:"expiry"`
}

// StuckReporter is implemented by a Store whose calls can outlive their
// callers (a storage that does not answer): StuckCalls is how many of them
// have not returned yet. Status shows it.
type StuckReporter interface {
	StuckCalls() int
}

// ErrStoreUnresponsive is wrapped by a Store's errors when the storage did
// not answer in time, or the store leaves it alone after an earlier call
// that has not returned: the source then leaves the store alone for the
// rest of the fetch.
var ErrStoreUnresponsive = errors.New("the storage does not answer")

// StoreResult is the outcome of one use of the store, for metrics.
type StoreResult string

// The outcomes of a use of the store.
const (
	StoreHit         StoreResult = "hit"          // a peer's token adopted without the lock
	StoreAdopted     StoreResult = "adopted"      // a peer's token adopted under the lock
	StoreMiss        StoreResult = "miss"         // nothing usable: this instance fetched
	StoreLockTimeout StoreResult = "lock_timeout" // the lock wait ended: fetched alone
	StoreTimeout     StoreResult = "timeout"      // the storage did not answer in time
	StoreError       StoreResult = "error"        // the storage failed
)

type storeHolder struct{ s Store }

// maxLockWait bounds the wait for the fleet's lock; past it the instance
// fetches on its own.
const maxLockWait = 5 * time.Second

// maxStorageWait bounds the wait for one storage read or write (see
// storageWait).
const maxStorageWait = 2 * time.Second

// storageWait is how long a fetch waits for one storage read or write: a
// quarter of the fetch timeout, at most maxStorageWait, so that a storage
// that does not answer leaves most of the timeout to the local token
// request. Every wait also ends with the fetch's own timeout.
func storageWait(timeout time.Duration) time.Duration { return min(timeout/4, maxStorageWait) }

// SetStore makes the source share its tokens through st (nil: stop
// sharing). Each config load sets the newest config's store, so that a
// source kept across a reload never uses a storage that the old config has
// cleaned up.
func (s *Source) SetStore(st Store) {
	if st == nil {
		s.store.Store(nil)
		return
	}
	s.store.Store(&storeHolder{st})
}

// CurrentStore returns the store set by SetStore, or nil.
func (s *Source) CurrentStore() Store {
	if h := s.store.Load(); h != nil {
		return h.s
	}
	return nil
}

// fetch gets a new token: from the token endpoint, or from the store when a
// peer already holds a good one (adopted). replacing says that the token
// the upstream rejected (s.rejected) is being replaced.
//
// With a store: adopt a stored token with enough life left (no lock);
// otherwise take the store's lock (bounded), look again (a peer may have
// just refreshed), send a token request only if still needed, store,
// unlock. Any storage failure falls back to a token request of this
// instance's own; so does a storage that does not answer within
// storageWait (lock: the lock wait), and the storage is then left alone
// for the rest of the fetch. A failure starts an outage of the store (one
// WARN); a fetch that goes through a full round with the store without one
// ends it (one INFO). A lock wait that ends is neither: a peer holds the
// lock for long.
func (s *Source) fetch(ctx context.Context, c *Credentials, replacing bool) (tok *Token, terr *Error, adopted bool) {
	h := s.store.Load()
	if h == nil {
		tok, terr = s.send(ctx, c, replacing)
		return tok, terr, false
	}
	st := h.s
	wait := storageWait(s.cfg.Timeout)
	tok, loadErr := s.adoptWithin(ctx, wait, st, c, replacing, StoreHit)
	if tok != nil {
		s.storeWorked()
		return tok, nil, true
	}
	if loadErr != nil {
		s.storeFailed(storeErrResult(loadErr, StoreTimeout), loadErr)
		if unresponsive(loadErr) {
			tok, terr = s.send(ctx, c, replacing)
			return tok, terr, false
		}
	}

	lockCtx, cancel := context.WithTimeout(ctx, min(s.cfg.Timeout/2, maxLockWait))
	unlock, err := st.Lock(lockCtx, c)
	cancel()
	if err != nil {
		if r := storeErrResult(err, StoreLockTimeout); r == StoreLockTimeout {
			// A peer holds the lock for long: counted, but no outage.
			s.storeResult(r)
			s.log.Debug("shared token cache lock not obtained in time; fetching a token locally", zap.String("error", s.Scrub(err.Error())))
		} else {
			s.storeFailed(r, err)
		}
		tok, terr = s.send(ctx, c, replacing)
		return tok, terr, false
	}
	defer s.release(ctx, unlock, wait)
	// Look again under the lock (a peer may have just stored a token); a
	// failure was already counted by the first look.
	tok, err = s.adoptWithin(ctx, wait, st, c, replacing, StoreAdopted)
	failed := loadErr != nil
	if tok != nil {
		if !failed {
			s.storeWorked()
		}
		return tok, nil, true
	}
	if err != nil {
		if !failed {
			s.storeFailed(storeErrResult(err, StoreTimeout), err)
		}
		failed = true
		if unresponsive(err) {
			tok, terr = s.send(ctx, c, replacing)
			return tok, terr, false
		}
	}
	s.storeResult(StoreMiss)
	tok, terr = s.send(ctx, c, replacing)
	if terr != nil {
		return nil, terr, false
	}
	// The entry's times are on the token endpoint's clock (see serverSkew).
	skew := s.serverSkew()
	saveCtx, cancel := context.WithTimeout(ctx, wait)
	err = st.Save(saveCtx, c, &Stored{AccessToken: tok.Value, Obtained: tok.obtained.Round(0).Add(skew), Expiry: tok.wallExpiry.Add(skew)})
	cancel()
	switch {
	case err != nil:
		s.storeFailed(storeErrResult(err, StoreTimeout), err)
	case !failed:
		s.storeWorked()
	}
	return tok, nil, false
}

// send is fetch's token request, charged to the 401 budget when it
// replaces a rejected token.
func (s *Source) send(ctx context.Context, c *Credentials, replacing bool) (*Token, *Error) {
	if replacing {
		s.chargeReplacement()
	}
	return s.post(ctx, c)
}

// release releases the fleet's lock, but waits for the storage no longer
// than for a read (the release carries on in the background, after a stuck
// call if there is one): the token is ready.
func (s *Source) release(ctx context.Context, unlock func(), wait time.Duration) {
	released := make(chan struct{})
	go func() {
		defer close(released)
		unlock()
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-released:
	case <-t.C:
	case <-ctx.Done():
	}
}

// unresponsive reports whether err says that the storage did not answer in
// time (or an earlier call to it is still stuck).
func unresponsive(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrStoreUnresponsive)
}

// storeErrResult is the metric result of a storage failure: timeout for a
// storage that does not answer, deadline for a deadline exceeded (a read's
// timeout, the lock wait's lock_timeout), error for anything else.
func storeErrResult(err error, deadline StoreResult) StoreResult {
	switch {
	case errors.Is(err, ErrStoreUnresponsive):
		return StoreTimeout
	case errors.Is(err, context.DeadlineExceeded):
		return deadline
	}
	return StoreError
}

// adoptWithin is adopt with the load bounded by wait.
func (s *Source) adoptWithin(ctx context.Context, wait time.Duration, st Store, c *Credentials, replacing bool, result StoreResult) (*Token, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return s.adopt(ctx, st, c, replacing, result)
}

// adopt loads the stored token and returns it if this instance should use
// it: never a token the upstream rejected, and, for a refresh, not the
// current token nor one due for refresh itself (its refresh point is at
// 75% of its life, the earliest any instance refreshes). It reports result
// to the observer on success; a load error is returned for the caller to
// report.
//
// The stored times are on the token endpoint's clock as the peer that
// stored them read it (see serverSkew), or on the peer's own clock; a peer
// whose clock is ahead must not make a token last longer here. So the
// token's life left is at most the lifetime its issuer gave it
// (Expiry - Obtained) and at most what its JWT exp claim says, both
// measured on this instance's clock; a token with no more than its safety
// margin left is not adopted.
func (s *Source) adopt(ctx context.Context, st Store, c *Credentials, replacing bool, result StoreResult) (*Token, error) {
	stored, err := st.Load(ctx, c)
	if err != nil {
		return nil, err
	}
	if stored == nil {
		return nil, nil
	}
	if r := s.rejected.Load(); r != nil && stored.AccessToken == r.Value {
		return nil, nil
	}
	now := time.Now()
	skew := s.serverSkew()
	wallNow := now.Round(0)
	life := stored.Expiry.Sub(stored.Obtained)
	left := min(stored.Expiry.Add(-skew).Sub(wallNow), life)
	if exp, ok := jwtExpiry(stored.AccessToken); ok {
		left = min(left, exp.Add(-skew).Sub(wallNow))
	}
	if life <= 0 || left <= safetyMargin(life) {
		return nil, nil
	}
	age := life - left
	if !replacing {
		if cur := s.cur.Load(); (cur != nil && stored.AccessToken == cur.Value) || float64(age) >= float64(life)*refreshPoint {
			return nil, nil
		}
	}
	s.storeResult(result)
	return newToken(stored.AccessToken, now.Add(-age), now.Add(left), wallNow.Add(left)), nil
}

func (s *Source) storeResult(r StoreResult) {
	if s.obs != nil {
		s.obs.StoreUsed(r)
	}
}

// storeHealth is a source's view of its store: whether it is in an outage,
// since when, and why.
type storeHealth struct {
	mu      sync.Mutex
	down    bool
	since   time.Time // the outage's first failure; or the end of the last one
	lastErr string    // scrubbed
}

// storeFailed records a storage failure; the first one of an outage is
// logged (WARN).
func (s *Source) storeFailed(r StoreResult, err error) {
	s.storeResult(r)
	msg := s.Scrub(err.Error())
	h := &s.storeHealth
	h.mu.Lock()
	first := !h.down
	if first {
		h.down, h.since = true, time.Now().Round(0)
	}
	h.lastErr = msg
	h.mu.Unlock()
	if first {
		s.log.Warn("shared token cache unavailable; fetching tokens locally", zap.String("error", msg))
	}
}

// storeWorked notes that a fetch went through a full round with the store
// without a failure: an outage ends (INFO).
func (s *Source) storeWorked() {
	h := &s.storeHealth
	h.mu.Lock()
	was := h.down
	var lasted time.Duration
	if was {
		now := time.Now().Round(0)
		lasted = now.Sub(h.since)
		h.down, h.since, h.lastErr = false, now, ""
	}
	h.mu.Unlock()
	if was {
		s.log.Info("shared token cache available again", zap.Duration("unavailable_for", lasted))
	}
}

// SharedCacheStatus is a source's view of its shared cache, for operators.
type SharedCacheStatus struct {
	// State is "ok", or "degraded" from a storage failure until a fetch
	// goes through a full round with the store without one.
	State string `json:"state"`
	// Since is when the state began: the outage's first failure, or its
	// end (absent while the store never failed).
	Since time.Time `json:"since,omitzero"`
	// LastError is the last storage failure of the outage, scrubbed.
	LastError string `json:"last_error,omitempty"`
	// StuckCalls is how many storage calls outlived their callers and have
	// not returned (goroutines blocked in a storage that does not answer).
	StuckCalls int `json:"stuck_calls"`
}

// The states of a shared cache.
const (
	SharedCacheOK       = "ok"
	SharedCacheDegraded = "degraded"
)

// SharedCache returns the state of the source's shared cache, nil without
// a store. Status holds it too; this is the cheap way for metrics.
func (s *Source) SharedCache() *SharedCacheStatus {
	st := s.CurrentStore()
	if st == nil {
		return nil
	}
	h := &s.storeHealth
	h.mu.Lock()
	out := &SharedCacheStatus{State: SharedCacheOK, Since: h.since, LastError: h.lastErr}
	if h.down {
		out.State = SharedCacheDegraded
	}
	h.mu.Unlock()
	if r, ok := st.(StuckReporter); ok {
		out.StuckCalls = r.StuckCalls()
	}
	return out
}
