package deskoauth

import "time"

// This file is the engine's clock, so that tests can run refresh and
// backoff on a fake one.

// engineClock is the engine's source of time. Times it returns must carry a
// monotonic reading (as time.Now does) so that expiry arithmetic is immune to
// wall-clock jumps.
type engineClock interface {
	Now() time.Time
	NewTimer(d time.Duration) timer
}

// timer is the part of *time.Timer the engine uses.
type timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) timer {
	return realTimer{time.NewTimer(d)}
}

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }

func (t realTimer) Stop() bool { return t.t.Stop() }
