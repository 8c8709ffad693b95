package deskoauth

import (
	"context"
	"fmt"
	"sync"
)

// This file is the shared cache's lock: how an instance takes the fleet's
// lock on an entry and gives it back, within bounded waits.

// lock takes the storage's lock for this entry (named
// desko_auth_token_<hash>; with certmagic.FileStorage, the file
// <storage path>/locks/desko_auth_token_<hash>.lock).
//
// Bound: lock returns at the latest when ctx ends, even if the storage's
// Lock does not honour ctx (it then runs on in the background and, should it
// succeed later, its lock is released at once). An already ended ctx fails
// without touching the storage. The error then wraps ctx.Err(); while an
// earlier storage call is stuck, it wraps errStorageStuck.
//
// With certmagic.FileStorage (v0.25.6) a waiter polls: it retries every
// second, so a released lock is noticed up to 1 s late. A holder keeps its
// lock file fresh every 5 s, and a lock file not refreshed for 10 s is stale
// and taken over: a crashed holder blocks the others for 10-11 s. The lock is
// not reentrant, within a process either.
//
// unlock releases the lock, with its own background context bounded by
// c.unlockTimeout, so it works after ctx has ended. Should an
// earlier storage call be stuck, unlock waits for it to return first (the
// lock must be released some day); callers that cannot wait that long call
// it in a goroutine. Calling it more than once is harmless. Failures go to
// c.unlockFailed.
func (c *sharedCache) lock(ctx context.Context) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("locking shared token cache entry %s: %w", c.key, err)
	}
	err = c.call(ctx, "lock", func(ctx context.Context) error {
		return c.storage.Lock(ctx, c.lockName)
	}, func(err error) {
		if err == nil {
			c.unlockNow() // got it after we gave up
		}
	})
	if err != nil {
		return nil, fmt.Errorf("locking shared token cache entry %s: %w", c.key, err)
	}
	var once sync.Once
	return func() { once.Do(c.release) }, nil
}

// release releases the lock through the gate, waiting for a stuck call to
// return first rather than failing.
func (c *sharedCache) release() {
	c.gate.slot <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), c.unlockTimeout)
	defer cancel()
	err := c.gate.run(ctx, "unlock", func(ctx context.Context) error {
		return c.storage.Unlock(ctx, c.lockName)
	}, func(err error) {
		if err != nil {
			c.reportUnlock(err)
		}
	})
	if err != nil {
		c.reportUnlock(err)
	}
}

// unlockNow releases the lock directly; only for a call that already holds
// the gate's slot.
func (c *sharedCache) unlockNow() {
	ctx, cancel := context.WithTimeout(context.Background(), c.unlockTimeout)
	defer cancel()
	if err := c.storage.Unlock(ctx, c.lockName); err != nil {
		c.reportUnlock(err)
	}
}

func (c *sharedCache) reportUnlock(err error) {
	if c.unlockFailed != nil {
		c.unlockFailed(fmt.Errorf("unlocking shared token cache entry %s: %w", c.key, err))
	}
}
