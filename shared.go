package deskoauth

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// This file is the engine's side of cluster mode: instances that share a
// store share one token per credential set, so a fleet makes one token
// request per token lifetime, and reacts to a revoked token with one fetch.

// sharedStore is what the engine needs of a fleet-wide token store;
// *sharedCache (a certmagic.Storage entry) is the implementation.
type sharedStore interface {
	load(ctx context.Context) (*storedToken, error)
	store(ctx context.Context, t *storedToken) error
	lock(ctx context.Context) (unlock func(), err error)
	// succeed is called when the store replaces prev as the engine's
	// store after a reload: it may take over prev's state (the gate of
	// a call stuck in a wedged storage).
	succeed(prev sharedStore)
}

type sharedHolder struct{ s sharedStore }

// maxLockWait bounds the wait for the fleet's lock; past it the instance
// fetches on its own.
const maxLockWait = 5 * time.Second

// maxStorageWait bounds the wait for one storage read or write (see
// storageWait).
const maxStorageWait = 2 * time.Second

// storageWait is how long a fetch waits for one storage read or write: a
// quarter of the token request timeout, at most maxStorageWait, so that a
// storage that does not answer leaves most of the timeout to the local
// token request. Every wait also ends with the fetch's own timeout.
func storageWait(timeout time.Duration) time.Duration { return min(timeout/4, maxStorageWait) }

// setShared turns cluster mode on (or off with nil). Each Provision calls it
// with the newest config's storage, so that an engine kept across a reload
// never uses a storage module that the old config has cleaned up.
func (e *tokenEngine) setShared(s sharedStore) {
	if s == nil {
		e.shared.Store(nil)
		return
	}
	if old := e.shared.Load(); old != nil {
		s.succeed(old.s)
	}
	e.shared.Store(&sharedHolder{s})
}

// obtain gets a new token: from the token endpoint, or in cluster mode from
// the shared store when a peer already holds a good one. replacing is the
// token the upstream rejected, if that is why a token is needed. adopted
// reports that the token came from the store.
//
// In cluster mode: adopt a stored token with enough life left (no lock);
// otherwise take the store's lock (bounded), look again (a peer may have
// just refreshed), fetch only if still needed, store, unlock. Any storage
// failure falls back to a fetch of this instance's own, with a WARN; so does
// a storage that does not answer within storageWait (lock: the lock wait),
// and the storage is then left alone for the rest of the fetch.
func (e *tokenEngine) obtain(ctx context.Context, replacing *accessToken, avoid string) (tok *accessToken, terr *tokenError, adopted bool) {
	h := e.shared.Load()
	if h == nil {
		tok, terr = e.request(ctx)
		return tok, terr, false
	}
	wait := storageWait(e.cfg.Timeout)
	tok, loadErr := e.adoptWithin(ctx, wait, h.s, replacing, avoid, "hit")
	if tok != nil {
		return tok, nil, true
	}
	if loadErr != nil {
		e.sharedFailed(sharedErrResult(loadErr, "timeout"), loadErr)
		if storageUnresponsive(loadErr) {
			tok, terr = e.request(ctx)
			return tok, terr, false
		}
	}

	lockCtx, cancel := context.WithTimeout(ctx, min(e.cfg.Timeout/2, maxLockWait))
	unlock, err := h.s.lock(lockCtx)
	cancel()
	if err != nil {
		e.sharedFailed(sharedErrResult(err, "lock_timeout"), err)
		tok, terr = e.request(ctx)
		return tok, terr, false
	}
	// Release the lock, but wait for the storage no longer than for a read
	// (the release carries on in the background, after a stuck call if
	// there is one): the token is ready.
	defer func() {
		released := make(chan struct{})
		go func() {
			defer close(released)
			unlock()
		}()
		// A real timer on purpose: this bounds a wait on real storage I/O,
		// which the engine's (possibly fake) clock does not drive.
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-released:
		case <-t.C:
		case <-ctx.Done():
		}
	}()
	// Look again under the lock (a peer may have just stored a token); a
	// failure was already counted and logged by the first look.
	tok, err = e.adoptWithin(ctx, wait, h.s, replacing, avoid, "adopted")
	if tok != nil {
		return tok, nil, true
	}
	if err != nil {
		if loadErr == nil {
			e.sharedFailed(sharedErrResult(err, "timeout"), err)
		}
		if storageUnresponsive(err) {
			tok, terr = e.request(ctx)
			return tok, terr, false
		}
	}
	e.sharedResult("miss")
	tok, terr = e.request(ctx)
	if terr == nil {
		st := &storedToken{AccessToken: tok.Value, Obtained: tok.obtained.Round(0), Expiry: tok.wallExpiry}
		storeCtx, cancel := context.WithTimeout(ctx, wait)
		err := h.s.store(storeCtx, st)
		cancel()
		if err != nil {
			e.sharedFailed(sharedErrResult(err, "timeout"), err)
		}
	}
	return tok, terr, false
}

