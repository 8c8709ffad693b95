package deskoauth

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is a block that serves many tenants: the request's tenant
// value picks the credentials (a named credentials block first, then
// credentials_dir); a tenant's source starts with its first request and is
// released when unused for tenant_idle, or, past max_tenants, least
// recently used first. The set of live tenants is shared by the handlers
// of the same block across reloads, so a reload starts nothing again.

// Tenant defaults.
const (
	// DefaultMaxTenants bounds the live tenants of a block.
	DefaultMaxTenants = 10000
	// MinTenantIdle is the shortest automatic tenant_idle: a tenant unused
	// for twice its token's lifetime, and at least this long, is released.
	MinTenantIdle = 10 * time.Minute
	// touchEvery is how coarsely a tenant's last use is recorded.
	touchEvery = time.Second
	// unknownLogEvery is how often an unknown tenant value is logged.
	unknownLogEvery = time.Minute
)

// tenantSets holds one tenantSet per tenant block, shared by every
// handler of that block (in this config and the next one, during a
// reload).
var tenantSets = caddy.NewUsagePool()

// tenantSet is the live tenants of a block.
type tenantSet struct {
	key     string
	label   string   // the block's label, for its series: tenants@<8 hex>
	block   *Handler // the block's settings
	metrics *sourceMetrics
	dir     *credentialsDir // nil without credentials_dir
	max     int

	env  atomic.Pointer[sourceEnv] // the newest config's
	live sync.Map                  // tenant name → *tenant

	mu      sync.Mutex // starts and releases
	dirLive int        // live tenants of credentials_dir
	misses  missCache
	logged  map[string]time.Time // unknown values → when last logged
	sweep   *time.Timer
	closed  bool
}

// tenant is a live tenant: its settings (which hold its source and
// transport references) and how its requests carry its token.
type tenant struct {
	name  string
	th    *Handler
	b     *binding
	named bool
	used  atomic.Int64 // unix nanoseconds of the last use, to touchEvery
}

// touch records a use.
func (t *tenant) touch(now int64) {
	if now-t.used.Load() >= int64(touchEvery) {
		t.used.Store(now)
	}
}

// tenantBlockKey identifies a tenant block: its whole configuration.
func tenantBlockKey(h *Handler) string {
	b, _ := json.Marshal(h)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// attachTenants attaches the handler to the tenant set of its block,
// starting it if this is the first handler of the block; the named
// tenants start at once (and warm up as blocks do).
func (h *Handler) attachTenants(ctx caddy.Context, env sourceEnv) error {
	key := tenantBlockKey(h)
	val, loaded, err := tenantSets.LoadOrNew(key, func() (caddy.Destructor, error) {
		s := &tenantSet{key: key, label: "tenants@" + key[:8], block: h, max: cmp.Or(h.MaxTenants, DefaultMaxTenants)}
		if h.CredentialsDir != "" {
			dir, err := openCredentialsDir(h.CredentialsDir)
			if err != nil {
				return nil, err
			}
			s.dir = dir
		}
		s.metrics = metricsFor(s.label)
		s.metrics.tenants = newTenantMetrics(s.label)
		return s, nil
	})
	if err != nil {
		return err
	}
	h.tenantsKey = key
	s := val.(*tenantSet)
	h.tenants = s
	s.env.Store(&env)
	if !loaded {
		for name, tc := range h.Credentials {
			if _, err := s.startNamed(name, tc); err != nil {
				return fmt.Errorf("credentials %s: %w", name, err)
			}
		}
		s.mu.Lock()
		s.scheduleSweep()
		s.mu.Unlock()
	}
	// The newest config's events app for every live source.
	s.live.Range(func(_, v any) bool {
		_ = v.(*tenant).b.src.obs.useEvents(ctx)
		return true
	})
	return nil
}

// bind returns the binding of the request's tenant, starting the tenant if
// need be; errUnknownTenant when the value names no credentials.
func (s *tenantSet) bind(r *http.Request) (*binding, error) {
	v := ""
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		v = repl.ReplaceKnown(s.block.Tenant, "")
	}
	now := time.Now()
	if !validTenantName(v) {
		return nil, s.unknown(v, now)
	}
	if t, ok := s.live.Load(v); ok {
		t := t.(*tenant)
		t.touch(now.UnixNano())
		return t.b, nil
	}
	return s.start(v, now)
}

