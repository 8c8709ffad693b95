package deskoauth

import (
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("desko_auth", parseCaddyfile)
	// After basic_auth/forward_auth, before handle/route/reverse_proxy:
	// users need no `order` line.
	httpcaddyfile.RegisterDirectiveOrder("desko_auth", httpcaddyfile.After, "request_header")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	desko_auth [<matcher>] {
//	    client_id     <id>                 # required; {env.NAME} / {file./path} welcome
//	    client_secret <secret>             # required; use {env.NAME} or {file./path}
//	    scope         <scope> [<scope>...] # repeatable; sent space-separated
//	    token_url     <url>                # default https://api.desko.com.br/v1.1/oauth/token
//	    auth_style    json|form|basic      # client authentication; default json (Desko's format)
//	    param         <name> <value>       # extra token request parameter; repeatable; {env.*}/{file.*}
//	    token_header  <name> <value>       # extra token request header; repeatable; {env.*}/{file.*}
//	    header        <name>               # header that carries the token; default Authorization
//	    prefix        <text>               # before the token; default "Bearer "
//	    tls_ca        <file>               # PEM CAs trusted for the token endpoint (instead of the system's)
//	    tls_client_cert <cert> <key>       # client certificate for mutual TLS
//	    insecure_http                      # allow http:// to a host that is not loopback
//	    timeout       <duration>           # one token request; default 10s, at least 100ms
//	    default_ttl   <duration>           # lifetime when the answer gives none; default 5m, at least 1s
//	    retry_on_unauthorized on|off       # replay once after an upstream 401; default on
//	    replay_body_limit <size>           # largest body kept for that; default 1MiB, at most 64MiB, 0 = no replay
//	    replay_memory <size>               # process-wide budget for kept bodies; default 32MiB, at most 4GiB
//	    warm_up       on|off               # fetch the first token at startup; default on
//	    errors        desko|caddy          # no token: answer 502/503 here (desko) or via handle_errors (caddy)
//	    shared_cache  [{                   # cluster mode: one token per fleet; default off
//	        storage <module> [<args...>]   # default: the config's storage (global option)
//	    }]
//	    token_concurrency <n>              # token requests in flight per token endpoint, process-wide; default 8
//
//	    # client authentication with a signed JWT (RFC 7523)
//	    client_key    <pem>                # private_key_jwt: {file./path} of a PEM private key (PKCS#8, PKCS#1, SEC1)
//	    client_key_id <kid>                # the key ID sent in the assertion's header
//	    client_key_alg PS256               # RSA keys sign with RS256 unless PS256 is chosen
//	    client_assertion_audience <aud>    # the assertion's aud; default the token URL
//
//	    # many tenants: the placeholder's value picks the credentials
//	    tenant        <placeholder>        # e.g. {http.request.header.X-Desko-Tenant}
//	    credentials   <name> {             # a named tenant; repeatable
//	        client_id <id>                 # and any of: client_secret, client_key, client_key_id,
//	        ...                            # client_key_alg, client_assertion_audience, scope, token_url,
//	    }                                  # timeout, default_ttl, auth_style, param, token_header, header, prefix
//	    credentials_dir <dir>              # <dir>/<tenant>/client_id, client_secret, optional scope
//	    tenant_idle   <duration>           # release a credentials_dir tenant unused this long; default 2 × its token's life, ≥ 10m
//	    max_tenants   <n>                  # live credentials_dir tenants per block; default 10000
//	}
//
// Every subdirective takes exactly the arguments shown; unknown ones are
// errors. Sizes parse up to 1TiB here; Validate holds them to the maxima
// shown (MaxReplayBodyLimit, MaxReplayMemory).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.Errf("desko_auth: unexpected argument %q; the directive takes only an optional matcher and a block", d.Val())
	}
	for d.NextBlock(0) {
		parse, ok := subdirectives[d.Val()]
		if !ok {
			return d.Errf("unknown subdirective %q", d.Val())
		}
		if err := parse(h, d); err != nil {
			return err
		}
	}
	return nil
}

