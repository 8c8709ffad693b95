package deskoauth

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/dustin/go-humanize"
	"golang.org/x/net/http/httpguts"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file checks the written configuration: each check names the
// subdirective it is about.

// checkTokenURL accepts absolute http and https URLs only.
func checkTokenURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		// Not %w: url.Error's text holds the whole URL, keys and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("token_url: not a valid URL: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("token_url: scheme must be http or https, got %q", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("token_url: has no host")
	}
	if u.User != nil {
		return errors.New("token_url: must not contain user information")
	}
	return nil
}

// The smallest timeout and default_ttl accepted. Below them a value is
// almost surely a unit mistake (a bare JSON number is nanoseconds), and
// would make every token request time out or every token expire at once.
const (
	MinTimeout    = 100 * time.Millisecond
	MinDefaultTTL = time.Second
)

// The largest replay_body_limit and replay_memory accepted. A body kept for
// a replay stays in memory for the whole request: past tens of MiB a
// replay saves little (the client can send it again) and costs much, so
// replay_body_limit stops at 64 times its default. replay_memory bounds
// what clients can make the process hold for replays by sending bytes;
// 4 GiB holds 64 bodies of the largest limit, and anything larger is
// almost surely a unit mistake (a budget of terabytes is no budget).
const (
	// MaxReplayBodyLimit is the largest replay_body_limit accepted, 64 MiB.
	MaxReplayBodyLimit = 64 << 20
	// MaxReplayMemory is the largest replay_memory accepted, 4 GiB.
	MaxReplayMemory = 4 << 30
)

// checkSize rejects a size option that is negative or above its maximum.
func checkSize(field string, n *int64, maximum int64) error {
	switch {
	case n == nil:
		return nil
	case *n < 0:
		return fmt.Errorf("%s: must not be negative", field)
	case *n > maximum:
		return fmt.Errorf("%s: %d bytes (%s) is above the maximum, %s (%d bytes)",
			field, *n, humanize.IBytes(uint64(*n)), humanize.IBytes(uint64(maximum)), maximum)
	}
	return nil
}

// checkDurationFloor rejects a duration option set below its floor (0
// means the default), with a message that shows the unit mistake.
func checkDurationFloor(field string, d caddy.Duration, floor time.Duration) error {
	if d == 0 || time.Duration(d) >= floor {
		return nil
	}
	if d < 0 {
		return fmt.Errorf("%s: must be positive, got %s", field, time.Duration(d))
	}
	return fmt.Errorf("%s: %s is below the %s minimum; durations in JSON config are nanoseconds unless written as a string like \"5m\"",
		field, time.Duration(d), floor)
}

// hopByHopHeaders are the headers that every proxy and Go's HTTP client
// manage per connection (Caddy's reverse_proxy hopHeaders).
var hopByHopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// withHopByHop adds the hop-by-hop headers to m, with the reason why.
func withHopByHop(m map[string]string, why string) map[string]string {
	for _, k := range hopByHopHeaders {
		m[k] = why
	}
	return m
}

// lostHeaders are the header names that a token set in them never carries
// to the upstream, with the reason.
var lostHeaders = withHopByHop(map[string]string{
	"Host":           "Go sends the request's host, never a Host header field",
	"Content-Length": "Go sends the body's length, never a Content-Length header field",
}, "it is a hop-by-hop header, which reverse_proxy removes")

// controlledHeaders are the token request headers that the module or Go's
// HTTP client must control, with the reason.
var controlledHeaders = withHopByHop(map[string]string{
	"Authorization":    "it is set by the module for auth_style basic, and no other style may send one",
	"Content-Type":     "the module sets it for the auth_style's body",
	"Content-Length":   "Go's HTTP client sets it from the body",
	"Host":             "Go's HTTP client sets it from token_url",
	"Accept-Encoding":  "Go's HTTP client decompresses answers only when it chose the encoding itself; with this header set, gzip answers would not parse",
	"Content-Encoding": "the module sends an unencoded body",
	"Expect":           "Go's HTTP client handles 100-continue itself",
}, "it is a hop-by-hop header, which Go's HTTP client manages")

// checkHeaderOptions validates the header, prefix and token_header options.
func (h *Handler) checkHeaderOptions() error {
	if h.Header != "" && !httpguts.ValidHeaderFieldName(h.Header) {
		return fmt.Errorf("header: %q is not a valid header name", h.Header)
	}
	if why, ok := lostHeaders[http.CanonicalHeaderKey(h.Header)]; ok && h.Header != "" {
		return fmt.Errorf("header: %s never reaches the upstream: %s", h.Header, why)
	}
	if h.Prefix != nil && !httpguts.ValidHeaderFieldValue(*h.Prefix) {
		return errors.New("prefix: must not contain control characters")
	}
	canonical := make(map[string]bool, len(h.TokenHeaders))
	for k, v := range h.TokenHeaders {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("token_header: %q is not a valid header name", k)
		}
		if why, ok := controlledHeaders[http.CanonicalHeaderKey(k)]; ok {
			return fmt.Errorf("token_header: %s cannot be set: %s", k, why)
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("token_header %s: the value must not contain control characters", k)
		}
		// Header names are case-insensitive: two spellings of one name
		// would each be Set, in map order, and either value could win.
		ck := http.CanonicalHeaderKey(k)
		if canonical[ck] {
			return fmt.Errorf("token_header: %s given twice (header names are case-insensitive)", ck)
		}
		canonical[ck] = true
	}
	for k := range h.Params {
		if k == "" {
			return errors.New("param: empty name")
		}
		if slices.Contains(token.ReservedParams, k) {
			return fmt.Errorf("param: %s is set by the module itself (scopes go in scope)", k)
		}
	}
	if len(h.TLSClientCert) != 0 && len(h.TLSClientCert) != 2 {
		return errors.New("tls_client_cert: needs a certificate file and a key file")
	}
	return nil
}
