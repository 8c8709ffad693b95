package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// errStuck is returned (wrapped) while an earlier storage call of the same
// entry has outlived its deadline and not returned yet: the storage is not
// called again until it does.
var errStuck = fmt.Errorf("an earlier call to the storage has not returned yet; not calling it again: %w", token.ErrStoreUnresponsive)

// opLock names the storage's Lock among the calls of a gate.
const opLock = "lock"

// This file bounds every call to the shared cache's storage: one call at a
// time per entry, each in a goroutine of its own, waited for only until its
// deadline.

// call runs f, one call to the storage, through the gate under ctx (given a
// deadline of opTimeout if it has none). late, if not nil, gets
// f's error should f return after call gave up on it.
func (e *Entry) call(ctx context.Context, op string, f func(context.Context) error, late func(error)) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opTimeout)
		defer cancel()
	}
	if err := e.gate.acquire(ctx); err != nil {
		return err
	}
	return e.gate.run(ctx, op, f, late)
}

// gate runs the storage calls of one shared cache entry, one at a
// time, each in a goroutine of its own, so that a storage that does not
// honour its context cannot hold up a fetch: certmagic.FileStorage reads
// with os.ReadFile, which blocks for good on a FIFO or a hung network
// mount. The caller stops waiting when its context ends; the call is left
// to finish on its own and is then "stuck". Until it returns, every further
// call fails at once with errStuck instead of starting another one.
// So a wedged storage costs at most one goroutine per entry and engine (plus
// one waiting to release the entry's lock, if this instance held it), and
// the fetch goes on without the shared cache.
type gate struct {
	slot  chan struct{} // holds a value while a call runs
	mu    sync.Mutex
	stuck string // the call that outlived its caller ("load", "lock"…), "" if none
}

func newGate() *gate { return &gate{slot: make(chan struct{}, 1)} }

// acquire takes the slot, waiting for a call in progress to end. It fails at
// once while a call is stuck, or with ctx.Err() if ctx ends first.
func (g *gate) acquire(ctx context.Context) error {
	g.mu.Lock()
	stuck := g.stuck
	g.mu.Unlock()
	if stuck != "" {
		return fmt.Errorf("%w (%s)", errStuck, stuck)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case g.slot <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run runs f in a goroutine (the slot must be held; the goroutine frees it
// when f returns) and waits for it until ctx ends. Should f return later,
// late gets its error, before the call stops being stuck.
func (g *gate) run(ctx context.Context, op string, f func(context.Context) error, late func(error)) error {
	start := time.Now()
	done := make(chan error, 1)
	var abandoned, finished bool // guarded by g.mu
	go func() {
		defer func() { <-g.slot }()
		err := f(ctx)
		g.mu.Lock()
		if !abandoned {
			finished = true
			g.mu.Unlock()
			done <- err
			return
		}
		g.mu.Unlock()
		if late != nil {
			late(err)
		}
		g.mu.Lock()
		g.stuck = ""
		g.mu.Unlock()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	g.mu.Lock()
	if finished {
		g.mu.Unlock()
		return <-done
	}
	abandoned = true
	g.stuck = op
	g.mu.Unlock()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err := fmt.Errorf("no answer from the storage within %v: %w", time.Since(start).Round(time.Millisecond), ctx.Err())
		if op == opLock {
			// A lock wait that ends is a lock held elsewhere as much as a
			// storage that does not answer: the source counts it as a
			// lock_timeout, whichever of the storage's Lock and this wait
			// saw the deadline first. Should the Lock be stuck, the calls
			// after it fail with errStuck.
			return err
		}
		return fmt.Errorf("%w (%w)", err, token.ErrStoreUnresponsive)
	}
	return ctx.Err()
}

// isStuck reports whether a call has outlived its caller and not returned.
func (g *gate) isStuck() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stuck != ""
}