// subdirectives parse each subdirective of desko_auth into the handler.
var subdirectives = map[string]func(h *Handler, d *caddyfile.Dispenser) error{
	"client_id":     stringArg(func(h *Handler) *string { return &h.ClientID }),
	"client_secret": stringArg(func(h *Handler) *string { return &h.ClientSecret }),
	"token_url":     stringArg(func(h *Handler) *string { return &h.TokenURL }),
	"header":        stringArg(func(h *Handler) *string { return &h.Header }),
	"tls_ca":        stringArg(func(h *Handler) *string { return &h.TLSCA }),
	"prefix": func(h *Handler, d *caddyfile.Dispenser) error {
		v, err := oneArg(d)
		h.Prefix = &v
		return err
	},
	"auth_style":   stringArg(func(h *Handler) *string { return &h.AuthStyle }),
	"errors":       stringArg(func(h *Handler) *string { return &h.Errors }),
	"param":        pairArg(func(h *Handler) *map[string]string { return &h.Params }),
	"token_header": pairArg(func(h *Handler) *map[string]string { return &h.TokenHeaders }),
	"tls_client_cert": func(h *Handler, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("tls_client_cert: takes a certificate file and a key file")
		}
		h.TLSClientCert = args
		return nil
	},
	"insecure_http": func(h *Handler, d *caddyfile.Dispenser) error {
		if d.NextArg() {
			return d.Errf("insecure_http: takes no arguments")
		}
		h.InsecureHTTP = true
		return nil
	},
	"scope": func(h *Handler, d *caddyfile.Dispenser) error {
		n := len(h.Scopes)
		for _, a := range d.RemainingArgs() {
			h.Scopes = append(h.Scopes, strings.Fields(a)...)
		}
		if len(h.Scopes) == n { // no argument, or only blank ones (scope "")
			return d.Errf("scope: needs at least one scope")
		}
		return nil
	},
	"timeout":               durationArg(func(h *Handler) *caddy.Duration { return &h.Timeout }),
	"default_ttl":           durationArg(func(h *Handler) *caddy.Duration { return &h.DefaultTTL }),
	"retry_on_unauthorized": onOffArg(func(h *Handler) **bool { return &h.RetryOnUnauthorized }),
	"warm_up":               onOffArg(func(h *Handler) **bool { return &h.WarmUp }),
	"replay_body_limit":     sizeArg(func(h *Handler) **int64 { return &h.ReplayBodyLimit }),
	"replay_memory":         sizeArg(func(h *Handler) **int64 { return &h.ReplayMemory }),
	"shared_cache":          (*Handler).unmarshalSharedCache,
	"token_concurrency":     intArg(func(h *Handler) *int { return &h.TokenConcurrency }),

	"client_key":                stringArg(func(h *Handler) *string { return &h.ClientKey }),
	"client_key_id":             stringArg(func(h *Handler) *string { return &h.ClientKeyID }),
	"client_key_alg":            stringArg(func(h *Handler) *string { return &h.ClientKeyAlg }),
	"client_assertion_audience": stringArg(func(h *Handler) *string { return &h.ClientAssertionAudience }),

	"tenant":          stringArg(func(h *Handler) *string { return &h.Tenant }),
	"credentials_dir": stringArg(func(h *Handler) *string { return &h.CredentialsDir }),
	"tenant_idle":     durationArg(func(h *Handler) *caddy.Duration { return &h.TenantIdle }),
	"max_tenants":     intArg(func(h *Handler) *int { return &h.MaxTenants }),
}

// credentials blocks are parsed with the table itself: registered here,
// after it is built.
func init() { subdirectives["credentials"] = (*Handler).unmarshalCredentials }

// tenantSubdirectives are the subdirectives a credentials block takes.
var tenantSubdirectives = []string{"client_id", "client_secret", "client_key", "client_key_id", "client_key_alg",
	"client_assertion_audience", "scope", "token_url", "timeout", "default_ttl", "auth_style", "param",
	"token_header", "header", "prefix"}

// unmarshalCredentials parses `credentials <name> { ... }`, a named
// tenant's block, with the same parsers as the directive's.
func (h *Handler) unmarshalCredentials(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("credentials: missing the tenant name")
	}
	name := d.Val()
	if d.NextArg() {
		return d.Errf("credentials %s: takes a name and a block", name)
	}
	if _, dup := h.Credentials[name]; dup {
		return d.Errf("credentials %s: given twice", name)
	}
	var t Handler
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if !slices.Contains(tenantSubdirectives, sub) {
			return d.Errf("credentials %s: unknown or block-level subdirective %q (a credentials block takes %s)", name, sub, strings.Join(tenantSubdirectives, ", "))
		}
		if err := subdirectives[sub](&t, d); err != nil {
			return err
		}
	}
	if h.Credentials == nil {
		h.Credentials = map[string]*TenantCredentials{}
	}
	h.Credentials[name] = &TenantCredentials{
		ClientID: t.ClientID, ClientSecret: t.ClientSecret, ClientKey: t.ClientKey, ClientKeyID: t.ClientKeyID,
		ClientKeyAlg: t.ClientKeyAlg, ClientAssertionAudience: t.ClientAssertionAudience, Scopes: t.Scopes,
		TokenURL: t.TokenURL, Timeout: t.Timeout, DefaultTTL: t.DefaultTTL, AuthStyle: t.AuthStyle,
		Params: t.Params, TokenHeaders: t.TokenHeaders, Header: t.Header, Prefix: t.Prefix,
	}
	return nil
}

