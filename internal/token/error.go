package token

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
)

// Kind classifies why a token could not be obtained: what to check, and
// how soon to try again.
type Kind int

// The kinds of token errors. Their String forms are metric labels and the
// {http.desko_auth.error} placeholder's values. Refused credentials, a
// certificate that does not verify and a redirect are configuration
// problems (Misconfigured): retried slowly, answered 502. The others look
// like outages: retried with a short backoff, answered 503.
const (
	// KindTransient is a timeout, a connection that broke, a 5xx or 429:
	// retried with a short exponential backoff.
	KindTransient Kind = iota + 1
	// KindRefused means the token endpoint refused the credentials (400,
	// 401, 403 and other 4xx, or an OAuth error in a 2xx): a configuration
	// problem, retried slowly.
	KindRefused
	// KindInvalidAnswer is a 2xx answer that is not a usable token (not
	// JSON, no access_token, a wrong token_type, control characters, over
	// 1 MiB…). It is retried like a transient error.
	KindInvalidAnswer
	// KindTLS is a certificate of the token endpoint that does not verify
	// (unknown authority, another host's, expired): tls_ca or the
	// endpoint's certificate is wrong. A configuration problem.
	KindTLS
	// KindRedirect is a redirect the token request does not follow: to
	// another scheme or host, one that would turn the POST into a GET, one
	// too many, or a 3xx Go's client leaves alone. token_url is not the
	// endpoint's address. A configuration problem.
	KindRedirect
	// KindDNS is a token endpoint host that does not resolve (no such
	// host, or no answer from the resolver): token_url's host or the
	// network's DNS. Retried like a transient error, as DNS outages look
	// the same.
	KindDNS
	// KindConnect is a connection to the token endpoint that could not be
	// made (refused, host or network unreachable, no answer to the
	// connection attempt): token_url's host and port, a firewall, the
	// network. Retried like a transient error.
	KindConnect
)

// String is the kind's metric label.
func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindRefused:
		return "refused"
	case KindInvalidAnswer:
		return "invalid_answer"
	case KindTLS:
		return "tls"
	case KindRedirect:
		return "redirect"
	case KindDNS:
		return "dns"
	case KindConnect:
		return "connect"
	}
	return "unknown"
}

// Misconfigured reports whether errors of the kind are configuration
// problems that retrying soon will not mend (refused credentials, a
// certificate that does not verify, a redirect): they are retried slowly,
// and the clients that wait for a token are answered 502, not 503.
func (k Kind) Misconfigured() bool {
	return k == KindRefused || k == KindTLS || k == KindRedirect
}

// Kinds are the kinds of token errors, in the order of their values.
var Kinds = []Kind{KindTransient, KindRefused, KindInvalidAnswer, KindTLS, KindRedirect, KindDNS, KindConnect}

