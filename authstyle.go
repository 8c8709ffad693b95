package deskoauth

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
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
)

// ParseAuthStyle reads "json", "form" or "basic"; "" is json.
func ParseAuthStyle(s string) (AuthStyle, error) {
	switch s {
	case "", "json":
		return AuthJSON, nil
	case "form":
		return AuthForm, nil
	case "basic":
		return AuthBasic, nil
	}
	return 0, fmt.Errorf("unknown auth style %q (want json, form or basic)", s)
}

func (a AuthStyle) String() string {
	switch a {
	case AuthForm:
		return "form"
	case AuthBasic:
		return "basic"
	}
	return "json"
}

// newTokenRequest builds the token request of the engine's auth style. The
// form and basic styles send what golang.org/x/oauth2/clientcredentials
// sends with AuthStyleInParams and AuthStyleInHeader; every style's answer
// then goes through the one parser, parseTokenAnswer.
func (e *Engine) newTokenRequest(ctx context.Context) (*http.Request, error) {
	if e.cfg.AuthStyle == AuthJSON {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.TokenURL, bytes.NewReader(e.body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		return req, nil
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	if len(e.cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(e.cfg.Scopes, " "))
	}
	for k, v := range e.cfg.Params {
		form.Set(k, v)
	}
	if e.cfg.AuthStyle == AuthForm {
		form.Set("client_id", e.cfg.ClientID)
		form.Set("client_secret", e.cfg.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if e.cfg.AuthStyle == AuthBasic {
		req.SetBasicAuth(url.QueryEscape(e.cfg.ClientID), url.QueryEscape(e.cfg.ClientSecret))
	}
	return req, nil
}