// storageUnresponsive reports whether err says the storage did not answer
// in time (or an earlier call of it is still stuck).
func storageUnresponsive(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errStorageStuck)
}

// sharedErrResult is the metric result of a storage failure: timeout for a
// storage that did not answer in time (or a deadline exceeded, the lock
// wait's lock_timeout), error for anything else.
func sharedErrResult(err error, deadline string) string {
	switch {
	case errors.Is(err, errStorageStuck):
		return "timeout"
	case errors.Is(err, context.DeadlineExceeded):
		return deadline
	}
	return "error"
}

// adoptWithin is adopt with the load bounded by wait.
func (e *tokenEngine) adoptWithin(ctx context.Context, wait time.Duration, s sharedStore, replacing *accessToken, avoid, result string) (*accessToken, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return e.adopt(ctx, s, replacing, avoid, result)
}

// adopt loads the stored token and returns it if this instance should use
// it: not a token the upstream rejected (replacing, avoid), and, for a
// refresh, not yet due for refresh itself (its refresh point is at 75% of
// its life, the earliest any instance refreshes). It reports result to the
// observer on success; a load error is returned for the caller to report.
func (e *tokenEngine) adopt(ctx context.Context, s sharedStore, replacing *accessToken, avoid, result string) (*accessToken, error) {
	st, err := s.load(ctx)
	if err != nil {
		return nil, err
	}
	e.sharedOK()
	if st == nil || (avoid != "" && st.AccessToken == avoid) {
		return nil, nil
	}
	now := e.clock.Now()
	wallNow := now.Round(0)
	left := st.Expiry.Sub(wallNow)
	life := st.Expiry.Sub(st.Obtained)
	if left <= 0 || life <= 0 {
		return nil, nil
	}
	if replacing != nil {
		if st.AccessToken == replacing.Value {
			return nil, nil
		}
	} else if cur := e.cur.Load(); (cur != nil && st.AccessToken == cur.Value) || float64(wallNow.Sub(st.Obtained)) >= float64(life)*refreshPoint {
		return nil, nil
	}
	e.sharedResult(result)
	return &accessToken{
		Value:      st.AccessToken,
		obtained:   now.Add(-wallNow.Sub(st.Obtained)),
		expiry:     now.Add(left),
		wallExpiry: st.Expiry,
	}, nil
}

func (e *tokenEngine) sharedResult(result string) {
	if e.obs != nil {
		e.obs.SharedCache(result)
	}
}

// sharedFailed records a storage failure and logs a WARN on the first one
// in a row.
func (e *tokenEngine) sharedFailed(result string, err error) {
	e.sharedResult(result)
	if !e.sharedBroken.Swap(true) {
		e.log.Warn("shared token cache unavailable; fetching tokens locally", zap.String("error", e.scrub(err.Error())))
	}
}

// sharedOK notes that the store works again.
func (e *tokenEngine) sharedOK() {
	if e.sharedBroken.Swap(false) {
		e.log.Info("shared token cache available again")
	}
}

// errStorageStuck is returned (wrapped) by the sharedCache methods when an
// earlier storage call of the same entry has outlived its deadline and not
// returned yet: the storage is not called again until it does.
var errStorageStuck = errors.New("an earlier call to the storage has not returned yet; not calling it again")

// storedToken is what the fleet shares: the token and its wall-clock times.
type storedToken struct {
	AccessToken string    `json:"access_token"`
	Obtained    time.Time `json:"obtained"`
	Expiry      time.Time `json:"expiry"`
}

// invalid says what makes t unusable, or "" if nothing does. The answer
// never quotes the token.
func (t *storedToken) invalid() string {
	switch {
	case t.AccessToken == "":
		return "no access_token"
	case !validTokenChars(t.AccessToken):
		return "access_token contains characters not allowed in an HTTP header"
	case t.Obtained.IsZero() || t.Expiry.IsZero():
		return "obtained or expiry is missing"
	case !t.Expiry.After(t.Obtained):
		return "expiry is not after obtained"
	}
	return ""
}
