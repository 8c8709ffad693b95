package deskoauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// This file sends the token request: the HTTP client and its redirect
// policy, the fixed headers, and the request in Desko's JSON style (the
// other styles are in authstyle.go).

// sameHostClient returns a copy of c (or a new client) whose redirect
// policy only follows redirects to the same scheme and host, so the secret
// in a re-sent body never reaches another server.
func sameHostClient(c *http.Client, headers map[string]string) *http.Client {
	var nc http.Client
	if c != nil {
		nc = *c
	}
	if nc.Transport == nil {
		nc.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	nc.Transport = headerTransport{base: nc.Transport, headers: headers}
	nc.Timeout = 0 // the engine sets a per-request deadline
	nc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 3 {
			return errors.New("stopped after 3 redirects")
		}
		first := via[0].URL
		if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
			return fmt.Errorf("%w (%s://%s)", errCrossHostRedirect, req.URL.Scheme, req.URL.Host)
		}
		return nil
	}
	return &nc
}

// headerTransport adds the engine's fixed headers to every token request.
type headerTransport struct {
	base    http.RoundTripper
	headers map[string]string
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", "caddy-desko-auth")
	for k, v := range t.headers {
		r.Header.Set(k, v)
	}
	return t.base.RoundTrip(r)
}

// CloseIdleConnections closes the underlying transport's idle connections.
func (t headerTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// request performs one token request, counts it for Status and the
// observer, and returns the parsed token.
func (e *tokenEngine) request(ctx context.Context) (*accessToken, *tokenError) {
	start := e.clock.Now()
	e.mu.Lock()
	e.lastRequestAt = start
	e.mu.Unlock()
	tok, terr := e.roundTrip(ctx)
	took := e.clock.Now().Sub(start)
	e.mu.Lock()
	e.fetches++
	e.lastFetchAt = e.clock.Now().Round(0)
	e.mu.Unlock()
	if e.obs != nil {
		result := "ok"
		if terr != nil {
			result = terr.Kind.String()
		}
		e.obs.FetchDone(result, took)
	}
	return tok, terr
}

// roundTrip sends the token request and parses its answer.
func (e *tokenEngine) roundTrip(ctx context.Context) (*accessToken, *tokenError) {
	req, err := e.newTokenRequest(ctx)
	if err != nil {
		return nil, &tokenError{Kind: kindRejected, Message: "building the token request", Err: e.scrubErr(redactURLError(err))}
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, e.transportError(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	if err != nil {
		return nil, &tokenError{Kind: kindTransient, Status: resp.StatusCode, Message: "reading the answer", Err: e.scrubErr(redactURLError(err))}
	}
	if len(body) > maxBodyBytes {
		return nil, &tokenError{Kind: kindInvalidResponse, Status: resp.StatusCode, Message: "answer larger than 1 MiB"}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, e.statusError(resp, body)
	}
	tok, perr := parseTokenAnswer(resp.Header.Get("Content-Type"), body, e.clock.Now(), e.cfg.DefaultTTL)
	if errors.Is(perr, errOAuthErrorAnswer) {
		return nil, e.statusError(resp, body)
	}
	return e.accept(tok, perr, resp.StatusCode)
}
