package deskoauth

import (
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
//	    replay_body_limit <size>           # largest body kept for that; default 1MiB, 0 = no replay
//	    replay_memory <size>               # process-wide budget for kept bodies; default 32MiB
//	    warm_up       on|off               # fetch the first token at startup; default on
//	    errors        desko|caddy          # no token: answer 502/503 here (desko) or via handle_errors (caddy)
//	    shared_cache  [{                   # cluster mode: one token per fleet; default off
//	        storage <module> [<args...>]   # default: the config's storage (global option)
//	    }]
//	}
//
// Every subdirective takes exactly the arguments shown; unknown ones are
// errors.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.Errf("desko_auth: unexpected argument %q; the directive takes only an optional matcher and a block", d.Val())
	}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "errors":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if v != ErrorsDesko && v != ErrorsCaddy {
				return d.Errf("errors: expected desko or caddy, got %q", v)
			}
			h.Errors = v
		case "client_id", "client_secret", "token_url", "auth_style", "header", "prefix", "tls_ca":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			switch sub {
			case "client_id":
				h.ClientID = v
			case "client_secret":
				h.ClientSecret = v
			case "token_url":
				h.TokenURL = v
			case "auth_style":
				if _, err := ParseAuthStyle(v); err != nil {
					return d.Errf("auth_style: %v", err)
				}
				h.AuthStyle = v
			case "header":
				h.Header = v
			case "prefix":
				h.Prefix = &v
			default:
				h.TLSCA = v
			}
		case "param", "token_header":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("%s: takes a name and a value", sub)
			}
			m := &h.Params
			if sub == "token_header" {
				m = &h.TokenHeaders
			}
			if *m == nil {
				*m = map[string]string{}
			}
			if _, dup := (*m)[args[0]]; dup {
				return d.Errf("%s: %s given twice", sub, args[0])
			}
			(*m)[args[0]] = args[1]
		case "tls_client_cert":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("tls_client_cert: takes a certificate file and a key file")
			}
			h.TLSClientCert = args
		case "insecure_http":
			if d.NextArg() {
				return d.Errf("insecure_http: takes no arguments")
			}
			h.InsecureHTTP = true
		case "scope":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("scope: needs at least one scope")
			}
			n := len(h.Scopes)
			for _, a := range args {
				h.Scopes = append(h.Scopes, strings.Fields(a)...)
			}
			if len(h.Scopes) == n { // only blank arguments, e.g. scope ""
				return d.Errf("scope: needs at least one scope")
			}
		case "timeout", "default_ttl":
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
			if sub == "timeout" {
				h.Timeout = caddy.Duration(dur)
			} else {
				h.DefaultTTL = caddy.Duration(dur)
			}
		case "retry_on_unauthorized", "warm_up":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			var on bool
			switch v {
			case "on":
				on = true
			case "off":
			default:
				return d.Errf("%s: expected on or off, got %q", sub, v)
			}
			if sub == "warm_up" {
				h.WarmUp = &on
			} else {
				h.RetryOnUnauthorized = &on
			}
		case "shared_cache":
			if err := h.unmarshalSharedCache(d); err != nil {
				return err
			}
		case "replay_body_limit", "replay_memory":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			n, err := parseSize(v)
			if err != nil {
				return d.Errf("%s: invalid size %q (e.g. 64KiB, 1MB, 0)", sub, v)
			}
			if sub == "replay_memory" {
				h.ReplayMemory = &n
			} else {
				h.ReplayBodyLimit = &n
			}
		default:
			return d.Errf("unknown subdirective %q", sub)
		}
	}
	return nil
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
