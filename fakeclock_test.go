package deskoauth

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeWaitLimit is the safety net of every blocking helper in the tests: a
// condition that does not come true within it fails the test instead of
// hanging it. It is a real-time limit, never a synchronisation device.
const fakeWaitLimit = 5 * time.Second

// fakeClock is a Clock whose time only moves when the test calls Advance.
//
// Now returns base+offset where base came from time.Now, so every time it
// hands out carries a monotonic clock reading, exactly like the real clock
// (time.Time.Add keeps the monotonic reading and shifts it along with the
// wall reading).
//
// Timers fire from Advance: each due timer gets one value on its channel
// (buffered, capacity 1). Every change of the clock's state (a timer
// created, stopped or fired, time moved) wakes the goroutines blocked in
// BlockUntil*, so tests can wait for the engine's background refresher to
// arm its next timer without sleeping.
type fakeClock struct {
	t    testing.TB
	base time.Time

	mu      sync.Mutex
	offset  time.Duration
	pending []*fakeTimer // armed, not yet fired or stopped
	created int
	changed chan struct{} // closed and replaced on every state change
}

var _ engineClock = (*fakeClock)(nil)

func newFakeClock(t testing.TB) *fakeClock {
	return &fakeClock{t: t, base: time.Now(), changed: make(chan struct{})}
}

type fakeTimer struct {
	c        *fakeClock
	ch       chan time.Time
	deadline time.Duration // offset from base at which it fires
}

var _ timer = (*fakeTimer)(nil)

// notifyLocked wakes every waiter; c.mu must be held.
func (c *fakeClock) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Now implements Clock.
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base.Add(c.offset)
}

// Since is how far the clock has moved since it was created.
func (c *fakeClock) Since() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offset
}

// NewTimer implements Clock. A timer of zero or negative duration fires at
// once, like time.NewTimer's.
func (c *fakeClock) NewTimer(d time.Duration) timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	ft := &fakeTimer{c: c, ch: make(chan time.Time, 1), deadline: c.offset + d}
	c.created++
	if d <= 0 {
		ft.ch <- c.base.Add(c.offset)
	} else {
		c.pending = append(c.pending, ft)
	}
	c.notifyLocked()
	return ft
}

// C implements Timer.
func (t *fakeTimer) C() <-chan time.Time { return t.ch }

// Stop implements Timer: it reports whether the timer was still armed.
func (t *fakeTimer) Stop() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.pending, t)
	if i < 0 {
		return false
	}
	c.pending = slices.Delete(c.pending, i, i+1)
	c.notifyLocked()
	return true
}

// Advance moves the clock forward by d and fires, in deadline order, every
// timer that is due. It returns how many fired. It does not wait for
// anyone to react to them: use BlockUntilTimers for that.
func (c *fakeClock) Advance(d time.Duration) int {
	if d < 0 {
		c.t.Fatalf("fakeClock.Advance(%v): time does not go backwards", d)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
	now := c.base.Add(c.offset)
	slices.SortStableFunc(c.pending, func(a, b *fakeTimer) int { return int(a.deadline - b.deadline) })
	fired := 0
	for len(c.pending) > 0 && c.pending[0].deadline <= c.offset {
		ft := c.pending[0]
		c.pending = c.pending[1:]
		ft.ch <- now // never blocks: capacity 1, sent at most once
		fired++
	}
	c.notifyLocked()
	return fired
}

// Pending returns, for every armed timer, how long until it fires.
func (c *fakeClock) Pending() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]time.Duration, 0, len(c.pending))
	for _, ft := range c.pending {
		out = append(out, ft.deadline-c.offset)
	}
	return out
}

// Created is how many timers were ever made.
func (c *fakeClock) Created() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created
}

