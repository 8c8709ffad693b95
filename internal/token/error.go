package token

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/scrub"
)

// Kind classifies why a token could not be obtained.
type Kind int

// The kinds of token errors. Their String forms are metric labels.
const (
	// KindTransient is a network error, timeout, 5xx or 429: retried with a
	// short exponential backoff.
	KindTransient Kind = iota + 1
	// KindRefused means the token endpoint refused the credentials (400,
	// 401, 403 and other 4xx): a configuration problem, retried slowly.
	KindRefused
	// KindInvalidAnswer is a 2xx answer that is not a usable token (not
	// JSON, no access_token, a wrong token_type, control characters…).
	// It is retried like a transient error.
	KindInvalidAnswer
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
	}
	return "unknown"
}

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

// errCrossHostRedirect is a token endpoint redirecting elsewhere: a
// configuration problem, not an outage.
var errCrossHostRedirect = errors.New("refusing to follow a redirect to another host; check token_url")

// transportError classifies a failed round trip: a redirect elsewhere or a
// certificate that does not verify is a configuration problem (retried
// slowly), anything else (network, timeout) transient.
func (s *Source) transportError(err error) *Error {
	kind := KindTransient
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	if errors.Is(err, errCrossHostRedirect) || errors.As(err, &certErr) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostErr) || errors.As(err, &invalid) {
		kind = KindRefused
	}
	return &Error{Kind: kind, Message: "token request failed", Err: s.scrubber().Error(redactURLError(err))}
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
		te.Kind = KindRefused
		te.Message = "redirect not followed (check token_url)"
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
// bodies: control characters become spaces and it is cut at excerptLen runes.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > excerptLen {
		s = string(r[:excerptLen]) + "…"
	}
	return s
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
