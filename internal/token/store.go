package token

import (
	"context"
	"errors"
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

// Stored is what a fleet shares: a token and its wall-clock times.
type Stored struct {
	AccessToken string    `json:"access_token"`
	Obtained    time.Time `json:"obtained"`
	Expiry      time.Time `json:"expiry"`
}

// ErrStoreUnresponsive is wrapped by a Store's errors when the storage did
// not answer in time, or an earlier call to it has not returned yet: the
// source then leaves the store alone for the rest of the fetch.
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
// instance's own, with a WARN; so does a storage that does not answer
// within storageWait (lock: the lock wait), and the storage is then left
// alone for the rest of the fetch.
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
		s.storeFailed(storeErrResult(err, StoreLockTimeout), err)
		tok, terr = s.send(ctx, c, replacing)
		return tok, terr, false
	}
	defer s.release(ctx, unlock, wait)
	// Look again under the lock (a peer may have just stored a token); a
	// failure was already counted and logged by the first look.
	tok, err = s.adoptWithin(ctx, wait, st, c, replacing, StoreAdopted)
	if tok != nil {
		return tok, nil, true
	}
	if err != nil {
		if loadErr == nil {
			s.storeFailed(storeErrResult(err, StoreTimeout), err)
		}
		if unresponsive(err) {
			tok, terr = s.send(ctx, c, replacing)
			return tok, terr, false
		}
	}
	s.storeResult(StoreMiss)
	tok, terr = s.send(ctx, c, replacing)
	if terr == nil {
		saveCtx, cancel := context.WithTimeout(ctx, wait)
		err := st.Save(saveCtx, c, &Stored{AccessToken: tok.Value, Obtained: tok.obtained.Round(0), Expiry: tok.wallExpiry})
		cancel()
		if err != nil {
			s.storeFailed(storeErrResult(err, StoreTimeout), err)
		}
	}
	return tok, terr, false
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
func (s *Source) adopt(ctx context.Context, st Store, c *Credentials, replacing bool, result StoreResult) (*Token, error) {
	stored, err := st.Load(ctx, c)
	if err != nil {
		return nil, err
	}
	s.storeOK()
	if stored == nil {
		return nil, nil
	}
	if r := s.rejected.Load(); r != nil && stored.AccessToken == r.Value {
		return nil, nil
	}
	now := time.Now()
	wallNow := now.Round(0)
	left := stored.Expiry.Sub(wallNow)
	life := stored.Expiry.Sub(stored.Obtained)
	if left <= 0 || life <= 0 {
		return nil, nil
	}
	if !replacing {
		if cur := s.cur.Load(); (cur != nil && stored.AccessToken == cur.Value) || float64(wallNow.Sub(stored.Obtained)) >= float64(life)*refreshPoint {
			return nil, nil
		}
	}
	s.storeResult(result)
	return &Token{
		Value:      stored.AccessToken,
		obtained:   now.Add(-wallNow.Sub(stored.Obtained)),
		expiry:     now.Add(left),
		wallExpiry: stored.Expiry,
	}, nil
}

func (s *Source) storeResult(r StoreResult) {
	if s.obs != nil {
		s.obs.StoreUsed(r)
	}
}

// storeFailed records a storage failure and logs a WARN on the first one
// in a row.
func (s *Source) storeFailed(r StoreResult, err error) {
	s.storeResult(r)
	if !s.storeDown.Swap(true) {
		s.log.Warn("shared token cache unavailable; fetching tokens locally", zap.String("error", s.Scrub(err.Error())))
	}
}

// storeOK notes that the store works again.
func (s *Source) storeOK() {
	if s.storeDown.Swap(false) {
		s.log.Info("shared token cache available again")
	}
}
