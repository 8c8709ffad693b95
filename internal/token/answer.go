package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// This file reads a token endpoint's answer, whatever the auth style: the
// access token, its type, and its expiry from expires_in and the JWT exp
// claim.

// parsed is a token with how its expiry was decided.
type parsed struct {
	*Token
	usedDefaultTTL bool
}

// errOAuthErrorAnswer is a 2xx answer that holds an OAuth error and no
// token (some servers answer errors with 200): it is reported like a
// non-2xx answer.
var errOAuthErrorAnswer = errors.New("answer is an OAuth error")

// answerFields are the fields of a token answer the engine reads, by their
// exact names.
type answerFields struct {
	accessToken *string
	tokenType   *string
	expiresIn   json.RawMessage // a JSON number or string, or absent
	scope       string          // the scopes granted, if the answer says
	hasError    bool            // an "error" field is present
}

// parseAnswer is the one parser of 2xx token answers, whatever the
// auth style: JSON, or RFC 6749-style form encoding when the Content-Type
// says so (application/x-www-form-urlencoded, or text/plain that is not
// a JSON object). Field names are exact (ACCESS_TOKEN is not
// access_token), and an answer that holds one of the fields read twice is
// refused. The expiry comes from expires_in (a number or numeric string of
// seconds; fractions are truncated) and the JWT exp claim, whichever is
// earlier; missing, non-positive or absurd values are ignored; if neither
// is usable, defaultTTL applies. No token lives less than minTokenLifetime.
// skew is how far the token endpoint's clock is ahead of now's: the exp
// claim is read on the endpoint's clock.
func parseAnswer(contentType string, body []byte, now time.Time, skew, defaultTTL time.Duration) (parsed, error) {
	var f answerFields
	var err error
	if isFormAnswer(contentType, body) {
		f, err = formAnswerFields(body)
		if err == nil && f.accessToken == nil && !f.hasError {
			return parsed{}, errors.New("answer is neither a JSON object nor a form-encoded token")
		}
	} else {
		f, err = jsonAnswerFields(body)
	}
	if err != nil {
		return parsed{}, err
	}
	return f.token(now, skew, defaultTTL)
}

// isFormAnswer tells a form-encoded answer from a JSON one.
func isFormAnswer(contentType string, body []byte) bool {
	mt, _, _ := mime.ParseMediaType(contentType)
	switch mt {
	case "application/x-www-form-urlencoded":
		return true
	case "text/plain":
		return !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{"))
	}
	return false
}

// jsonAnswerFields reads the fields of a JSON object answer.
func jsonAnswerFields(body []byte) (answerFields, error) {
	var f answerFields
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return f, errors.New("answer is not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return f, errors.New("answer is not valid JSON")
		}
		key, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return f, errors.New("answer is not valid JSON")
		}
		switch key {
		case "access_token", "token_type", "expires_in":
			if seen[key] {
				return f, fmt.Errorf("answer has %s more than once", key)
			}
			seen[key] = true
		case "error":
			f.hasError = string(raw) != "null"
			continue
		case "scope":
			_ = json.Unmarshal(raw, &f.scope) // a string, or it says nothing
			continue
		default:
			continue
		}
		if string(raw) == "null" {
			continue
		}
		switch key {
		case "access_token", "token_type":
			var v string
			if err := json.Unmarshal(raw, &v); err != nil {
				return f, fmt.Errorf("%s is not a string", key)
			}
			if key == "access_token" {
				f.accessToken = &v
			} else {
				f.tokenType = &v
			}
		default:
			f.expiresIn = raw
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return f, errors.New("answer is not valid JSON")
	}
	// Only whitespace may follow (dec.More misses a stray '}' or ']').
	if _, err := dec.Token(); err != io.EOF {
		return f, errors.New("answer has data after the JSON object")
	}
	return f, nil
}

