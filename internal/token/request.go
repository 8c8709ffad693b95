package token

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// AuthStyle is how the client authenticates to the token endpoint.
type AuthStyle int

// The client authentication styles.
const (
	// AuthJSON sends grant_type, client_id, client_secret and scope in a
	// JSON body: Desko's documented format.
	AuthJSON AuthStyle = iota
	// AuthForm is RFC 6749 client_secret_post: the credentials in an
	// application/x-www-form-urlencoded body.
	AuthForm
	// AuthBasic is RFC 6749 client_secret_basic: the credentials, each
	// form-encoded first (§2.3.1), in an Authorization: Basic header.
	AuthBasic
	// AuthPrivateKeyJWT is private_key_jwt (RFC 7523 §2.2): a JWT signed
	// with the client's private key (Credentials.Key) in a form body, and
	// no secret.
	AuthPrivateKeyJWT
	// AuthClientSecretJWT is client_secret_jwt: a JWT signed with the
	// client secret (HS256) in a form body; the secret itself is not sent.
	AuthClientSecretJWT
)

// authStyleNames are the styles' names in the configuration.
var authStyleNames = []string{
	AuthJSON: "json", AuthForm: "form", AuthBasic: "basic",
	AuthPrivateKeyJWT: "private_key_jwt", AuthClientSecretJWT: "client_secret_jwt",
}

// ParseAuthStyle reads a style's name; "" is json.
func ParseAuthStyle(s string) (AuthStyle, error) {
	if s == "" {
		return AuthJSON, nil
	}
	for i, name := range authStyleNames {
		if s == name {
			return AuthStyle(i), nil
		}
	}
	return 0, fmt.Errorf("unknown auth style %q (want json, form, basic, private_key_jwt or client_secret_jwt)", s)
}

// String is the style's name in the configuration.
func (a AuthStyle) String() string {
	if int(a) < len(authStyleNames) {
		return authStyleNames[a]
	}
	return "json"
}

// Signs reports whether the style authenticates with a signed JWT.
func (a AuthStyle) Signs() bool { return a == AuthPrivateKeyJWT || a == AuthClientSecretJWT }

// requestFields are the parameters of a token request, whatever the style
// that encodes them: grant_type, scope, the extra params (never one of
// ReservedParams), and the client's authentication: its ID and secret in
// the body (json, form), nothing (basic: in a header), or its ID and a
// signed assertion (the JWT styles).
func (s *Source) requestFields(c *Credentials) (map[string]string, error) {
	f := make(map[string]string, len(c.Params)+4)
	for k, v := range c.Params {
		if !slices.Contains(ReservedParams, k) {
			f[k] = v
		}
	}
	f["grant_type"] = "client_credentials"
	if len(s.cfg.Scopes) > 0 {
		f["scope"] = strings.Join(s.cfg.Scopes, " ")
	}
	switch s.cfg.Auth {
	case AuthBasic:
	case AuthPrivateKeyJWT, AuthClientSecretJWT:
		audience := cmp.Or(s.cfg.AssertionAudience, s.cfg.TokenURL)
		var assertion string
		var err error
		if s.cfg.Auth == AuthPrivateKeyJWT {
			if c.Key == nil {
				return nil, errors.New("private_key_jwt: no client key")
			}
			assertion, err = c.Key.sign(c.ClientID, audience, time.Now())
		} else {
			assertion, err = signHMAC(c.ClientSecret, c.ClientID, audience, time.Now())
		}
		if err != nil {
			return nil, fmt.Errorf("signing the client assertion: %w", err)
		}
		f["client_id"] = c.ClientID
		f["client_assertion_type"] = AssertionType
		f["client_assertion"] = assertion
	default:
		f["client_id"] = c.ClientID
		f["client_secret"] = c.ClientSecret
	}
	return f, nil
}

