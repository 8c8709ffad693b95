package fleet

import (
	"context"
	"fmt"
	"sync"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is the entry's lock: how an instance takes the fleet's lock on
// an entry and gives it back, within bounded waits.

// Lock takes the storage's lock for the entry under c (named
// desko_auth_token_<hash>; with certmagic.FileStorage, the file
// <storage path>/locks/desko_auth_token_<hash>.lock).
//
// Bound: lock returns at the latest when ctx ends, even if the storage's
// Lock does not honour ctx (it then runs on in the background and, should it
// succeed later, its lock is released at once). An already ended ctx fails
// without touching the storage. The error then wraps ctx.Err(); while the
// gate leaves the storage alone after a call that did not return, it wraps
// token.ErrStoreUnresponsive.
//
// With certmagic.FileStorage (v0.25.6) a waiter polls: it retries every
// second, so a released lock is noticed up to 1 s late. A holder keeps its
// lock file fresh every 5 s, and a lock file not refreshed for 10 s is stale
// and taken over: a crashed holder blocks the others for 10-11 s. The lock is
// not reentrant, within a process either.
//
// unlock releases the lock, with its own background context bounded by
// e.unlockTimeout, so it works after ctx has ended. It goes through the
// gate like every call, but waits for it rather than fail: while the gate
// leaves a stuck storage alone, unlock waits for the gate's wait to end or
// a stuck call to return (the lock must be released some day); callers
// that cannot wait that long call it in a goroutine. Calling it more than
// once is harmless. Failures go to e.unlockFailed.
func (e *Entry) Lock(ctx context.Context, c *token.Credentials) (unlock func(), err error) {
	s, err := e.sealFor(c)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("locking shared token cache entry %s: %w", s.key, err)
	}
	err = e.call(ctx, opLock, func(ctx context.Context) error {
		return e.storage.Lock(ctx, s.lockName)
	}, func(err error) {
		if err == nil {
			e.unlockNow(s) // got it after we gave up
		}
	})
	if err != nil {
		return nil, fmt.Errorf("locking shared token cache entry %s: %w", s.key, err)
	}
	var once sync.Once
	return func() { once.Do(func() { e.release(s) }) }, nil
}

// release releases the lock through the gate, waiting for the gate to let
// a call through rather than failing.
func (e *Entry) release(s *sealed) {
	e.gate.acquireEventually()
	ctx, cancel := context.WithTimeout(context.Background(), e.unlockTimeout)
	defer cancel()
	err := e.gate.run(ctx, "unlock", func(ctx context.Context) error {
		return e.storage.Unlock(ctx, s.lockName)
	}, func(err error) {
		if err != nil {
			e.reportUnlock(s, err)
		}
	})
	if err != nil {
		e.reportUnlock(s, err)
	}
}

// unlockNow releases the lock directly: for a Lock that returned after its
// caller gave up on it, from that call's goroutine (which still counts as
// abandoned, so the gate bounds it).
func (e *Entry) unlockNow(s *sealed) {
	ctx, cancel := context.WithTimeout(context.Background(), e.unlockTimeout)
	defer cancel()
	if err := e.storage.Unlock(ctx, s.lockName); err != nil {
		e.reportUnlock(s, err)
	}
}

func (e *Entry) reportUnlock(s *sealed, err error) {
	if e.unlockFailed != nil {
		e.unlockFailed(fmt.Errorf("unlocking shared token cache entry %s: %w", s.key, err))
	}
}
