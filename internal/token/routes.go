package token

import (
	"sync"
	"time"
)

// This file is a source's memory of the routes that refuse fresh tokens
// too: a route (a method, host and path) that answered 401 to a replay
// with a token newer than the one it first refused refuses for reasons of
// its own (a resource the credentials may not see, a path guarded by
// something else), and its 401s say nothing about the token.

// Route memory limits.
const (
	// routeStrikes is how many replays with a fresh token a route must
	// refuse before its 401s stop counting: two, so that a token revoked
	// between a 401 and its replay cannot mark a route on its own.
	routeStrikes = 2
	// routeMemory is how long a route is remembered after its last strike.
	routeMemory = 10 * time.Minute
	// maxRoutes bounds the memory; past it the route remembered for the
	// shortest time left is forgotten first.
	maxRoutes = 1024
)

// routes remembers routes that refused fresh tokens. Its zero value is
// empty and ready; it is safe for concurrent use.
type routes struct {
	mu sync.Mutex
	m  map[string]*routeRecord
}

type routeRecord struct {
	strikes int
	until   time.Time
}

// refuses reports whether route has refused fresh tokens often enough that
// its 401s say nothing about the token.
func (rs *routes) refuses(route string) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	r, ok := rs.m[route]
	if !ok {
		return false
	}
	if !time.Now().Before(r.until) {
		delete(rs.m, route)
		return false
	}
	return r.strikes >= routeStrikes
}

// refusedFresh records that route refused a fresh token, and reports
// whether that strike made it a route that refuses (the first time).
func (rs *routes) refusedFresh(route string) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	now := time.Now()
	r, ok := rs.m[route]
	if !ok || !now.Before(r.until) {
		if rs.m == nil {
			rs.m = map[string]*routeRecord{}
		}
		rs.makeRoom(now)
		r = &routeRecord{}
		rs.m[route] = r
	}
	r.strikes++
	r.until = now.Add(routeMemory)
	return r.strikes == routeStrikes
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
