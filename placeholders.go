package deskoauth

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// This file expands {env.*} and {file.*} in the settings that may hold a
// secret, and names the placeholder, never the value, when one is empty.

// placeholderRE finds the {env.*} and {file.*} placeholders of a value, so
// errors can name them without ever showing the value.
var placeholderRE = regexp.MustCompile(`\{(?:env|file)\.[^{}]+\}`)

// expand resolves {env.*} and {file.*} placeholders in a field. An empty
// result is an error that names the field and its placeholders, never the
// value.
func expand(field, raw string) (string, error) {
	v, err := caddy.NewReplacer().ReplaceOrErr(raw, true, true)
	if err == nil && v != "" {
		return v, nil
	}
	// Say which part is wrong. Caddy's own errors quote the placeholder,
	// which for an unknown one may be a piece of a literal secret.
	if _, err := caddy.NewReplacer().ReplaceOrErr(raw, false, true); err != nil {
		return "", fmt.Errorf("%s: has a placeholder other than {env.*} and {file.*}; write a literal brace as \\{ or \\}", field)
	}
	var empty []string
	for _, ph := range placeholderRE.FindAllString(raw, -1) {
		if s, _ := caddy.NewReplacer().ReplaceOrErr(ph, false, false); s == "" {
			empty = append(empty, ph)
		}
	}
	if len(empty) == 0 {
		return "", fmt.Errorf("%s: is empty", field)
	}
	return "", fmt.Errorf("%s: placeholder %s expanded to an empty value (unset variable or unreadable file)", field, strings.Join(empty, ", "))
}

// expandValues expands the {env.*} and {file.*} placeholders of the values
// of a param or token_header map, like expand does for the secret. It
// returns the expanded map (the handler's own stays as written, so that
// /config/ shows placeholders, never values) and the values that came from
// placeholders, which are scrubbed from errors like the secret. A literal
// empty value stays empty.
func expandValues(field string, m map[string]string) (map[string]string, []string, error) {
	if m == nil {
		return nil, nil, nil
	}
	out := make(map[string]string, len(m))
	var secrets []string
	for k, v := range m {
		if v == "" {
			out[k] = v
			continue
		}
		x, err := expand(field+" "+k, v)
		if err != nil {
			return nil, nil, err
		}
		out[k] = x
		if x != v {
			secrets = append(secrets, x)
		}
	}
	return out, secrets, nil
}
