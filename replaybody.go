package deskoauth

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// This file keeps request bodies for a replay after an upstream 401 within
// a process-wide memory budget, forwarding them while it keeps them.

// DefaultReplayMemory is the default process-wide budget for request bodies
// kept for a replay, shared by every credential set.
const DefaultReplayMemory = 32 << 20

// replayChunk is the allocation step of a kept body: memory is allocated,
// and reserved in the budget, at most this much ahead of the bytes that
// arrived, whatever the request's headers say.
const replayChunk = 32 << 10

// replayMemory is the process-wide budget of bytes kept for replays.
var replayMemory memoryBudget

func init() { replayMemory.limit.Store(DefaultReplayMemory) }

// replayMemorySettings holds the replay_memory of every provisioned handler
// that sets one; the budget's limit is the largest of them, or the default
// when none does. During a reload both configs' handlers count, until the
// old ones are cleaned up.
var replayMemorySettings = struct {
	sync.Mutex
	by map[*Handler]int64
}{by: map[*Handler]int64{}}

// setReplayMemory records h's setting (n < 0: none) and applies the limit.
func setReplayMemory(h *Handler, n int64) {
	s := &replayMemorySettings
	s.Lock()
	defer s.Unlock()
	if n < 0 {
		delete(s.by, h)
	} else {
		s.by[h] = n
	}
	limit := int64(DefaultReplayMemory)
	if len(s.by) > 0 {
		limit = 0
		for _, v := range s.by {
			limit = max(limit, v)
		}
	}
	replayMemory.limit.Store(limit)
}

// memoryBudget counts bytes reserved against a limit.
type memoryBudget struct {
	limit atomic.Int64
	used  atomic.Int64
}

// reserve takes n bytes from the budget if they fit.
func (m *memoryBudget) reserve(n int64) bool {
	if m.used.Add(n) > m.limit.Load() {
		m.used.Add(-n)
		return false
	}
	return true
}

func (m *memoryBudget) release(n int64) { m.used.Add(-n) }

// errBodyDetached is what the first attempt reads from a body after the
// replay took it over.
var errBodyDetached = errors.New("desko_auth: request body handed to the replay")

// replayBody forwards a request body and keeps a copy of what was read, so
// that a replay can send it again: the kept bytes, then whatever the first
// attempt left unread. Memory follows the bytes, never the headers: kept
// bytes go into chunks of at most replayChunk, each allocated and reserved
// in replayMemory when the bytes that fill it arrive, so a forged
// Content-Length costs nothing. When a body outgrows its limit or the
// budget, keeping stops, the memory is given back and the body can no
// longer be replayed; it is still forwarded in full.
//
// A transport may go on reading a body after its round trip returned.
// Every read of src by the first attempt happens under readMu, which only
// rewind also takes: the replay needs every byte, so it waits for a read
// in progress (whose bytes are kept), then detaches the first attempt,
// whose later reads fail and never touch src again. The kept state has a
// mutex of its own, held only briefly, so that release and
// skippedForBudget never wait for a client that sends nothing.
type replayBody struct {
	readMu   sync.Mutex // held across each read of src by the first attempt
	src      io.ReadCloser
	trailers tokenTrailers // strips the token header from the trailers at src's EOF
	detached bool          // under readMu: the replay took src over

	mu         sync.Mutex // guards what follows
	kept       [][]byte
	limit      int64 // the most bytes kept
	size       int64 // bytes kept so far
	reserved   int64 // bytes reserved in replayMemory
	keeping    bool
	overBudget bool // keeping stopped because the budget was spent
}

// newReplayBody wraps body for a replay of at most limit bytes (the
// body's length when it is known). It reserves and allocates nothing yet.
func newReplayBody(body io.ReadCloser, limit int64, trailers tokenTrailers) *replayBody {
	return &replayBody{src: body, trailers: trailers, limit: limit, keeping: true}
}

// Read reads from the client's body and keeps what it read.
func (b *replayBody) Read(p []byte) (int, error) {
	b.readMu.Lock()
	defer b.readMu.Unlock()
	if b.detached {
		return 0, errBodyDetached
	}
	n, err := b.readSrc(p)
	if n > 0 {
		b.mu.Lock()
		if b.keeping {
			b.keep(p[:n])
		}
		b.mu.Unlock()
	}
	return n, err
}

// readSrc reads from the client's body. At its end (where the server has
// just merged the client's trailers into the request) the token header is
// taken out of the trailers, before the reader above sees io.EOF.
func (b *replayBody) readSrc(p []byte) (int, error) {
	n, err := b.src.Read(p)
	if err == io.EOF {
		b.trailers.strip()
	}
	return n, err
}

// Close does not close the client's body: the server does that when the
// handler returns, and a replay may still need it.
func (b *replayBody) Close() error { return nil }

// keep appends p to the kept bytes; b.mu is held.
func (b *replayBody) keep(p []byte) {
	if b.size+int64(len(p)) > b.limit {
		b.drop(false)
		return
	}
	for len(p) > 0 {
		last := len(b.kept) - 1
		if last < 0 || len(b.kept[last]) == cap(b.kept[last]) {
			step := min(int64(replayChunk), b.limit-b.size)
			if !replayMemory.reserve(step) {
				b.drop(true)
				return
			}
			b.reserved += step
			b.kept = append(b.kept, make([]byte, 0, step))
			last++
		}
		c := b.kept[last]
		n := min(len(p), cap(c)-len(c))
		b.kept[last] = append(c, p[:n]...)
		b.size += int64(n)
		p = p[n:]
	}
}

// drop stops keeping and gives the memory back; b.mu is held.
func (b *replayBody) drop(overBudget bool) {
	b.keeping = false
	b.overBudget = b.overBudget || overBudget
	b.kept = nil
	replayMemory.release(b.reserved)
	b.reserved = 0
}

// rewind detaches the first attempt and returns the body for the replay:
// the kept bytes, then the rest of the client's body. ok is false when the
// body was not kept whole.
func (b *replayBody) rewind() (body io.ReadCloser, ok bool) {
	b.readMu.Lock() // wait for a read in progress: its bytes are kept
	b.detached = true
	b.readMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.keeping {
		return nil, false
	}
	readers := make([]io.Reader, 0, len(b.kept)+1)
	for _, c := range b.kept {
		readers = append(readers, bytes.NewReader(c))
	}
	return io.NopCloser(io.MultiReader(append(readers, replayTail{b})...)), true
}

// replayTail is the replay's way to the part of the client's body the
// first attempt left unread; only the replay reads src by then.
type replayTail struct{ b *replayBody }

func (t replayTail) Read(p []byte) (int, error) { return t.b.readSrc(p) }

// skippedForBudget reports whether the body could not be kept because the
// budget was spent.
func (b *replayBody) skippedForBudget() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.overBudget
}

// release stops keeping and gives the memory back: when the request is
// done, or as soon as the upstream's answer shows that there will be no
// replay. A first attempt still reading after that keeps nothing more.
func (b *replayBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.keeping {
		b.drop(false)
	}
}
