package token

// Benchmarks of the source. They assert no timings: run them with
//
//	go test -run XXX -bench . -benchmem -count 5 ./internal/token/
//
// and see bench/BENCHMARKS.md for results and the end-to-end load
// comparison (bench/run.sh).

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

const (
	benchClientID     = "bench-client"
	benchClientSecret = "bench-secret"
)

// benchConfig is a config for the Desko stand-in behind srv.
func benchConfig(srv *httptest.Server) Config {
	return Config{
		TokenURL:    srv.URL + deskotest.TokenPath,
		Credentials: &Static{ClientID: benchClientID, ClientSecret: benchClientSecret},
		Logger:      zap.NewNop(),
	}
}

// BenchmarkEngineGet is the source's share of the hot path: a warm Get.
func BenchmarkEngineGet(b *testing.B) {
	srv := httptest.NewServer(deskotest.New(benchClientID, benchClientSecret, time.Hour))
	defer srv.Close()
	s, err := New(benchConfig(srv))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Get(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Get(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Get(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkTokenCold starts N goroutines that all ask a new (cold) source
// for a token at once, against an httptest Desko stand-in on loopback. One
// op is one cold start: from releasing the N callers to all of them holding
// the token. Source creation, goroutine start and Close are outside the
// timer. tokenreqs/op is what the token endpoint counted; it must be 1.
func BenchmarkTokenCold(b *testing.B) {
	desko := deskotest.New(benchClientID, benchClientSecret, time.Hour)
	srv := httptest.NewServer(desko)
	defer srv.Close()
	cfg := benchConfig(srv)
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("goroutines=%d", n), func(b *testing.B) {
			ctx := context.Background()
			before := desko.TokenRequests()
			toks := make([]*Token, n)
			errs := make([]error, n)
			b.ReportAllocs()
			b.ResetTimer()
			ops := 0
			for b.Loop() {
				ops++
				b.StopTimer()
				s, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				start := make(chan struct{})
				var ready, done sync.WaitGroup
				ready.Add(n)
				done.Add(n)
				for i := range n {
					go func() {
						defer done.Done()
						ready.Done()
						<-start
						toks[i], errs[i] = s.Get(ctx)
					}()
				}
				ready.Wait()
				b.StartTimer()
				close(start)
				done.Wait()
				b.StopTimer()
				for i := range n {
					if errs[i] != nil {
						b.Fatal(errs[i])
					}
					if toks[i] != toks[0] {
						b.Fatalf("caller %d got a different token", i)
					}
				}
				_ = s.Close()
				b.StartTimer()
			}
			reqs := desko.TokenRequests() - before
			b.ReportMetric(float64(reqs)/float64(ops), "tokenreqs/op")
			if reqs != int64(ops) {
				b.Errorf("%d token requests for %d cold starts; want exactly one each", reqs, ops)
			}
		})
	}
}
