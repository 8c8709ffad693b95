package deskoauth

import (
	"net/http"
	"sync"
)

// This file watches the status of every proxied answer without buffering
// it, and holds back a small 401 answer while a replay may replace it.

// maxHeld401 is the largest 401 answer body held back for a replay; a
// larger one goes to the client as it comes, and is not replayed.
const maxHeld401 = 32 << 10

// watchWriter records the final status the next handler wrote. With hold
// set, a 401 answer (status, headers and up to maxHeld401 bytes of body) is
// held back instead of written, for the handler to replay the request or
// to send it with sendHeld. Any other answer, or a 401 that is let go,
// releases the body kept for a replay at once: there will be none, and the
// answer may take long to stream.
type watchWriter struct {
	http.ResponseWriter
	status int // the final status written, 0 if none yet
	hold   bool
	held   bool        // a 401 is being held back
	body   *replayBody // the body kept for a replay of this attempt, if any
	buf    []byte
}

var watchPool = sync.Pool{New: func() any { return new(watchWriter) }}

// newWatchWriter returns a pooled watcher over w; give it back with free.
func newWatchWriter(w http.ResponseWriter, hold bool) *watchWriter {
	ww := watchPool.Get().(*watchWriter)
	ww.ResponseWriter, ww.hold = w, hold
	return ww
}

// reset makes ww watch another attempt, holding nothing back: a held
// answer is dropped, and the kept body is the replay's (the handler
// releases it when the request is done).
func (ww *watchWriter) reset() {
	ww.status, ww.hold, ww.held, ww.body, ww.buf = 0, false, false, nil, ww.buf[:0]
}

// noReplay releases the kept body: the answer shows there will be no
// replay.
func (ww *watchWriter) noReplay() {
	if ww.body != nil {
		ww.body.release()
		ww.body = nil
	}
}

// free returns ww to the pool, dropping a large held buffer.
func (ww *watchWriter) free() {
	buf := ww.buf[:0]
	if cap(buf) > maxHeld401 {
		buf = nil
	}
	*ww = watchWriter{buf: buf}
	watchPool.Put(ww)
}

// WriteHeader records the final status; informational ones (1xx but 101)
// pass through unrecorded.
func (ww *watchWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		ww.ResponseWriter.WriteHeader(code)
		return
	}
	if ww.status != 0 {
		return // superfluous, as net/http would say
	}
	ww.status = code
	if code == http.StatusUnauthorized && ww.hold {
		ww.held = true
		return
	}
	ww.noReplay()
	ww.ResponseWriter.WriteHeader(code)
}

// Write holds back the body of a held 401 while it fits in maxHeld401;
// past that, it lets the held answer go and streams the rest.
func (ww *watchWriter) Write(p []byte) (int, error) {
	if ww.status == 0 {
		ww.WriteHeader(http.StatusOK)
	}
	if !ww.held {
		return ww.ResponseWriter.Write(p)
	}
	if len(ww.buf)+len(p) <= maxHeld401 {
		ww.buf = append(ww.buf, p...)
		return len(p), nil
	}
	if err := ww.sendHeld(); err != nil {
		return 0, err
	}
	return ww.ResponseWriter.Write(p)
}

// sendHeld writes the held 401 answer and stops holding.
func (ww *watchWriter) sendHeld() error {
	if !ww.held {
		return nil
	}
	ww.held, ww.hold = false, false
	ww.noReplay()
	ww.ResponseWriter.WriteHeader(http.StatusUnauthorized)
	if len(ww.buf) == 0 {
		return nil
	}
	_, err := ww.ResponseWriter.Write(ww.buf)
	ww.buf = ww.buf[:0]
	return err
}

// FlushError flushes unless a 401 is held back (http.ResponseController
// looks for it before unwrapping).
func (ww *watchWriter) FlushError() error {
	if ww.held {
		return nil
	}
	if ww.status == 0 {
		ww.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(ww.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the writer underneath (for
// hijacking an upgrade, deadlines, full duplex).
func (ww *watchWriter) Unwrap() http.ResponseWriter { return ww.ResponseWriter }

// Flush is FlushError for callers that look for http.Flusher.
func (ww *watchWriter) Flush() { _ = ww.FlushError() }
