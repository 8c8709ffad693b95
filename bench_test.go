package deskoauth

// Benchmarks for issue 5. They assert no timings: run them with
//
//	go test -run XXX -bench . -benchmem -count 5 .
//
// and see bench/BENCHMARKS.md for results and the end-to-end load comparison
// (bench/run.sh).

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

const (
	benchClientID     = "bench-client"
	benchClientSecret = "bench-secret"
)

// benchWriter is a ResponseWriter that keeps nothing, so the benchmarks
// measure the handler and not a recorder. Its header map holds what Caddy's
// server puts there before any handler runs (Server: Caddy), since the
// replay path behaves differently when the map is not empty.
type benchWriter struct {
	hdr    http.Header
	status int
}

func newBenchWriter() *benchWriter {
	return &benchWriter{hdr: http.Header{"Server": caddyServerHeader}}
}

var caddyServerHeader = []string{"Caddy"}

func (w *benchWriter) Header() http.Header         { return w.hdr }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(status int)      { w.status = status }

// The next handlers. They are package-level values so that no closure is
// allocated per call.
var (
	benchNextNoop caddyhttp.Handler = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return nil
	})
	benchBody                      = []byte(`{"ok":true}`)
	benchNext200 caddyhttp.Handler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusOK)
		_, err := w.Write(benchBody)
		return err
	})
)

// newBenchHandler provisions a Handler as Caddy would (Provision with a
// bare caddy.Context) against an httptest Desko stand-in, and waits until
// it holds a token and its header cache is warm. Handlers with the same
// credentials share one engine, as in Caddy.
func newBenchHandler(b *testing.B, replay bool) *Handler {
	b.Helper()
	desko := deskotest.New(benchClientID, benchClientSecret, time.Hour)
	srv := httptest.NewServer(desko)
	b.Cleanup(srv.Close)
	h := &Handler{
		ClientID:            benchClientID,
		ClientSecret:        benchClientSecret,
		Scopes:              []string{"organization.show"},
		TokenURL:            srv.URL + deskotest.TokenPath,
		RetryOnUnauthorized: &replay,
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	// Without a Caddy config, Provision logs through a development logger
	// on stderr (a warning about the literal secret, the first token...).
	// Loggers made now keep the writer they were given: send them nowhere.
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = devNull
	err = h.Provision(ctx)
	os.Stderr = stderr
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = h.Cleanup()
		_ = devNull.Close()
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	tok, err := h.src.engine.Get(wctx)
	if err != nil {
		b.Fatal(err)
	}
	// One request to fill the header cache, and check the result.
	r := httptest.NewRequest(http.MethodGet, "/v1.1/organizations", nil)
	if err := h.ServeHTTP(newBenchWriter(), r, benchNextNoop); err != nil {
		b.Fatal(err)
	}
	if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+tok.Value {
		b.Fatalf("Authorization = %q, want the engine's token", got)
	}
	return h
}

// BenchmarkServeHTTP measures the hot path: a warm token, a GET without a
// body, a next handler that does nothing (noop) or answers 200 with a small
// body (write200). "static" is the lower bound: a handler that sets a
// constant Authorization value, as reverse_proxy's header_up would.
func BenchmarkServeHTTP(b *testing.B) {
	type variant struct {
		name   string
		replay bool
		static bool
	}
	variants := []variant{
		{name: "replay=on", replay: true},
		{name: "replay=off", replay: false},
		{name: "static", static: true},
	}
	nexts := []struct {
		name string
		h    caddyhttp.Handler
	}{{"noop", benchNextNoop}, {"write200", benchNext200}}

	for _, v := range variants {
		var serve func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error
		if v.static {
			const fixed = "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjk5OTk5OTk5OTl9.c3RhdGlj"
			serve = func(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
				r.Header["Authorization"] = []string{fixed}
				return next.ServeHTTP(w, r)
			}
		} else {
			serve = newBenchHandler(b, v.replay).ServeHTTP
		}
		for _, n := range nexts {
			b.Run(fmt.Sprintf("%s/next=%s/serial", v.name, n.name), func(b *testing.B) {
				w := newBenchWriter()
				r := httptest.NewRequest(http.MethodGet, "/v1.1/organizations", nil)
				r.Header.Set("Authorization", "Bearer from-the-client")
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if err := serve(w, r, n.h); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("%s/next=%s/parallel", v.name, n.name), func(b *testing.B) {
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					w := newBenchWriter()
					r := httptest.NewRequest(http.MethodGet, "/v1.1/organizations", nil)
					r.Header.Set("Authorization", "Bearer from-the-client")
					for pb.Next() {
						if err := serve(w, r, n.h); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
