package deskoauth

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Unit tests of the kept body: memory follows the bytes, release never
// waits for the client, rewind waits for a read in progress and keeps its
// bytes, and the token header never survives in the trailers.

// stallingBody is a client body whose reads wait for the test: each Read
// announces itself on entered, then returns what arrives on feed (io.EOF
// once feed is closed).
type stallingBody struct {
	entered chan struct{}
	feed    chan string
}

func newStallingBody() *stallingBody {
	return &stallingBody{entered: make(chan struct{}, 1), feed: make(chan string)}
}

func (s *stallingBody) Read(p []byte) (int, error) {
	s.entered <- struct{}{}
	chunk, ok := <-s.feed
	if !ok {
		return 0, io.EOF
	}
	return copy(p, chunk), nil
}

func (s *stallingBody) Close() error { return nil }

func TestReplayBodyMemoryFollowsTheBytes(t *testing.T) {
	base := replayMemory.used.Load()
	const limit = MaxReplayBodyLimit // as a forged Content-Length would make it
	b := newReplayBody(io.NopCloser(strings.NewReader(strings.Repeat("x", 100<<10))), limit, tokenTrailers{})
	if used := replayMemory.used.Load() - base; used != 0 {
		t.Fatalf("%d bytes reserved before a byte was read", used)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal(err)
	}
	if used := replayMemory.used.Load() - base; used != replayChunk {
		t.Errorf("3 bytes read of a body allowed %d: %d bytes reserved, want one chunk (%d)", limit, used, replayChunk)
	}
	rest, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	read := int64(len(buf) + len(rest))
	if used := replayMemory.used.Load() - base; used < read || used > read+replayChunk {
		t.Errorf("%d bytes read: %d reserved, want between what was read and one chunk more", read, used)
	}
	replay, ok := b.rewind()
	if !ok {
		t.Fatal("a body within its limit and the budget was not kept")
	}
	again, _ := io.ReadAll(replay)
	if string(again) != strings.Repeat("x", 100<<10) {
		t.Errorf("the replay read %d bytes, want the %d read first", len(again), read)
	}
	b.release()
	if used := replayMemory.used.Load() - base; used != 0 {
		t.Errorf("%d bytes still reserved after release", used)
	}
}

// A known length caps the first chunk: a 1,000-byte body reserves 1,000.
func TestReplayBodyKnownLengthChunk(t *testing.T) {
	base := replayMemory.used.Load()
	b := newReplayBody(io.NopCloser(strings.NewReader(strings.Repeat("y", 1000))), 1000, tokenTrailers{})
	defer b.release()
	if _, err := io.ReadAll(b); err != nil {
		t.Fatal(err)
	}
	if used := replayMemory.used.Load() - base; used != 1000 {
		t.Errorf("a 1,000-byte body kept in %d reserved bytes, want 1000", used)
	}
}

// release and skippedForBudget return while the first attempt's read waits
// for a client that sends nothing; what arrives afterwards is forwarded
// and not kept.
func TestReplayBodyReleaseNeverWaitsForTheClient(t *testing.T) {
	base := replayMemory.used.Load()
	src := newStallingBody()
	b := newReplayBody(src, 1<<20, tokenTrailers{})
	read := make(chan string, 1)
	go func() {
		p := make([]byte, 64)
		n, _ := b.Read(p)
		read <- string(p[:n])
	}()
	waitChan(t, src.entered, "the read to wait for the client")
	done := make(chan bool, 1)
	go func() {
		b.release()
		done <- b.skippedForBudget()
	}()
	if waitChan(t, done, "release while a read waits for the client") {
		t.Error("skippedForBudget after a plain release")
	}
	src.feed <- "late"
	if got := waitChan(t, read, "the read to return"); got != "late" {
		t.Errorf("the read returned %q, want the client's bytes", got)
	}
	if used := replayMemory.used.Load() - base; used != 0 {
		t.Errorf("%d bytes reserved for bytes read after release", used)
	}
	if _, ok := b.rewind(); ok {
		t.Error("a released body can still be replayed")
	}
}