// Error is the one error type a source returns. Its text never contains
// the client secret or a token.
type Error struct {
	Kind Kind
	// Status is the token endpoint's HTTP status, 0 when there was none.
	Status int
	// Message is what the token endpoint said (its message,
	// error_description or error code), or a short excerpt of the body.
	Message string
	// RetryAfter is what the server asked for (429/503 Retry-After), or,
	// on errors handed to waiting requests, the time left until the next
	// attempt.
	RetryAfter time.Duration
	// Err is the underlying cause (network error, JSON error…), if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.Status != 0:
		fmt.Fprintf(&b, "token endpoint answered %d", e.Status)
		if e.Message != "" {
			b.WriteString(": ")
			b.WriteString(e.Message)
		}
	case e.Message != "":
		b.WriteString(e.Message)
	default:
		b.WriteString("token request failed")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// The messages of the errors of a failed round trip, by kind. They name
// what to check.
const (
	msgTransportFailed = "token request failed"
	msgTLS             = "token endpoint's certificate does not verify (check tls_ca and the endpoint's certificate)"
	msgDNS             = "token endpoint's host does not resolve (check token_url and DNS)"
	msgConnect         = "could not connect to the token endpoint (check token_url's host and port, and the network)"
)

// redirectError is a redirect a token request does not follow (see
// sameHostClient). Its text names where the redirect pointed, without
// query or user information, and why it was not followed.
type redirectError struct {
	status int    // the redirect's status
	to     string // where it pointed, redacted ("" if nowhere usable)
	why    string
}

func (e *redirectError) Error() string {
	to := ""
	if e.to != "" {
		to = " to " + e.to
	}
	return "redirect" + to + " not followed: " + e.why + " (check token_url)"
}

// transportError classifies a failed round trip by what to check: a
// redirect not followed (token_url), a certificate that does not verify
// (tls_ca), a host that does not resolve (token_url, DNS), a connection
// that could not be made (host, port, network); anything else (a timeout,
// a connection that broke) is transient.
//
// phases is how far the request got (nil: unknown). A request whose
// deadline ends it before a connection is made fails with the context's
// error, not a dial error: the fetch timeout (10 s by default) is shorter
// than the dialer's (30 s) and the resolver's, and Go stops waiting for
// the dial as the deadline passes. Then the phase it was in says what to
// check: a lookup that got no answer is a dns error, a connection attempt
// that got none (a firewall that drops it) a connect error.
func (s *Source) transportError(err error, phases *dialPhases) *Error {
	sc := s.scrubber()
	var re *redirectError
	if errors.As(err, &re) {
		return &Error{Kind: KindRedirect, Status: re.status, Message: sc.Scrub(re.Error())}
	}
	kind, msg := classifyTransport(err)
	cause := redactURLError(err)
	if kind == KindTransient && phases != nil && isTimeout(err) {
		switch phases.unanswered() {
		case KindDNS:
			kind, msg = KindDNS, msgDNS
			cause = fmt.Errorf("%w (no answer from the resolver)", cause)
		case KindConnect:
			kind, msg = KindConnect, msgConnect
			cause = fmt.Errorf("%w (no answer to the connection attempt)", cause)
		}
	}
	return &Error{Kind: kind, Message: msg, Err: sc.Error(cause)}
}

// isTimeout reports whether err is a deadline that passed (the fetch's, or
// a timeout of the network).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// dialPhases records, through an httptrace.ClientTrace, how far a token
// request got towards a connection. The dial may go on, and call the
// trace, after the request has given up on it: the fields are atomic.
type dialPhases struct {
	lookups   atomic.Int32 // DNS lookups started and not done
	dials     atomic.Int32 // connection attempts started
	connected atomic.Bool  // a connection attempt succeeded, or a connection was had
}

// trace is the ClientTrace that records the phases.
func (p *dialPhases) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		DNSStart:     func(httptrace.DNSStartInfo) { p.lookups.Add(1) },
		DNSDone:      func(httptrace.DNSDoneInfo) { p.lookups.Add(-1) },
		ConnectStart: func(string, string) { p.dials.Add(1) },
		ConnectDone: func(_, _ string, err error) {
			if err == nil {
				p.connected.Store(true)
			}
		},
		GotConn: func(httptrace.GotConnInfo) { p.connected.Store(true) },
	}
}

// unanswered is the kind of a request that timed out before it had a
// connection: KindDNS while a lookup was waiting for its answer,
// KindConnect while connection attempts were; 0 when it had a connection
// (what timed out came after) or got to neither.
func (p *dialPhases) unanswered() Kind {
	switch {
	case p.connected.Load():
		return 0
	case p.lookups.Load() > 0:
		return KindDNS
	case p.dials.Load() > 0:
		return KindConnect
	}
	return 0
}

// classifyTransport is the kind and message of a round trip's error that
// is not a redirect.
func classifyTransport(err error) (Kind, string) {
	var (
		certErr   *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		dnsErr    *net.DNSError
		opErr     *net.OpError
	)
	switch {
	case errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalid):
		return KindTLS, msgTLS
	case errors.As(err, &dnsErr):
		// Not found, or no answer from the resolver in time: either way the
		// name is where to look.
		return KindDNS, msgDNS
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.As(err, &opErr) && (opErr.Op == "dial" || opErr.Op == "proxyconnect"):
		// Refused, unreachable, or a dial that timed out (a firewall that
		// drops the connection attempt).
		return KindConnect, msgConnect
	}
	return KindTransient, msgTransportFailed
}

