package deskoauth

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
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

// roundTripForm gets a token the RFC 6749 way with x/oauth2's
// clientcredentials, with a fixed AuthStyle (never auto-detection, which
// would send a second request after a failure), through the engine's own
// client (redirect policy, TLS, extra headers). Its answers and errors are
// turned into the engine's, so every style is classified, checked and
// logged alike.
func (e *Engine) roundTripForm(ctx context.Context) (*Token, *TokenError) {
	cc := clientcredentials.Config{
		ClientID:       e.cfg.ClientID,
		ClientSecret:   e.cfg.ClientSecret,
		TokenURL:       e.cfg.TokenURL,
		Scopes:         e.cfg.Scopes,
		EndpointParams: url.Values{},
		AuthStyle:      oauth2.AuthStyleInParams,
	}
	if e.cfg.AuthStyle == AuthBasic {
		cc.AuthStyle = oauth2.AuthStyleInHeader
	}
	for k, v := range e.cfg.Params {
		cc.EndpointParams.Set(k, v)
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, e.client)
	ot, err := cc.Token(ctx)
	if err != nil {
		var re *oauth2.RetrieveError
		var ue *url.Error
		switch {
		case errors.As(err, &re) && re.Response != nil:
			return nil, e.statusError(re.Response, re.Body)
		case errors.As(err, &ue) || ctx.Err() != nil:
			return nil, e.transportError(err)
		default: // x/oauth2 could not parse a 2xx answer
			return nil, &TokenError{Kind: KindInvalidResponse, Status: http.StatusOK, Message: "unusable token answer", Err: e.scrubErr(err)}
		}
	}
	now := e.clock.Now()
	var ttl time.Duration
	ok := false
	switch {
	case ot.ExpiresIn > 0 && ot.ExpiresIn < math.MaxInt32 && time.Duration(ot.ExpiresIn)*time.Second <= maxExpiresIn:
		ttl, ok = time.Duration(ot.ExpiresIn)*time.Second, true
	case ot.ExpiresIn == 0 && !ot.Expiry.IsZero():
		// A form-encoded answer: x/oauth2 only gives the expiry.
		if d := time.Until(ot.Expiry).Round(time.Second); d > 0 && d <= maxExpiresIn {
			ttl, ok = d, true
		}
	}
	var tokenType *string
	if ot.TokenType != "" {
		tokenType = &ot.TokenType
	}
	tok, perr := newParsedToken(ot.AccessToken, tokenType, ttl, ok, now, e.cfg.DefaultTTL)
	return e.accept(tok, perr, http.StatusOK)
}