// rewind waits for the first attempt's read in progress: its bytes are part
// of the body and the replay sends them; the first attempt's next read
// fails without touching the client's body.
func TestReplayBodyRewindKeepsTheReadInProgress(t *testing.T) {
	src := newStallingBody()
	b := newReplayBody(src, 1<<20, tokenTrailers{})
	defer b.release()
	first := make(chan string, 1)
	go func() {
		p := make([]byte, 64)
		n, _ := b.Read(p)
		first <- string(p[:n])
	}()
	waitChan(t, src.entered, "the first attempt's read to wait for the client")
	rewound := make(chan io.Reader, 1)
	go func() {
		r, ok := b.rewind()
		if !ok {
			r = nil
		}
		rewound <- r
	}()
	src.feed <- "in flight|"
	if got := waitChan(t, first, "the read in progress"); got != "in flight|" {
		t.Fatalf("the first attempt read %q", got)
	}
	replay := waitChan(t, rewound, "rewind after the read in progress")
	if replay == nil {
		t.Fatal("rewind: the body was not kept")
	}
	if _, err := b.Read(make([]byte, 8)); err != errBodyDetached {
		t.Errorf("the first attempt's read after rewind: %v, want errBodyDetached", err)
	}
	go func() {
		<-src.entered
		src.feed <- "rest"
		<-src.entered
		close(src.feed)
	}()
	got, err := io.ReadAll(replay)
	if err != nil || string(got) != "in flight|rest" {
		t.Errorf("the replay read %q (%v), want the kept bytes then the rest", got, err)
	}
}

// chunkedRequest parses a chunked HTTP/1.1 request with net/http's own
// server-side reader: its body merges the trailers into r.Trailer at EOF,
// as the server does for Caddy.
func chunkedRequest(t *testing.T, announce string, trailers ...string) *http.Request {
	t.Helper()
	raw := "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: " + announce + "\r\n\r\n3\r\nabc\r\n0\r\n" +
		strings.Join(trailers, "\r\n") + "\r\n\r\n"
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	// Handlers get a copy, as from Caddy's server (WithContext): the
	// Trailer map is shared.
	return r.WithContext(context.Background())
}

// The token header is taken out of the trailers when they are announced
// and again at the body's end, in any spelling; other trailers pass.
func TestGuardTrailers(t *testing.T) {
	h := &binding{header: "Authorization"}
	for _, kept := range []bool{false, true} {
		r := chunkedRequest(t, "authorization, X-Sum", "AUTHORIZATION: Basic smuggled", "X-Sum: 1", "authorization: again")
		if _, ok := r.Trailer["Authorization"]; !ok {
			t.Fatal("net/http did not announce the trailer: the test proves nothing")
		}
		if kept {
			r.Body = newReplayBody(r.Body, 1<<20, tokenTrailers{r: r, name: h.header})
			defer r.Body.(*replayBody).release()
		}
		h.guardTrailers(r, kept)
		if _, ok := r.Trailer["Authorization"]; ok {
			t.Errorf("kept %v: Authorization still announced", kept)
		}
		if body, err := io.ReadAll(r.Body); err != nil || string(body) != "abc" {
			t.Fatalf("kept %v: body %q (%v)", kept, body, err)
		}
		for k, v := range r.Trailer {
			if strings.EqualFold(k, "Authorization") {
				t.Errorf("kept %v: trailer %s = %q at the body's end", kept, k, v)
			}
		}
		if v := r.Trailer.Get("X-Sum"); v != "1" {
			t.Errorf("kept %v: X-Sum = %q, want the client's trailer", kept, v)
		}
	}
}

// The announcement in a Trailer header field (a request that is not
// chunked keeps it) loses the token header's name; a request without a
// body or trailers is left as it is.
func TestGuardTrailersAnnouncementAndNoBody(t *testing.T) {
	h := &binding{header: "X-Custom"}
	r, _ := http.NewRequest("POST", "http://x/", strings.NewReader("abc"))
	r.Header["Trailer"] = []string{"x-custom, X-Sum", "X-CUSTOM"}
	body := r.Body
	h.guardTrailers(r, false)
	if got := r.Header["Trailer"]; len(got) != 1 || strings.TrimSpace(got[0]) != "X-Sum" {
		t.Errorf("Trailer header %q, want X-Sum only", got)
	}
	if r.Body != body {
		t.Error("a body of known length with no Trailer map was wrapped")
	}
	g, _ := http.NewRequest("GET", "http://x/", nil)
	if mayCarryTrailers(g) {
		t.Error("a GET without a body or trailers is guarded: the default path would pay for it")
	}
}
