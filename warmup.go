package deskoauth

import (
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file starts a source's first token request once its config runs,
// never during caddy validate or caddy adapt.

// warmUpPoll is how often a warm-up checks whether its config runs yet.
const warmUpPoll = 25 * time.Millisecond

// warmUpWaiters counts the warm-ups waiting for their config to run (for
// tests).
var warmUpWaiters atomic.Int64

// warmUpWhenRunning starts src's warm-up once the config provisioned with ctx
// is the running one, and gives up when ctx ends first. So `caddy
// validate`, `caddy adapt --validate` and a config that fails to start send
// no token request and write nothing to the shared storage. Caddy has no
// "validating" flag, but it makes a config the active one
// (caddy.ActiveContext) only once all its apps have started, and cancels a
// config's context when validation ends, when the config fails to start and
// when it is replaced. Polling is cheap (a read lock) and lasts only from
// Provision to the start of the servers.
func warmUpWhenRunning(ctx caddy.Context, src *token.Source) {
	defer warmUpWaiters.Add(-1)
	tick := time.NewTicker(warmUpPoll)
	defer tick.Stop()
	for {
		if ctx.Err() != nil {
			return
		}
		if isActiveConfig(ctx) {
			src.WarmUp()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// isActiveConfig reports whether ctx belongs to the running config. A
// module's context wraps its config's root context (the http app adds a
// value), so the two are told apart by their Done channel, which is the
// root's.
func isActiveConfig(ctx caddy.Context) bool {
	active := caddy.ActiveContext()
	return active.Context != nil && active.Done() == ctx.Done()
}