// intArg parses a whole number of at least 1.
func intArg(field func(*Handler) *int) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		sub := d.Val()
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return d.Errf("%s: want a whole number of at least 1, got %q", sub, v)
		}
		*field(h) = n
		return nil
	}
}

// stringArg parses a subdirective of one argument into a string field.
func stringArg(field func(*Handler) *string) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		v, err := oneArg(d)
		*field(h) = v
		return err
	}
}

// pairArg parses a repeatable `<name> <value>` subdirective into a map.
func pairArg(field func(*Handler) *map[string]string) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		sub, args := d.Val(), d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("%s: takes a name and a value", sub)
		}
		m := field(h)
		if *m == nil {
			*m = map[string]string{}
		}
		if _, dup := (*m)[args[0]]; dup {
			return d.Errf("%s: %s given twice", sub, args[0])
		}
		(*m)[args[0]] = args[1]
		return nil
	}
}

// durationArg parses a positive duration such as 10s or 5m.
func durationArg(field func(*Handler) *caddy.Duration) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		sub := d.Val()
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return d.Errf("%s: invalid duration %q: %v", sub, v, err)
		}
		if dur <= 0 {
			return d.Errf("%s: must be positive, got %s", sub, v)
		}
		*field(h) = caddy.Duration(dur)
		return nil
	}
}

// onOffArg parses on or off.
func onOffArg(field func(*Handler) **bool) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		sub := d.Val()
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		if v != "on" && v != "off" {
			return d.Errf("%s: expected on or off, got %q", sub, v)
		}
		on := v == "on"
		*field(h) = &on
		return nil
	}
}

// sizeArg parses a byte size such as 0, 4096, 64KiB or 1MB.
func sizeArg(field func(*Handler) **int64) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		sub := d.Val()
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		n, err := parseSize(v)
		if err != nil {
			return d.Errf("%s: invalid size %q (e.g. 64KiB, 1MB, 0)", sub, v)
		}
		*field(h) = &n
		return nil
	}
}

// unmarshalSharedCache parses `shared_cache` or
// `shared_cache { storage <module> [<args...>] [{ ... }] }`.
func (h *Handler) unmarshalSharedCache(d *caddyfile.Dispenser) error {
	if h.SharedCache != nil {
		return d.Errf("shared_cache: given twice")
	}
	if d.NextArg() {
		return d.Errf("shared_cache: takes no arguments, only an optional block")
	}
	h.SharedCache = new(SharedCache)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "storage" {
			return d.Errf("shared_cache: unknown subdirective %q (only storage)", d.Val())
		}
		if h.SharedCache.StorageRaw != nil {
			return d.Errf("shared_cache: storage given twice")
		}
		if !d.NextArg() {
			return d.Errf("shared_cache: storage: missing module name (e.g. file_system)")
		}
		name := d.Val()
		unm, err := caddyfile.UnmarshalModule(d, "caddy.storage."+name)
		if err != nil {
			return d.Errf("shared_cache: storage %s: %v", name, err)
		}
		if _, ok := unm.(caddy.StorageConverter); !ok {
			return d.Errf("shared_cache: storage: module %s is not a storage module", name)
		}
		h.SharedCache.StorageRaw = caddyconfig.JSONModuleObject(unm, "module", name, nil)
	}
	return nil
}

// oneArg reads exactly one argument of the current subdirective.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	sub := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s: missing argument", sub)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s: takes exactly one argument", sub)
	}
	return v, nil
}

// maxSize is the largest size parseSize accepts, with or without a unit.
const maxSize = 1 << 40

// parseSize reads a byte size such as 0, 4096, 64KiB or 1MB.
func parseSize(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > maxSize {
			return 0, strconv.ErrRange
		}
		return n, nil
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n > maxSize {
		return 0, strconv.ErrRange
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
