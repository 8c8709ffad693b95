package deskoauth

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file is where a token request's credentials come from: the values
// as configured (literals or {env.*}/{file.*} placeholders), expanded at
// load, and — for values read from files — read again while the source
// runs, so that a rotated secret is used without a reload.

// credentialValues are the values a token request authenticates with, as
// configured.
type credentialValues struct {
	clientID, clientSecret string
	params, headers        map[string]string
	// key, keyID and keyAlg are the private key of private_key_jwt.
	key, keyID, keyAlg string
	// hmac says the secret signs client_secret_jwt assertions (HS256).
	hmac bool
}

func (h *Handler) credentialValues() credentialValues {
	return credentialValues{clientID: h.ClientID, clientSecret: h.ClientSecret, params: h.Params, headers: h.TokenHeaders,
		key: h.ClientKey, keyID: h.ClientKeyID, keyAlg: h.ClientKeyAlg, hmac: h.auth == token.AuthClientSecretJWT}
}

// expand resolves the placeholders. An empty result is an error that names
// the field and its placeholders, never the value.
func (v credentialValues) expand() (*token.Credentials, error) {
	var c token.Credentials
	var err error
	if c.ClientID, err = expand("client_id", v.clientID); err != nil {
		return nil, err
	}
	if v.clientSecret != "" {
		if c.ClientSecret, err = expand("client_secret", v.clientSecret); err != nil {
			return nil, err
		}
		if v.hmac && len(c.ClientSecret) < token.MinHMACSecret {
			return nil, fmt.Errorf("client_secret: client_secret_jwt signs with HS256, which needs a secret of at least %d bytes", token.MinHMACSecret)
		}
	}
	if v.key != "" {
		pem, err := expand("client_key", v.key)
		if err != nil {
			return nil, err
		}
		if c.Key, err = token.ParseSigningKey([]byte(pem), v.keyID, v.keyAlg); err != nil {
			return nil, fmt.Errorf("client_key: %s %v", placeholderRE.FindString(v.key), err)
		}
	}
	var paramSecrets, headerSecrets []string
	if c.Params, paramSecrets, err = expandValues("param", v.params); err != nil {
		return nil, err
	}
	if c.Headers, headerSecrets, err = expandValues("token_header", v.headers); err != nil {
		return nil, err
	}
	for k, v := range c.Headers {
		if !httpguts.ValidHeaderFieldValue(v) {
			return nil, fmt.Errorf("token_header %s: the expanded value holds control characters (a line break in a file?)", k)
		}
	}
	c.Secrets = append(paramSecrets, headerSecrets...)
	return &c, nil
}

// files are the files the values' {file.*} placeholders read, sorted.
func (v credentialValues) files() []string {
	var out []string
	add := func(s string) {
		for _, ph := range placeholderRE.FindAllString(s, -1) {
			if name, ok := strings.CutPrefix(ph[1:len(ph)-1], "file."); ok {
				out = append(out, name)
			}
		}
	}
	add(v.clientID)
	add(v.clientSecret)
	add(v.key)
	for _, m := range []map[string]string{v.params, v.headers} {
		for _, s := range m {
			add(s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// credentialSource returns the token.CredentialSource for values first
// expanded to c: static when no value comes from a file, else one that
// reads the files again.
func credentialSource(v credentialValues, c *token.Credentials, log *zap.Logger, m *sourceMetrics) token.CredentialSource {
	files := v.files()
	if len(files) == 0 {
		return (*token.Static)(c)
	}
	return &fileCredentials{values: v, files: files, log: log, unreadable: m.credentials[credentialsUnreadable], cur: c}
}

// maxCredentialFile is the most of a credentials file that is read, as
// for Caddy's {file.*} placeholder.
const maxCredentialFile = 1 << 20

// fileCredentials is the token.CredentialSource of credentials read (in
// part) from files. It reads them again each time it is asked (before
// each token request, and while the token endpoint refuses the ones it
// has): a file rewritten in place, replaced by a rename, or reached
// through a swapped symlink (Kubernetes' ..data) is picked up. A file
// that is missing, unreadable or empty keeps the last good credentials in
// use: never an empty secret, and never half of a rotation.
type fileCredentials struct {
	values     credentialValues
	files      []string
	log        *zap.Logger
	unreadable prometheus.Counter

	mu      sync.Mutex
	cur     *token.Credentials
	failing map[string]bool // files unreadable at the last look
}

// Current implements token.CredentialSource.
func (f *fileCredentials) Current() *token.Credentials {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.readable() {
		return f.cur
	}
	c, err := f.values.expand()
	if err != nil { // a file changed between the look and the read
		f.log.Warn("reading the credentials again failed; keeping the last good ones", zap.Error(err))
		return f.cur
	}
	if sameCredentials(c, f.cur) {
		return f.cur
	}
	f.cur = c
	return c
}

// readable looks at every file, and logs the ones that turn unreadable or
// empty (once, until they are readable again) and the ones that recover;
// f.mu is held.
func (f *fileCredentials) readable() bool {
	ok := true
	for _, name := range f.files {
		err := checkCredentialFile(name)
		switch {
		case err != nil && !f.failing[name]:
			if f.failing == nil {
				f.failing = map[string]bool{}
			}
			f.failing[name] = true
			f.log.Warn("a credentials file cannot be read; keeping the last good credentials until it can",
				zap.String("file", name), zap.String("why", err.Error()))
		case err == nil && f.failing[name]:
			delete(f.failing, name)
			f.log.Info("a credentials file can be read again", zap.String("file", name))
		}
		if err != nil {
			ok = false
			f.unreadable.Inc()
		}
	}
	return ok
}

// checkCredentialFile reports why name cannot give a credential: it cannot
// be read, or it holds nothing but a line break. The error never quotes
// the content.
func checkCredentialFile(name string) error {
	fd, err := os.Open(name)
	if err != nil {
		if os.IsNotExist(err) {
			return fmt.Errorf("it does not exist")
		}
		if os.IsPermission(err) {
			return fmt.Errorf("permission denied")
		}
		return fmt.Errorf("it cannot be opened")
	}
	defer fd.Close()
	b, err := io.ReadAll(io.LimitReader(fd, maxCredentialFile))
	if err != nil {
		return fmt.Errorf("it cannot be read")
	}
	if len(bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))) == 0 {
		return fmt.Errorf("it is empty")
	}
	return nil
}

// sameCredentials reports whether a and b hold the same values.
func sameCredentials(a, b *token.Credentials) bool {
	return a.ClientID == b.ClientID && a.ClientSecret == b.ClientSecret && a.Key.Equal(b.Key) &&
		maps.Equal(a.Params, b.Params) && maps.Equal(a.Headers, b.Headers)
}
