// Command desko-standin runs the Desko stand-in on a loopback address: a
// token endpoint in Desko's format and an echo API that accepts only the
// tokens it issued. It is for the offline demo and the load benches.
//
// With -clients-dir, the token endpoint also accepts every client of a
// folder laid out as desko_auth's credentials_dir
// (<dir>/<tenant>/client_id, <dir>/<tenant>/client_secret), read on
// demand: bench/tenants.sh gives it the same folder as Caddy.
//
// Besides the stand-in's paths (deskotest) it answers two control paths,
// for scripts (bench/attack.sh), to POST only and only from a loopback
// peer (the listener is loopback-only anyway); both answer 204:
//
//   - POST /_standin/revoke revokes every token issued so far: a genuine
//     revocation (deskotest's RevokeAll).
//   - POST /_standin/token-delay?d=5s makes the token endpoint wait that
//     long before answering from now on (-token-delay at start).
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

// The control paths.
const (
	RevokePath     = "/_standin/revoke"
	TokenDelayPath = "/_standin/token-delay"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9180", "loopback address to listen on")
	id := flag.String("client-id", "demo-client", "client ID the token endpoint accepts")
	secret := flag.String("client-secret", "demo-secret", "client secret the token endpoint accepts")
	ttl := flag.Duration("ttl", time.Hour, "lifetime of issued tokens")
	revoke := flag.Bool("revoke-previous", false, "a new token revokes all earlier ones")
	delay := flag.Duration("token-delay", 0, "how long the token endpoint waits before answering")
	denied := flag.String("denied-challenge", deskotest.InvalidTokenChallenge,
		"WWW-Authenticate of the 401s under "+deskotest.DeniedPrefix+` (a path that refuses any token); "" sends none`)
	clientsDir := flag.String("clients-dir", "", "also accept every client of this folder: <dir>/<tenant>/client_id and client_secret, read on demand")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("-addr: %v", err)
	}
	if !loopback(host) {
		log.Fatalf("-addr must be a loopback address, got %q", host)
	}
	if *delay < 0 {
		log.Fatalf("-token-delay must not be negative")
	}
	s := deskotest.New(*id, *secret, *ttl)
	s.SetRevokePrevious(*revoke)
	s.SetDelay(*delay)
	s.SetDeniedChallenge(*denied)
	if *clientsDir != "" {
		if err := s.SetClientsDir(*clientsDir); err != nil {
			log.Fatalf("-clients-dir: %v", err)
		}
	}
	log.Printf("desko stand-in: token endpoint http://%s%s (delay %v), API http://%s/, control POST http://%s%s",
		*addr, deskotest.TokenPath, *delay, *addr, *addr, RevokePath)
	srv := &http.Server{Addr: *addr, Handler: control(s), ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// control answers the control paths and hands everything else to the
// stand-in.
func control(s *deskotest.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != RevokePath && r.URL.Path != TokenDelayPath {
			s.ServeHTTP(w, r)
			return
		}
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil || !loopback(host) {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		switch r.URL.Path {
		case RevokePath:
			s.RevokeAll()
			log.Printf("control: every token issued so far is revoked")
		case TokenDelayPath:
			d, err := time.ParseDuration(r.URL.Query().Get("d"))
			if err != nil || d < 0 {
				http.Error(w, "d must be a duration ≥ 0, like 5s", http.StatusBadRequest)
				return
			}
			s.SetDelay(d)
			log.Printf("control: the token endpoint waits %v", d)
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// loopback reports whether host is localhost or a loopback IP address.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