// formAnswerFields reads the fields of a form-encoded answer.
func formAnswerFields(body []byte) (answerFields, error) {
	var f answerFields
	vals, err := url.ParseQuery(string(bytes.TrimSpace(body)))
	if err != nil {
		return f, errors.New("answer is neither JSON nor a valid form")
	}
	for _, key := range []string{"access_token", "token_type", "expires_in"} {
		vs := vals[key]
		if len(vs) > 1 {
			return f, fmt.Errorf("answer has %s more than once", key)
		}
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		switch key {
		case "access_token":
			f.accessToken = &v
		case "token_type":
			f.tokenType = &v
		default:
			f.expiresIn, _ = json.Marshal(v)
		}
	}
	f.hasError = vals.Has("error")
	f.scope = vals.Get("scope")
	return f, nil
}

// token checks the fields and builds the token.
func (f answerFields) token(now time.Time, skew, defaultTTL time.Duration) (parsed, error) {
	if f.accessToken == nil || *f.accessToken == "" {
		if f.hasError {
			return parsed{}, errOAuthErrorAnswer
		}
		return parsed{}, errors.New("answer has no access_token")
	}
	ttl, ok := parseExpiresIn(f.expiresIn)
	p, err := newParsed(*f.accessToken, f.tokenType, ttl, ok, now, skew, defaultTTL)
	if err == nil {
		p.granted = grantedScopes(f.scope, p.Value)
	}
	return p, err
}

// newParsed checks an access token and decides its expiry: ttl (ok)
// is what expires_in said; the JWT exp claim wins when it is earlier;
// defaultTTL applies when neither is usable; minTokenLifetime is the floor.
// The exp claim is compared with now on the token endpoint's clock, skew
// ahead of this one.
func newParsed(at string, tokenType *string, ttl time.Duration, ok bool, now time.Time, skew, defaultTTL time.Duration) (parsed, error) {
	if at == "" {
		return parsed{}, errors.New("answer has no access_token")
	}
	if !ValidValue(at) {
		return parsed{}, errors.New("access_token contains characters not allowed in an HTTP header")
	}
	if tokenType != nil && !strings.EqualFold(strings.TrimSpace(*tokenType), "bearer") {
		return parsed{}, fmt.Errorf("token_type is %s; only Bearer tokens are supported", quoteExcerpt(*tokenType))
	}
	if jwtExp, jok := jwtExpiry(at); jok {
		if d := jwtExp.Sub(now.Round(0).Add(skew)); d > 0 && d <= maxExpiresIn {
			if !ok || d < ttl {
				ttl, ok = d, true
			}
		} else if !ok && d <= 0 {
			return parsed{}, errors.New("access_token's exp claim is in the past and there is no expires_in")
		}
	}
	var p parsed
	if !ok {
		ttl, p.usedDefaultTTL = defaultTTL, true
	}
	// Whatever the answer says (expires_in 1, a JWT exp a moment away, a
	// tiny default_ttl), a token is used for a while: no fetch loop.
	ttl = max(ttl, minTokenLifetime)
	p.Token = newToken(at, now, now.Add(ttl), now.Round(0).Add(ttl))
	return p, nil
}

// parseExpiresIn reads expires_in as a JSON number or numeric string.
func parseExpiresIn(raw json.RawMessage) (time.Duration, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false
	}
	s := string(raw)
	if s[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
		s = strings.TrimSpace(s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 1 {
		return 0, false
	}
	if f > maxExpiresIn.Seconds() {
		return 0, false
	}
	return time.Duration(math.Floor(f)) * time.Second, true
}

// ValidValue reports whether s holds only visible ASCII, so it can go
// into a header with no chance of header injection.
func ValidValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// jwtExpiry returns the exp claim of a JWT, decoding the payload only (no
// signature check: the token is opaque to us and only its expiry matters).
func jwtExpiry(tok string) (time.Time, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(parts[1]) > maxBodyBytes {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == "" {
		return time.Time{}, false
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 || f > 1e11 {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}
