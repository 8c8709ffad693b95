package deskoauth

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// A scriptable token endpoint, for the tests that need an answer the Desko
// stand-in (internal/deskotest) does not give, or a count of the requests
// that reached it.

// responder answers the n-th (1-based) token request.
type responder func(w http.ResponseWriter, r *http.Request, n int64)

// okToken issues opaque tokens "tok-<n>" that live expiresIn seconds.
func okToken(expiresIn int) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":%d,"access_token":"tok-%d"}`, expiresIn, n)
	}
}

// answer always gives the same answer.
func answer(status int, contentType, body string) responder {
	return func(w http.ResponseWriter, r *http.Request, n int64) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// tokenServer is a token endpoint that answers with respond and counts its
// requests.
type tokenServer struct {
	*httptest.Server
	respond  responder
	requests atomic.Int64
	arrived  chan int64 // the number of every request, as it arrives
}

func newTokenServer(t testing.TB, r responder) *tokenServer {
	s := &tokenServer{respond: r, arrived: make(chan int64, 4096)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.requests.Add(1)
		select {
		case s.arrived <- n:
		default:
		}
		s.respond(w, r, n)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *tokenServer) tokenURL() string { return s.URL + deskotest.TokenPath }

func (s *tokenServer) count() int64 { return s.requests.Load() }