// start starts a tenant of credentials_dir on its first request.
func (s *tenantSet) start(name string, now time.Time) (*binding, error) {
	if s.dir == nil || s.misses.has(name, now) {
		return nil, s.unknown(name, now)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.live.Load(name); ok { // started by another request meanwhile
		return t.(*tenant).b, nil
	}
	if s.closed {
		return nil, errors.New("the config that served this tenant was unloaded")
	}
	creds, scopes, err := s.dir.credentials(name)
	if errors.Is(err, errNoTenant) {
		s.misses.add(name, now)
		return nil, s.unknownLocked(name, now)
	}
	env := s.env.Load()
	if err != nil {
		env.logger.Warn("a tenant's credentials cannot be read", zap.String("tenant", name), zap.String("why", err.Error()))
		return nil, &token.Error{Kind: token.KindRefused, Message: "the tenant's credentials cannot be read: " + err.Error()}
	}
	for s.dirLive >= s.max {
		s.evictLocked(s.leastRecentlyUsed(), "max_tenants")
	}
	th := s.block.forTenant(name, &TenantCredentials{Scopes: scopes})
	th.dirTenant = s.dir.path
	dc := &dirCredentials{dir: s.dir, tenant: name, cur: creds, log: env.logger,
		unreadable: s.metrics.credentials[credentialsUnreadable], gone: func() { s.release(name, "removed") }}
	if _, err := s.startLocked(th, creds, dc, false); err != nil {
		return nil, err
	}
	t, _ := s.live.Load(name)
	s.dirLive++
	s.metrics.tenants.live.Set(float64(s.dirLive))
	s.metrics.tenants.started.Inc()
	return t.(*tenant).b, nil
}

// startNamed starts a named tenant (at load: they are pinned for the
// config's life).
func (s *tenantSet) startNamed(name string, tc *TenantCredentials) (*tenant, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	th := s.block.forTenant(name, tc)
	return s.startLocked(th, nil, nil, true)
}

// startLocked starts the tenant th: its settings checked, its source
// attached (started if new); creds and cs, when given, are its
// credentials and their source (credentials_dir), else its values are
// expanded as a block's are. s.mu is held.
func (s *tenantSet) startLocked(th *Handler, creds *token.Credentials, cs token.CredentialSource, named bool) (*tenant, error) {
	env := s.env.Load()
	th.logger = env.logger.With(zap.String("tenant", th.tenantName))
	if err := th.Validate(); err != nil {
		return nil, err
	}
	th.applyRequestOptions()
	metricsLabel := ""
	if !named {
		metricsLabel = s.label // credentials_dir tenants are counted under their block
	}
	if err := th.attachWith(*env, creds, cs, metricsLabel, named && (th.WarmUp == nil || *th.WarmUp)); err != nil {
		th.Cleanup()
		return nil, err
	}
	t := &tenant{name: th.tenantName, th: th, b: th.b, named: named}
	t.used.Store(time.Now().UnixNano())
	s.live.Store(th.tenantName, t)
	return t, nil
}

// leastRecentlyUsed is the credentials_dir tenant used least recently; s.mu
// is held.
func (s *tenantSet) leastRecentlyUsed() *tenant {
	var lru *tenant
	s.live.Range(func(_, v any) bool {
		t := v.(*tenant)
		if !t.named && (lru == nil || t.used.Load() < lru.used.Load()) {
			lru = t
		}
		return true
	})
	return lru
}

// release releases a tenant of credentials_dir (its folder is gone).
func (s *tenantSet) release(name, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.live.Load(name); ok && !t.(*tenant).named {
		s.evictLocked(t.(*tenant), why)
	}
}

// evictLocked releases t: its source stops when no one else uses it; the
// tenant starts again on its next request. s.mu is held.
func (s *tenantSet) evictLocked(t *tenant, why string) {
	if t == nil {
		return
	}
	s.live.Delete(t.name)
	t.th.Cleanup()
	if !t.named {
		s.dirLive--
		s.metrics.tenants.live.Set(float64(s.dirLive))
		s.metrics.tenants.evicted(why).Inc()
	}
}

// idleAfter is how long t may go unused before it is released.
func (s *tenantSet) idleAfter(t *tenant) time.Duration {
	if s.block.TenantIdle > 0 {
		return time.Duration(s.block.TenantIdle)
	}
	return max(2*t.b.src.engine.Lifetime(), MinTenantIdle)
}

// scheduleSweep arms the timer that releases idle tenants; s.mu is held.
func (s *tenantSet) scheduleSweep() {
	every := MinTenantIdle / 4
	if s.block.TenantIdle > 0 {
		every = max(time.Duration(s.block.TenantIdle)/4, time.Second)
	}
	if s.sweep == nil {
		s.sweep = time.AfterFunc(every, s.sweepIdle)
		return
	}
	s.sweep.Reset(every)
}

// sweepIdle releases the credentials_dir tenants unused for their
// tenant_idle.
func (s *tenantSet) sweepIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	now := time.Now().UnixNano()
	var idle []*tenant
	s.live.Range(func(_, v any) bool {
		t := v.(*tenant)
		if !t.named && now-t.used.Load() >= int64(s.idleAfter(t)) {
			idle = append(idle, t)
		}
		return true
	})
	for _, t := range idle {
		s.evictLocked(t, "idle")
	}
	s.scheduleSweep()
}

// unknown counts a request whose tenant value names nothing, and logs the
// value at most once a minute.
func (s *tenantSet) unknown(v string, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unknownLocked(v, now)
}

func (s *tenantSet) unknownLocked(v string, now time.Time) error {
	if s.logged == nil {
		s.logged = map[string]time.Time{}
	}
	key := v
	if len(key) > maxTenantName {
		key = key[:maxTenantName]
	}
	if last, ok := s.logged[key]; !ok || now.Sub(last) >= unknownLogEvery {
		if len(s.logged) >= maxMisses {
			clear(s.logged)
		}
		s.logged[key] = now
		shown := v
		if len(shown) > 64 {
			shown = shown[:64] + "…"
		}
		s.env.Load().logger.Warn("a request named an unknown tenant; answered 403",
			zap.String("tenant", strconv.Quote(shown)), zap.Int("length", len(v)))
	}
	return errUnknownTenant
}

// Destruct releases every tenant when the last handler of the block is
// cleaned up.
func (s *tenantSet) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.sweep != nil {
		s.sweep.Stop()
	}
	s.live.Range(func(_, v any) bool {
		s.evictLocked(v.(*tenant), "unloaded")
		return true
	})
	if s.dir != nil {
		return s.dir.Close()
	}
	return nil
}