// statusError builds the error for a non-2xx answer (or a 2xx that holds
// an OAuth error).
func (s *Source) statusError(resp *http.Response, body []byte) *Error {
	sc := s.scrubber()
	// Scrub the body before errorMessage cuts it to an excerpt: a secret
	// straddling the cut would otherwise survive in part. Then redact what
	// looks like encoded data whatever it decodes to: an operator needs
	// the error code and a hint, not an echo of the request.
	te := &Error{Status: resp.StatusCode, Message: scrub.Blobs(sc.Scrub(errorMessage([]byte(sc.Scrub(string(body))))))}
	switch code := resp.StatusCode; {
	case code >= 200 && code <= 299:
		// A 2xx that carries an OAuth error (some servers do that).
		te.Kind = KindRefused
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
		te.Kind = KindTransient
		te.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now().Round(0))
	case code >= 300 && code < 400:
		// A redirect Go's client does not follow (300, 304, a 3xx without
		// Location…), or a 307/308 it could not resend.
		te.Kind = KindRedirect
		re := &redirectError{status: code, why: "not a redirect a token request can follow"}
		if loc, err := resp.Location(); err == nil {
			re.to = RedactURL(loc.String())
		}
		te.Message = sc.Scrub(re.Error())
	default:
		te.Kind = KindRefused
	}
	return te
}

// redactURLError replaces the URL of a *url.Error, which Go puts in its
// text whole, by the URL without its query, fragment and user information.
func redactURLError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	r := *ue
	r.URL = RedactURL(ue.URL)
	if error(ue) == err {
		return &r
	}
	// Wrapped: the wrapping layers repeat the URL in their text.
	return errors.New(strings.ReplaceAll(err.Error(), ue.URL, r.URL))
}

// parseRetryAfter reads a Retry-After header (seconds or an HTTP date).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return min(time.Duration(s)*time.Second, retryAfterMax)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), retryAfterMax)
	}
	return 0
}

// errorMessage extracts a human message from an error answer: Desko's
// {"error":401,"id":…,"message":…}, RFC 6749's {"error":"invalid_client",
// "error_description":…}, or a short excerpt of anything else.
func errorMessage(body []byte) string {
	var v struct {
		Error       any    `json:"error"`
		Description string `json:"error_description"`
		Message     string `json:"message"`
		ID          string `json:"id"`
	}
	if json.Unmarshal(body, &v) == nil {
		code := ""
		if s, ok := v.Error.(string); ok {
			code = s
		}
		switch {
		case v.Message != "" && code != "":
			return sanitize(code + ": " + v.Message)
		case v.Message != "":
			return sanitize(v.Message)
		case v.Description != "" && code != "":
			return sanitize(code + ": " + v.Description)
		case v.Description != "":
			return sanitize(v.Description)
		case code != "":
			return sanitize(code)
		}
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return "empty body"
	}
	return "body: " + quoteExcerpt(sanitize(string(body)))
}

// quoteExcerpt quotes s, shortening it first if escapes (of quotes,
// backslashes, unprintable runes) would make the quoted form longer than
// excerptLen+3 runes.
func quoteExcerpt(s string) string {
	q := strconv.Quote(s)
	r := []rune(strings.TrimSuffix(s, "…"))
	for n := len(r); len([]rune(q)) > excerptLen+3 && n > 0; n-- {
		q = strconv.Quote(string(r[:n-1]) + "…")
	}
	return q
}

// sanitize makes text from the network safe and short for logs and error
// bodies: control characters (and invalid UTF-8) become spaces, each run of
// spaces one space, and it is cut at excerptLen runes. It reads s no
// further than the cut and the spaces after it: an error answer may be a
// megabyte.
func sanitize(s string) string {
	var b strings.Builder
	n := 0         // the runes written
	space := false // a space is due before the next rune written
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' || unicode.IsSpace(r) {
			space = n > 0
			continue
		}
		if space {
			if n == excerptLen {
				return b.String() + "…"
			}
			b.WriteByte(' ')
			n++
			space = false
		}
		if n == excerptLen {
			return b.String() + "…"
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// RedactURL drops the query string, which some endpoints use for keys,
// the fragment and the user information.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "invalid-url"
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}
