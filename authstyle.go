package deskoauth

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// authStyle is how the client authenticates to the token endpoint.
type authStyle int

// The client authentication styles.
const (
	// authJSON sends grant_type, client_id, client_secret and scope in a
	// JSON body: Desko's documented format.
	authJSON authStyle = iota
	// authForm is RFC 6749 client_secret_post: the credentials in an
	// application/x-www-form-urlencoded body.
	authForm
	// authBasic is RFC 6749 client_secret_basic: the credentials, each
	// form-encoded first (§2.3.1), in an Authorization: Basic header.
	authBasic
)

// parseAuthStyle reads "json", "form" or "basic"; "" is json.
func parseAuthStyle(s string) (authStyle, error) {
	switch s {
	case "", "json":
		return authJSON, nil
	case "form":
		return authForm, nil
	case "basic":
		return authBasic, nil
	}
	return 0, fmt.Errorf("unknown auth style %q (want json, form or basic)", s)
}

func (a authStyle) String() string {
	switch a {
	case authForm:
		return "form"
	case authBasic:
		return "basic"
	}
	return "json"
}

// newTokenRequest builds the token request of the engine's auth style. The
// form and basic styles send what golang.org/x/oauth2/clientcredentials
// sends with AuthStyleInParams and AuthStyleInHeader; every style's answer
// then goes through the one parser, parseTokenAnswer.
func (e *tokenEngine) newTokenRequest(ctx context.Context) (*http.Request, error) {
	if e.cfg.AuthStyle == authJSON {
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
	if e.cfg.AuthStyle == authForm {
		form.Set("client_id", e.cfg.ClientID)
		form.Set("client_secret", e.cfg.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if e.cfg.AuthStyle == authBasic {
		req.SetBasicAuth(url.QueryEscape(e.cfg.ClientID), url.QueryEscape(e.cfg.ClientSecret))
	}
	return req, nil
}
