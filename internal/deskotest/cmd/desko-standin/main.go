// Command desko-standin runs the Desko stand-in on a loopback address: a
// token endpoint in Desko's format and an echo API that accepts only the
// tokens it issued. It is for the offline demo and the load benches.
//
// With -clients-dir, the token endpoint also accepts every client of a
// folder laid out as desko_auth's credentials_dir
// (<dir>/<tenant>/client_id, <dir>/<tenant>/client_secret), read on
// demand: bench/tenants.sh gives it the same folder as Caddy.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9180", "loopback address to listen on")
	id := flag.String("client-id", "demo-client", "client ID the token endpoint accepts")
	secret := flag.String("client-secret", "demo-secret", "client secret the token endpoint accepts")
	ttl := flag.Duration("ttl", time.Hour, "lifetime of issued tokens")
	revoke := flag.Bool("revoke-previous", false, "a new token revokes all earlier ones")
	clientsDir := flag.String("clients-dir", "", "also accept every client of this folder: <dir>/<tenant>/client_id and client_secret, read on demand")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("-addr: %v", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		log.Fatalf("-addr must be a loopback address, got %q", host)
	}
	s := deskotest.New(*id, *secret, *ttl)
	s.SetRevokePrevious(*revoke)
	if *clientsDir != "" {
		if err := s.SetClientsDir(*clientsDir); err != nil {
			log.Fatalf("-clients-dir: %v", err)
		}
	}
	log.Printf("desko stand-in: token endpoint http://%s%s, API http://%s/", *addr, deskotest.TokenPath, *addr)
	srv := &http.Server{Addr: *addr, Handler: s, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
