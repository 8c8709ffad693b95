package token

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// Endpoint paces the token requests to one token endpoint (a scheme, host
// and port) across every source that shares it: at most its limit in
// flight, the others waiting in the order they came, each within its own
// fetch timeout; and a pause the endpoint asked for (429 or 503 with
// Retry-After) holds every source, not only the one that got it. A source
// with a valid token keeps using it meanwhile. It is safe for concurrent
// use; share one per endpoint through Config.Endpoint.
type Endpoint struct {
	mu          sync.Mutex
	limit       int
	active      int
	waiting     list.List // of chan struct{}, closed when it is the waiter's turn
	pausedUntil time.Time
}

// DefaultEndpointLimit is how many token requests may be in flight to one
// endpoint by default.
const DefaultEndpointLimit = 8

// NewEndpoint returns an Endpoint that lets limit token requests run at
// once (DefaultEndpointLimit if limit < 1).
func NewEndpoint(limit int) *Endpoint {
	e := &Endpoint{}
	e.SetLimit(limit)
	return e
}

// SetLimit changes how many token requests may run at once
// (DefaultEndpointLimit if limit < 1); waiters are let in if it grew.
func (e *Endpoint) SetLimit(limit int) {
	if limit < 1 {
		limit = DefaultEndpointLimit
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.limit = limit
	e.admitLocked()
}

// Limit is how many token requests may run at once.
func (e *Endpoint) Limit() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.limit
}

// acquire waits for a turn, in order, until ctx ends.
func (e *Endpoint) acquire(ctx context.Context) error {
	e.mu.Lock()
	if e.active < e.limit && e.waiting.Len() == 0 {
		e.active++
		e.mu.Unlock()
		return nil
	}
	turn := make(chan struct{})
	el := e.waiting.PushBack(turn)
	e.mu.Unlock()
	select {
	case <-turn:
		return nil
	case <-ctx.Done():
		e.mu.Lock()
		defer e.mu.Unlock()
		select {
		case <-turn: // given a turn as ctx ended: hand it on
			e.active--
			e.admitLocked()
		default:
			e.waiting.Remove(el)
		}
		return ctx.Err()
	}
}

// release gives a turn back.
func (e *Endpoint) release() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active--
	e.admitLocked()
}

// admitLocked lets waiters in while there is room; e.mu is held.
func (e *Endpoint) admitLocked() {
	for e.active < e.limit && e.waiting.Len() > 0 {
		close(e.waiting.Remove(e.waiting.Front()).(chan struct{}))
		e.active++
	}
}

// pause holds every source's token requests until until.
func (e *Endpoint) pause(until time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if until.After(e.pausedUntil) {
		e.pausedUntil = until
	}
}

// pausedFor is how long the endpoint asked to be left alone from now, 0
// if it did not.
func (e *Endpoint) pausedFor(now time.Time) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return max(e.pausedUntil.Sub(now), 0)
}
