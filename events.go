package deskoauth

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// This file connects a token source to Caddy's events app: the events a
// source emits, and the observer that feeds them and the metrics.

// The events a token source emits through Caddy's events app, with data
// "source" (the source label), "result" (the token request's outcome) and
// "took_ms". They never carry a secret or a token.
const (
	// EventTokenObtained: a token request succeeded.
	EventTokenObtained = "desko_auth_token_obtained"
	// EventRefreshFailed: a token request failed for a transient reason
	// (network, timeout, 5xx, 429) or got an unusable answer.
	EventRefreshFailed = "desko_auth_refresh_failed"
	// EventCredentialsRejected: the token endpoint refused the credentials.
	EventCredentialsRejected = "desko_auth_credentials_rejected"
)

// emitter is a config's events app and the context to emit with.
type emitter struct {
	app *caddyevents.App
	ctx caddy.Context
}

// sourceObserver is a source's engine Observer: it counts into the metrics
// and emits events through the newest config's events app.
type sourceObserver struct {
	*sourceMetrics
	label string
	emit  atomic.Pointer[emitter]
}

// useEvents makes the observer emit through ctx's events app (which the
// http app loads): each Provision calls it, so the newest config's app is
// used. Without an events app (a bare context) there are no events.
func (o *sourceObserver) useEvents(ctx caddy.Context) error {
	app, err := ctx.AppIfConfigured("events")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil
	}
	if err != nil {
		return err
	}
	o.emit.Store(&emitter{app: app.(*caddyevents.App), ctx: ctx})
	return nil
}

// FetchDone implements Observer: metrics, then an event. Event handlers
// run in a goroutine of their own, so that a slow one cannot hold up the
// token source.
func (o *sourceObserver) FetchDone(result string, took time.Duration) {
	o.sourceMetrics.FetchDone(result, took)
	em := o.emit.Load()
	if em == nil {
		return
	}
	name := EventRefreshFailed
	switch result {
	case "ok":
		name = EventTokenObtained
	case kindRejected.String():
		name = EventCredentialsRejected
	}
	if !em.app.ShouldEmit(name) {
		return
	}
	data := map[string]any{"source": o.label, "result": result, "took_ms": took.Milliseconds()}
	go em.app.Emit(em.ctx, name, data)
}
