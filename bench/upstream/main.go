// Command upstream is the small API that bench/run.sh puts behind Caddy.
// It answers a small JSON body to requests that carry an acceptable bearer
// token and 401 to the others, and counts both. It listens on loopback only.
//
// A token is acceptable when the request has exactly one Authorization
// header of the form "Bearer <token>" and <token> is either
//
//   - exactly the -static-token value (what the B configuration's header_up
//     sends), or
//   - JWT-shaped (three non-empty base64url parts) with a payload whose
//     "sub" is -client-id and whose "exp" is in the future, as the Desko
//     stand-in issues them (what desko_auth sends in the A configuration).
//     The signature is not checked (the stand-in does not sign).
//
// Accepted header values are cached until their exp (checked against a
// clock updated every 100 ms), so in steady state the check costs the same
// for A and B: one map lookup on an immutable map, one integer compare and
// one atomic add. Only a token not seen before is decoded.
//
// GET /_upstream/stats answers the counters as JSON. POST /_upstream/upload
// (with an acceptable token) waits -upload-wait before it reads the body,
// then answers the number of bytes read: the memory bench's slow reader.
package main

import (
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// StatsPath answers the counters as JSON.
const StatsPath = "/_upstream/stats"

// UploadPath is the slow reader.
const UploadPath = "/_upstream/upload"

// uploadWait is how long UploadPath waits before it reads the body.
var uploadWait = flag.Duration("upload-wait", 3*time.Second, "how long "+UploadPath+" waits before reading the body")

// maxCache bounds the number of cached header values; past it the cache
// starts again from the static token.
const maxCache = 64

type entry struct {
	static bool
	exp    int64 // unix seconds; math.MaxInt64 for the static token
}

type upstream struct {
	clientID string
	static   string // full header value, "Bearer <token>"

	cache atomic.Pointer[map[string]entry] // immutable; replaced on a miss
	mu    sync.Mutex                       // serialises cache replacements
	now   atomic.Int64                     // unix seconds, updated every 100 ms

	staticOK  atomic.Int64
	jwtOK     atomic.Int64
	rejected  atomic.Int64
	expired   atomic.Int64 // rejected because exp had passed
	newTokens atomic.Int64 // distinct JWTs accepted
}

var okBody = []byte(`{"ok":true,"data":[{"id":1,"name":"Sala 1","capacity":8},{"id":2,"name":"Sala 2","capacity":4}]}` + "\n")

var unauthorizedBody = []byte(`{"error":401,"id":"upstream","message":"Unauthenticated."}` + "\n")

func newUpstream(clientID, staticToken string) *upstream {
	u := &upstream{clientID: clientID, static: "Bearer " + staticToken}
	m := map[string]entry{u.static: {static: true, exp: 1<<63 - 1}}
	u.cache.Store(&m)
	u.now.Store(time.Now().Unix())
	go func() {
		for t := range time.Tick(100 * time.Millisecond) {
			u.now.Store(t.Unix())
		}
	}()
	return u
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == StatsPath {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{
			"static_ok":  u.staticOK.Load(),
			"jwt_ok":     u.jwtOK.Load(),
			"rejected":   u.rejected.Load(),
			"expired":    u.expired.Load(),
			"new_tokens": u.newTokens.Load(),
		})
		return
	}
	auth := r.Header["Authorization"]
	if len(auth) != 1 || !u.accept(auth[0]) {
		u.rejected.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write(unauthorizedBody)
		return
	}
	if r.URL.Path == UploadPath {
		time.Sleep(*uploadWait)
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(okBody)
}

// accept reports whether the header value v carries an acceptable token,
// and counts it.
func (u *upstream) accept(v string) bool {
	e, ok := (*u.cache.Load())[v]
	if !ok {
		if e, ok = u.check(v); !ok {
			return false
		}
	}
	if e.exp <= u.now.Load() {
		u.expired.Add(1)
		return false
	}
	if e.static {
		u.staticOK.Add(1)
	} else {
		u.jwtOK.Add(1)
	}
	return true
}

// check decodes a header value not seen before and caches it if it is an
// acceptable JWT.
func (u *upstream) check(v string) (entry, bool) {
	tok, ok := strings.CutPrefix(v, "Bearer ")
	if !ok {
		return entry{}, false
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return entry{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return entry{}, false
	}
	var claims struct {
		Sub string `json:"sub"`
		Exp int64  `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Sub != u.clientID || claims.Exp <= 0 {
		return entry{}, false
	}
	e := entry{exp: claims.Exp}
	if e.exp <= u.now.Load() {
		return e, true // counted as expired by accept; not cached
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	old := *u.cache.Load()
	if _, seen := old[v]; seen {
		return e, true
	}
	m := make(map[string]entry, len(old)+1)
	if len(old) < maxCache {
		now := u.now.Load()
		for k, x := range old {
			if x.exp > now {
				m[k] = x
			}
		}
	} else {
		m[u.static] = old[u.static]
	}
	m[v] = e
	u.cache.Store(&m)
	u.newTokens.Add(1)
	return e, true
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18083", "loopback address to listen on")
	clientID := flag.String("client-id", "bench-client", `the "sub" a JWT must carry`)
	static := flag.String("static-token", "", "the fixed token the static configuration sends (required)")
	flag.Parse()
	if *static == "" {
		log.Fatal("-static-token is required")
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("-addr: %v", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		log.Fatalf("-addr must be a loopback address, got %q", host)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	// "localhost" could resolve to anything: check what was bound.
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		log.Fatalf("refusing to serve on non-loopback %s", ln.Addr())
	}
	log.Printf("bench upstream on http://%s/ (stats at %s)", ln.Addr(), StatsPath)
	srv := &http.Server{Handler: newUpstream(*clientID, *static), ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.Serve(ln))
}
