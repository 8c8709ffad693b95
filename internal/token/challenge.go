package token

import (
	"net/http"
	"strings"
)

// This file reads what an upstream's 401 says about the token: the error
// of its Bearer challenge (RFC 6750 §3), in WWW-Authenticate's syntax (RFC
// 9110 §11.6.1: challenges of a scheme and auth-params, separated by
// commas, in one or more header fields).

// SignalOf returns what the WWW-Authenticate fields of a 401 answer say
// about a bearer token: SaidInvalidToken when a Bearer challenge has
// error="invalid_token", SaidOther when Bearer challenges name only other
// errors, SaidNothing otherwise (no Bearer challenge, or one without an
// error).
func SignalOf(h http.Header) Signal {
	said := SaidNothing
	for _, v := range h.Values("WWW-Authenticate") {
		for _, c := range parseChallenges(v) {
			if !strings.EqualFold(c.scheme, "Bearer") {
				continue
			}
			switch e, ok := c.params["error"]; {
			case !ok:
			case e == "invalid_token":
				return SaidInvalidToken
			default:
				said = SaidOther
			}
		}
	}
	return said
}

// challenge is one challenge of a WWW-Authenticate field.
type challenge struct {
	scheme string
	params map[string]string // auth-param names in lower case
}

// parseChallenges reads the challenges of one WWW-Authenticate field
// value. It is lenient: an item it cannot read is skipped.
func parseChallenges(v string) []challenge {
	var out []challenge
	for _, item := range splitItems(v) {
		name, rest, isParam := param(item)
		if !isParam {
			// A new challenge: its scheme, then nothing, a token68 or its
			// first auth-param.
			scheme, after, _ := strings.Cut(item, " ")
			out = append(out, challenge{scheme: scheme, params: map[string]string{}})
			name, rest, isParam = param(strings.TrimSpace(after))
		}
		if isParam && len(out) > 0 {
			out[len(out)-1].params[strings.ToLower(name)] = unquote(rest)
		}
	}
	return out
}

// param splits "name = value" (a token, optional spaces, '=', and a value
// that is not only '=' padding, which would make it a token68).
func param(item string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(item, "=")
	name, value = strings.TrimSpace(name), strings.TrimSpace(value)
	if !ok || name == "" || strings.ContainsAny(name, " \t\"") || strings.Trim(value, "=") == "" {
		return "", "", false
	}
	return name, value, true
}

// splitItems splits a field value at the commas outside quoted strings,
// trimming each item and dropping empty ones.
func splitItems(v string) []string {
	var items []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			items = append(items, v[start:i])
			start = i + 1
		}
	}
	items = append(items, v[start:])
	out := items[:0]
	for _, it := range items {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out
}

// unquote reads a token or a quoted-string.
func unquote(v string) string {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return v
	}
	var b strings.Builder
	for i := 1; i < len(v)-1; i++ {
		if v[i] == '\\' && i+1 < len(v)-1 {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}
