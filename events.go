package deskoauth

import (
	"errors"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file connects a token source to Caddy's events app: the events a
// source emits, through the newest config's events app.

// The events a token source emits through Caddy's events app, with data
// "source" (the source label), "result" (the token request's outcome) and
// "took_ms". They never carry a secret or a token.
const (
	// EventTokenObtained: a token request succeeded.
	EventTokenObtained = "desko_auth_token_obtained"
	// EventRefreshFailed: a token request failed for any reason but
	// refused credentials (its "result" is the kind: transient,
	// invalid_answer, tls, redirect, dns, connect).
	EventRefreshFailed = "desko_auth_refresh_failed"
	// EventCredentialsRefused: the token endpoint refused the credentials
	// (result "refused"); nothing else emits it.
	EventCredentialsRefused = "desko_auth_credentials_refused"
	// EventCredentialsChanged: a source picked up credentials that
	// changed in their files (data "source" only).
	EventCredentialsChanged = "desko_auth_credentials_changed"
)

// emitter is a config's events app and the context to emit with, whose
// ancestry is its own (withOwnAncestry).
type emitter struct {
	app *caddyevents.App
	ctx caddy.Context
}

// emitterRef is the events app a source emits through: the newest
// config's, or none.
type emitterRef struct{ p atomic.Pointer[emitter] }

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
	own, ok := withOwnAncestry(ctx)
	if !ok {
		ancestryWarning.Do(func() {
			ctx.Logger().Warn("events may name another module as their origin: this Caddy's caddy.Context has no " +
				"ancestry field of type []caddy.Module, so the module's context cannot be kept apart from its siblings'")
		})
	}
	o.emit.p.Store(&emitter{app: app.(*caddyevents.App), ctx: own})
	return nil
}

// moduleSliceType is the type of caddy.Context's unexported ancestry field.
var moduleSliceType = reflect.TypeFor[[]caddy.Module]()

// ancestryWarning makes the WARN of a caddy.Context without the expected
// ancestry field once per process.
var ancestryWarning sync.Once

// withOwnAncestry returns ctx with a private copy of its module ancestry
// (the modules that led to the one ctx provisions, that one last), so that
// ctx.Module() stays the module provisioned with it.
//
// Events need it. caddy.NewEvent takes the event's origin from
// ctx.Module(), the last slot of the ancestry slice. Caddy's
// LoadModuleByID appends each module of a list to its parent's ancestry:
// when that slice has room, the handlers of one route get ancestries that
// share one backing array, and the handler provisioned after desko_auth
// (reverse_proxy) overwrites the last slot of the context desko_auth kept
// from Provision. Its events then named reverse_proxy as their origin and
// missed subscriptions filtered by module. Caddy has no API that copies a
// context's ancestry, so this copies the unexported field, guarded: if
// caddy.Context has no field ancestry of type []caddy.Module, ctx is
// returned as it is and ok is false (events_test.go fails on such a Caddy).
func withOwnAncestry(ctx caddy.Context) (_ caddy.Context, ok bool) {
	f := reflect.ValueOf(&ctx).Elem().FieldByName("ancestry")
	if !f.IsValid() || f.Type() != moduleSliceType {
		return ctx, false
	}
	p := (*[]caddy.Module)(unsafe.Pointer(f.UnsafeAddr()))
	*p = slices.Clip(slices.Clone(*p))
	return ctx, true
}

// fetched emits the event of a token request's outcome. Event handlers run
// in a goroutine of their own, so that a slow one cannot hold up the token
// source. It does not ask the events app whether anything listens
// (App.ShouldEmit, new in Caddy v2.11.7): there is an emitter only when the
// config has an events app, and one event per token request costs nothing
// worth saving, while the module keeps building with older Caddy versions
// (see the support matrix in docs/development.md).
func (r *emitterRef) fetched(label string, err *token.Error, result string, took time.Duration) {
	em := r.p.Load()
	if em == nil {
		return
	}
	name := EventRefreshFailed
	switch {
	case err == nil:
		name = EventTokenObtained
	case err.Kind == token.KindRefused:
		name = EventCredentialsRefused
	}
	data := map[string]any{"source": label, "result": result, "took_ms": took.Milliseconds()}
	go em.app.Emit(em.ctx, name, data)
}

// credentialsChanged emits EventCredentialsChanged (without
// App.ShouldEmit, for the reason fetched gives).
func (r *emitterRef) credentialsChanged(label string) {
	if em := r.p.Load(); em != nil {
		go em.app.Emit(em.ctx, EventCredentialsChanged, map[string]any{"source": label})
	}
}
