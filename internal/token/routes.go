package token

import (
	"sync"
	"time"
)

// This file is a source's memory of the routes that refuse tokens that
// work: a route (a method, host and path) that answered 401 to a replay
// with a fresh token refuses for reasons of its own (a resource the
// credentials may not see, a path guarded by something else) — unless
// that token was revoked between its fetch and the replay. So the route
// remembers the token it refused, and a later refusal of that same token
// there costs nothing only if the token has worked elsewhere since the
// route's previous refusal: a dead token works nowhere, and is replaced as
// any other. A route that refuses the next token too costs one token
// request to learn it again.

// Route memory limits.
const (
	// routeMemory is how long a route is remembered after its last
	// refusal.
	routeMemory = 10 * time.Minute
	// maxRoutes bounds the memory; past it the route remembered for the
	// shortest time left is forgotten first.
	maxRoutes = 1024
)

// routes remembers the routes that refused fresh tokens. Its zero value is
// empty and ready; it is safe for concurrent use.
type routes struct {
	mu sync.Mutex
	m  map[string]*routeRecord
}

// routeRecord is a route that refused tok when it was fresh.
type routeRecord struct {
	tok   *Token
	wins  int64 // tok's wins at the route's last refusal
	until time.Time
}

// refuses reports whether the route's refusal of tok says nothing about
// tok: the route refused tok when it was fresh, and tok has worked since
// the route's previous refusal.
func (rs *routes) refuses(route string, tok *Token) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r, ok := rs.m[route]
	now := time.Now()
	switch {
	case !ok:
		return false
	case !now.Before(r.until):
		delete(rs.m, route)
		return false
	case r.tok != tok:
		return false
	}
	wins := tok.wins.Load()
	worked := wins > r.wins
	r.wins, r.until = wins, now.Add(routeMemory)
	return worked
}

// refusedFresh records that route refused tok on a replay (tok was newer
// than the token first refused there), and reports whether the route is
// new to the memory.
func (rs *routes) refusedFresh(route string, tok *Token) bool {
	tok.watched.Store(true)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	now := time.Now()
	if rs.m == nil {
		rs.m = map[string]*routeRecord{}
	}
	r, known := rs.m[route]
	if !known || !now.Before(r.until) {
		rs.makeRoom(now)
		r = &routeRecord{}
		rs.m[route] = r
		known = false
	}
	r.tok, r.wins, r.until = tok, tok.wins.Load(), now.Add(routeMemory)
	return !known
}

// makeRoom forgets expired routes, and the one with the shortest time left
// if that is not enough; rs.mu is held.
func (rs *routes) makeRoom(now time.Time) {
	if len(rs.m) < maxRoutes {
		return
	}
	var oldest string
	for k, r := range rs.m {
		if !now.Before(r.until) {
			delete(rs.m, k)
			continue
		}
		if oldest == "" || r.until.Before(rs.m[oldest].until) {
			oldest = k
		}
	}
	if len(rs.m) >= maxRoutes {
		delete(rs.m, oldest)
	}
}