// newRequest builds the token request of the source's auth style. The
// form and basic styles send what golang.org/x/oauth2/clientcredentials
// sends with AuthStyleInParams and AuthStyleInHeader, the JWT styles what
// RFC 7523 §2.2 says; every style's answer then goes through the one
// parser, parseAnswer.
func (s *Source) newRequest(ctx context.Context, c *Credentials) (*http.Request, error) {
	fields, err := s.requestFields(c)
	if err != nil {
		return nil, err
	}
	var body []byte
	contentType := "application/json"
	if s.cfg.Auth == AuthJSON {
		if body, err = json.Marshal(fields); err != nil {
			return nil, fmt.Errorf("encoding the token request: %w", err)
		}
	} else {
		form := url.Values{}
		for k, v := range fields {
			form.Set(k, v)
		}
		body, contentType = []byte(form.Encode()), "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.TokenURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range c.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("User-Agent", "caddy-desko-auth")
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	if s.cfg.Auth == AuthBasic {
		req.SetBasicAuth(url.QueryEscape(c.ClientID), url.QueryEscape(c.ClientSecret))
	}
	return req, nil
}

// maxRedirects is how many redirects a token request follows.
const maxRedirects = 2

// sameHostClient returns a copy of c (or a new client) whose redirect
// policy follows at most maxRedirects redirects, each to the same scheme
// and host (so that the secret in a re-sent body never reaches another
// server) and keeping the POST and its body (307 and 308: a 301, 302 or
// 303 would resend the token request as a GET without its body, which no
// token endpoint answers with a token). Any other redirect fails the
// request with a *redirectError.
func sameHostClient(c *http.Client) *http.Client {
	var nc http.Client
	if c != nil {
		nc = *c
	}
	if nc.Transport == nil {
		nc.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	nc.Timeout = 0 // the source sets a per-fetch deadline
	nc.CheckRedirect = checkRedirect
	return &nc
}

// checkRedirect is the token requests' redirect policy (sameHostClient).
func checkRedirect(req *http.Request, via []*http.Request) error {
	first := via[0]
	re := &redirectError{to: RedactURL(req.URL.String())}
	if req.Response != nil {
		re.status = req.Response.StatusCode
	}
	switch {
	case !sameOrigin(req.URL, first.URL):
		re.why = "it points to another scheme or host"
	case req.Method != first.Method:
		re.why = fmt.Sprintf("a %d would resend the token request as a %s without its body", re.status, req.Method)
	case len(via) > maxRedirects:
		re.why = fmt.Sprintf("%d redirects followed already", maxRedirects)
	default:
		return nil
	}
	return re
}

// sameOrigin reports whether a and b have the same scheme, host and port:
// the host in any case, a missing port as the scheme's default.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Hostname(), b.Hostname()) &&
		portOf(a) == portOf(b)
}

// portOf is u's port, or its scheme's default.
func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// post sends one token request with the credentials c, counts it for
// Status and the observer, and returns the parsed token.
func (s *Source) post(ctx context.Context, c *Credentials) (*Token, *Error) {
	if ep := s.cfg.Endpoint; ep != nil {
		if d := ep.pausedFor(time.Now()); d > 0 {
			// Not sent, so not counted: the endpoint asked every source
			// to wait.
			return nil, &Error{Kind: KindTransient, Message: "the token endpoint asked to wait (Retry-After); not sending", RetryAfter: d}
		}
		if err := ep.acquire(ctx); err != nil {
			return nil, &Error{Kind: KindTransient, Message: "no turn at the token endpoint within the timeout (token_concurrency)", Err: err}
		}
		defer ep.release()
	}
	start := time.Now()
	s.mu.Lock()
	s.lastRequestAt = start
	s.mu.Unlock()
	tok, terr := s.exchange(ctx, c)
	took := time.Since(start)
	if ep := s.cfg.Endpoint; ep != nil && terr != nil && terr.RetryAfter > 0 &&
		(terr.Status == http.StatusTooManyRequests || terr.Status == http.StatusServiceUnavailable) {
		ep.pause(time.Now().Add(terr.RetryAfter))
	}
	s.mu.Lock()
	s.fetches++
	s.lastFetchAt = time.Now().Round(0)
	s.mu.Unlock()
	if s.obs != nil {
		s.obs.Fetched(terr, took)
	}
	return tok, terr
}

// exchange sends the token request and reads its answer.
func (s *Source) exchange(ctx context.Context, c *Credentials) (*Token, *Error) {
	var phases dialPhases
	ctx = httptrace.WithClientTrace(ctx, phases.trace())
	req, err := s.newRequest(ctx, c)
	if err != nil {
		return nil, &Error{Kind: KindRefused, Message: "building the token request", Err: s.scrubber().Error(redactURLError(err))}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, s.transportError(err, &phases)
	}
	defer resp.Body.Close()
	skew := s.noteSkew(resp.Header.Get("Date"), time.Now())
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	if err != nil {
		return nil, &Error{Kind: KindTransient, Status: resp.StatusCode, Message: "reading the answer", Err: s.scrubber().Error(redactURLError(err))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// The status says what happened, whatever the body's size: a
		// refusal stays a refusal. Its message comes from the first MiB.
		return nil, s.statusError(resp, body[:min(len(body), maxBodyBytes)])
	}
	if len(body) > maxBodyBytes {
		return nil, &Error{Kind: KindInvalidAnswer, Status: resp.StatusCode, Message: "answer larger than 1 MiB"}
	}
	p, perr := parseAnswer(resp.Header.Get("Content-Type"), body, time.Now(), skew, s.cfg.DefaultTTL)
	if errors.Is(perr, errOAuthErrorAnswer) {
		return nil, s.statusError(resp, body)
	}
	if perr != nil {
		// perr may quote the answer (token_type), so it is scrubbed too.
		return nil, &Error{Kind: KindInvalidAnswer, Status: resp.StatusCode, Message: "unusable token answer", Err: s.scrubber().Error(perr)}
	}
	if p.usedDefaultTTL {
		s.warnDefaultTTL()
	}
	return p.Token, nil
}

// noteSkew reads the clock skew of the token endpoint from the Date header
// of an answer received at now: how far its clock is ahead of this
// machine's. Date has a resolution of one second: the endpoint's clock is
// taken to read the end of that second, the latest it can, so that a token
// looks a little shorter-lived, never longer. Under skewFloor the skew is
// taken for none; an answer without a usable Date keeps the last estimate.
// The first skew over skewWarn is logged (WARN), once per source. It
// returns the estimate.
func (s *Source) noteSkew(date string, now time.Time) time.Duration {
	at, err := http.ParseTime(date)
	if date == "" || err != nil {
		return s.serverSkew()
	}
	skew := at.Add(time.Second).Sub(now.Round(0))
	if skew.Abs() < skewFloor {
		skew = 0
	}
	s.skew.Store(int64(skew))
	if skew.Abs() > skewWarn {
		s.mu.Lock()
		warn := !s.warnedSkew
		s.warnedSkew = true
		s.mu.Unlock()
		if warn {
			s.log.Warn("the token endpoint's clock differs from this machine's; reading token expiries on the endpoint's clock",
				zap.Duration("skew", skew.Round(time.Second)))
		}
	}
	return skew
}

// serverSkew is the last estimate of how far the token endpoint's clock is
// ahead of this machine's (0 if none, or under skewFloor). The entries a
// source stores are on the endpoint's clock, so that instances whose
// clocks differ read the same instants from them.
func (s *Source) serverSkew() time.Duration { return time.Duration(s.skew.Load()) }
