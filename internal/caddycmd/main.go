// Command caddycmd is Caddy v2 with the standard modules and desko_auth:
// the same program `xcaddy build --with github.com/deskoproxy/caddy-desko-auth`
// produces. Tests that need real Caddy processes (the fleet test) build it
// with `go build`, which needs no xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/deskoproxy/caddy-desko-auth"
)

func main() {
	caddycmd.Main()
}
