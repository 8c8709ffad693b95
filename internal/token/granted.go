package token

import (
	"encoding/base64"
	"encoding/json"
	"strings"
)

// grantedScopes is the scopes a token was granted: the answer's scope
// field, else the JWT's scope claim (a string) or scp claim (a string or
// an array of strings), else "".
func grantedScopes(answer, tok string) string {
	if s := strings.Join(strings.Fields(answer), " "); s != "" {
		return s
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(parts[1]) > maxBodyBytes {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return ""
	}
	var claims struct {
		Scope any `json:"scope"`
		Scp   any `json:"scp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	for _, c := range []any{claims.Scope, claims.Scp} {
		switch v := c.(type) {
		case string:
			if s := strings.Join(strings.Fields(v), " "); s != "" {
				return s
			}
		case []any:
			var words []string
			for _, w := range v {
				if s, ok := w.(string); ok && strings.TrimSpace(s) != "" {
					words = append(words, strings.TrimSpace(s))
				}
			}
			if len(words) > 0 {
				return strings.Join(words, " ")
			}
		}
	}
	return ""
}
