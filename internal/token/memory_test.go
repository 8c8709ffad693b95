package token

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// A source that never fails holds no scrubber: the index of its secrets'
// forms (some 16 KiB) is built at the first failure it has to describe. A
// block of many tenants holds one source per tenant, and most never fail.

// memorySecret is the n-th source's secret: random-looking, 32 bytes.
func memorySecret(n int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "memory test secret %d", n))
	return base64.RawURLEncoding.EncodeToString(sum[:24])
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Sources with a token, each with its own secret, hold less than 8 KiB
// each (a scrubber built at New took more than 16 KiB).
func TestSourceHeldMemory(t *testing.T) {
	srv := newTokenServer(t, okToken(3600))
	const n = 400
	srcs := make([]*Source, n)
	before := heapInUse()
	for i := range srcs {
		srcs[i] = newTestSource(t, srv.tokenURL(), func(c *Config) {
			static(c).ClientID = fmt.Sprintf("memory-client-%d", i)
			static(c).ClientSecret = memorySecret(i)
		})
		mustGet(t, srcs[i])
	}
	after := heapInUse()
	per := (int64(after) - int64(before)) / n
	t.Logf("%d sources with a token: %d bytes each", n, per)
	if per > 8<<10 {
		t.Errorf("a source with a token holds %d bytes, want at most 8 KiB", per)
	}
	for _, s := range srcs {
		if s.scrub.Load().sc != nil {
			t.Fatal("a source that never failed built its scrubber")
		}
	}
	runtime.KeepAlive(srcs)
}

// The scrubber built at the first failure scrubs the secret from the
// error and from any text given to Scrub.
func TestSourceScrubberBuiltAtFirstFailure(t *testing.T) {
	srv := newTokenServer(t, echoSecret(400, "application/json", func(secret string) string {
		return `{"error":400,"message":"bad client ` + secret + `"}`
	}))
	s := newTestSource(t, srv.tokenURL())
	c := static(&s.cfg)
	old := c.ClientSecret
	te := mustGetErr(t, s)
	if s.scrub.Load().sc == nil {
		t.Fatal("no scrubber after a failure")
	}
	if leaksSecret(te.Error()) {
		t.Errorf("the error leaks the secret: %s", te.Error())
	}
	if msg := s.Scrub("was " + old + " then"); strings.Contains(msg, old) {
		t.Errorf("Scrub left the secret: %s", msg)
	}
}