// BlockUntilTimers blocks until at least n timers are armed. The engine has
// one background goroutine that holds at most one timer, so after an event
// that leaves it with no timer (a fetch in flight, a timer that just
// fired), BlockUntilTimers(1) returns once it has finished reacting and is
// asleep again.
func (c *fakeClock) BlockUntilTimers(n int) {
	c.t.Helper()
	c.blockUntil(fmt.Sprintf("%d armed timer(s)", n), func() bool { return len(c.pending) >= n })
}

// BlockUntilTimerAt blocks until a timer armed to fire exactly at at (a
// time from this clock) exists. It tells a freshly armed timer apart from
// a stale one that the refresher has yet to stop.
func (c *fakeClock) BlockUntilTimerAt(at time.Time) {
	c.t.Helper()
	want := at.Sub(c.base)
	c.blockUntil(fmt.Sprintf("a timer armed for +%v", want), func() bool {
		for _, ft := range c.pending {
			if ft.deadline == want {
				return true
			}
		}
		return false
	})
}

// blockUntil waits, without polling, until cond (called with c.mu held)
// is true; it fails the test after fakeWaitLimit.
func (c *fakeClock) blockUntil(what string, cond func() bool) {
	c.t.Helper()
	limit := time.NewTimer(fakeWaitLimit)
	defer limit.Stop()
	for {
		c.mu.Lock()
		ok, ch := cond(), c.changed
		var state []time.Duration
		if !ok {
			for _, ft := range c.pending {
				state = append(state, ft.deadline-c.offset)
			}
		}
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-limit.C:
			c.t.Fatalf("fakeClock: gave up after %v waiting for %s; armed timers fire in %v", fakeWaitLimit, what, state)
			return
		}
	}
}

// waitChan receives from ch, failing the test after fakeWaitLimit.
func waitChan[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	limit := time.NewTimer(fakeWaitLimit)
	defer limit.Stop()
	select {
	case v := <-ch:
		return v
	case <-limit.C:
		t.Fatalf("gave up after %v waiting for %s", fakeWaitLimit, what)
		var zero T
		return zero
	}
}

func TestEngineFakeClock(t *testing.T) {
	c := newFakeClock(t)
	t0 := c.Now()
	if !hasMonotonic(t0) {
		t.Fatalf("fake Now() = %v has no monotonic reading", t0)
	}
	a := c.NewTimer(2 * time.Second)
	b := c.NewTimer(5 * time.Second)
	z := c.NewTimer(0)
	select {
	case <-z.C():
	default:
		t.Fatal("a zero-duration timer did not fire at once")
	}
	c.BlockUntilTimers(2)
	if got := c.Advance(time.Second); got != 0 {
		t.Fatalf("Advance(1s) fired %d timers, want 0", got)
	}
	if got := c.Advance(time.Second); got != 1 {
		t.Fatalf("Advance to 2s fired %d timers, want 1", got)
	}
	if at := <-a.C(); at.Sub(t0) != 2*time.Second {
		t.Fatalf("timer fired with time +%v, want +2s", at.Sub(t0))
	}
	if a.Stop() {
		t.Fatal("Stop of a fired timer reported true")
	}
	if !b.Stop() {
		t.Fatal("Stop of an armed timer reported false")
	}
	if got := c.Advance(time.Hour); got != 0 {
		t.Fatalf("a stopped timer fired")
	}
	if got := c.Now().Sub(t0); got != time.Hour+2*time.Second {
		t.Fatalf("Now moved by %v", got)
	}
	if !hasMonotonic(c.Now()) {
		t.Fatal("Now lost its monotonic reading after Advance")
	}

	// BlockUntilTimers wakes up when another goroutine arms a timer.
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.NewTimer(time.Minute)
	}()
	c.BlockUntilTimers(1)
	c.BlockUntilTimerAt(c.Now().Add(time.Minute))
	<-done
}

// peek returns the engine's current token if it is valid, without ever
// fetching (tests only: production code asks Get).
func peek(e *tokenEngine) *accessToken {
	if t := e.cur.Load(); t.Valid(e.clock.Now()) {
		return t
	}
	return nil
}
