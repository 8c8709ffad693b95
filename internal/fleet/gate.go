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
// entry has outlived its deadline, has not returned yet, and the gate's
// wait after it has not ended: the storage is not called again before.
var errStuck = fmt.Errorf("an earlier call to the storage has not returned yet; not calling it again for now: %w", token.ErrStoreUnresponsive)

// errClosed is returned (wrapped) while maxAbandoned calls of the same
// entry have outlived their deadlines and not returned: the storage is not
// called again until one of them returns.
var errClosed = fmt.Errorf("too many calls to the storage have not returned; not calling it again until one does: %w", token.ErrStoreUnresponsive)

// opLock names the storage's Lock among the calls of a gate.
const opLock = "lock"

// Bounds of a gate after a call outlived its caller.
const (
	// maxAbandoned is how many abandoned calls (each a goroutine still in
	// the storage) an entry may have at once; at that count the gate calls
	// the storage no more until one of them returns.
	maxAbandoned = 4
	// stuckWaitFactor times the wait of the call that was abandoned is how
	// long the gate leaves the storage alone after it, within
	// [minStuckWait, maxStuckWait]: a storage that did not answer a 2 s
	// read is tried again 20 s later.
	stuckWaitFactor = 10
	minStuckWait    = time.Second
	maxStuckWait    = 30 * time.Second
)

// stuckWait is how long the gate leaves the storage alone after a call
// that was waited for `waited` did not return.
func stuckWait(waited time.Duration) time.Duration {
	return min(max(waited*stuckWaitFactor, minStuckWait), maxStuckWait)
}

// This file bounds every call to the shared cache's storage: one call at a
// time per entry, each in a goroutine of its own, waited for only until its
// deadline; after a call that did not return, the storage is left alone
// for a while, then tried again, a bounded number of times.

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

// gate runs the storage calls of one shared cache entry, one at a time,
// each in a goroutine of its own, so that a storage that does not honour
// its context cannot hold up a fetch: certmagic.FileStorage reads with
// os.ReadFile, which blocks for good on a FIFO or a hung network mount
// (and on a FIFO removed meanwhile, for ever). The caller stops waiting
// when its context ends; the call is left to finish on its own and is then
// "abandoned" (stuck).
//
// After an abandoned call the gate leaves the storage alone for
// stuckWait(the call's wait): every call fails at once with errStuck. Then
// it lets one call through, which may get stuck too and starts another
// wait. At maxAbandoned abandoned calls still running, every call fails
// with errClosed until one of them returns. When every abandoned call has
// returned, the gate is as new. So a wedged storage costs at most
// maxAbandoned goroutines per entry and engine (plus one waiting to release
// the entry's lock, if this instance held it), one fetch a stuckWait waits
// for it, and the fetches go on without the shared cache meanwhile; a
// storage that recovers, even with a call stuck in it for ever, is used
// again after one wait.
type gate struct {
	slot chan struct{} // holds a value while a call that a caller waits for runs

	mu sync.Mutex
	// abandoned counts the calls that outlived their callers and have not
	// returned; op names the last of them ("load", "lock"…).
	abandoned int
	op        string
	// retryAt is when the storage may be called again, while abandoned > 0.
	retryAt time.Time
	// since is when the current run of abandoned calls began: the first
	// abandonment since the gate last had none (zero when it has none).
	since time.Time
	// changed is closed (and replaced) when an abandoned call returns.
	changed chan struct{}
}

func newGate() *gate { return &gate{slot: make(chan struct{}, 1), changed: make(chan struct{})} }

// check returns errStuck or errClosed if the gate does not let a call
// through now, and nil if it does.
func (g *gate) check() error {
	_, _, err := g.checkWait()
	return err
}

// checkWait is check, with what a caller willing to wait waits for: the
// channel closed when an abandoned call returns, and when the gate's wait
// ends (zero when only a return helps).
func (g *gate) checkWait() (changed <-chan struct{}, retryAt time.Time, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.abandoned >= maxAbandoned:
		return g.changed, time.Time{}, fmt.Errorf("%w (%d calls, the last a %s)", errClosed, g.abandoned, g.op)
	case g.abandoned > 0 && time.Now().Before(g.retryAt):
		return g.changed, g.retryAt, fmt.Errorf("%w (%s)", errStuck, g.op)
	}
	return g.changed, time.Time{}, nil
}

// acquire takes the slot, waiting for a call in progress to end. It fails
// at once while the gate leaves the storage alone (errStuck, errClosed),
// or with ctx.Err() if ctx ends first.
func (g *gate) acquire(ctx context.Context) error {
	if err := g.check(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case g.slot <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	// The call that held the slot may have been abandoned meanwhile: only
	// one call goes through after a wait.
	if err := g.check(); err != nil {
		<-g.slot
		return err
	}
	return nil
}

// acquireEventually takes the slot as soon as the gate lets a call
// through, however long that takes: for the release of a lock, which must
// happen some day.
func (g *gate) acquireEventually() {
	for {
		changed, retryAt, err := g.checkWait()
		if err == nil {
			g.slot <- struct{}{}
			if g.check() == nil {
				return
			}
			<-g.slot
			continue
		}
		var wake <-chan time.Time
		var t *time.Timer
		if !retryAt.IsZero() {
			t = time.NewTimer(time.Until(retryAt))
			wake = t.C
		}
		select {
		case <-changed:
		case <-wake:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// run runs f in a goroutine (the slot must be held; run frees it) and
// waits for it until ctx ends. Should f return later, late gets its error,
// before the call stops counting as abandoned.
func (g *gate) run(ctx context.Context, op string, f func(context.Context) error, late func(error)) error {
	defer func() { <-g.slot }()
	start := time.Now()
	done := make(chan error, 1)
	var abandoned, finished bool // guarded by g.mu
	go func() {
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
		g.returned()
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
	now := time.Now()
	if g.abandoned == 0 {
		g.since = now
	}
	g.abandoned++
	g.op = op
	waited := now.Sub(start)
	if d, ok := ctx.Deadline(); ok {
		waited = d.Sub(start)
	}
	g.retryAt = now.Add(stuckWait(waited))
	g.mu.Unlock()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err := fmt.Errorf("no answer from the storage within %v: %w", now.Sub(start).Round(time.Millisecond), ctx.Err())
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

// returned records that an abandoned call returned.
func (g *gate) returned() {
	g.mu.Lock()
	g.abandoned--
	if g.abandoned == 0 {
		g.op, g.retryAt, g.since = "", time.Time{}, time.Time{}
	}
	changed := g.changed
	g.changed = make(chan struct{})
	g.mu.Unlock()
	close(changed)
}

// state returns how many abandoned calls are still running, and when the
// gate's current run of them began (zero if none is running).
func (g *gate) state() (stuck int, since time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.abandoned, g.since
}

// isStuck reports whether a call has outlived its caller and not returned.
func (g *gate) isStuck() bool {
	n, _ := g.state()
	return n > 0
}
