package deskoauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/deskoproxy/caddy-desko-auth/internal/token"
)

// This file reads tenants' credentials from credentials_dir:
// <dir>/<tenant>/client_id, <dir>/<tenant>/client_secret and, optionally,
// <dir>/<tenant>/scope. Everything is read through an os.Root opened on
// the folder, so that no tenant name and no symlink can lead outside it;
// a tenant name is checked before (validTenantName) anyway.

// The files of a tenant in credentials_dir.
const (
	dirClientID     = "client_id"
	dirClientSecret = "client_secret"
	dirScope        = "scope"
)

// errNoTenant is reading a tenant whose folder does not exist.
var errNoTenant = errors.New("no such tenant")

// credentialsDir is an opened credentials_dir.
type credentialsDir struct {
	path string
	root *os.Root
}

func openCredentialsDir(path string) (*credentialsDir, error) {
	root, err := os.OpenRoot(path)
	if err != nil {
		return nil, fmt.Errorf("credentials_dir: %w", err)
	}
	return &credentialsDir{path: path, root: root}, nil
}

func (d *credentialsDir) Close() error { return d.root.Close() }

// read reads a tenant's file, trimmed of one trailing line break. A file
// (or tenant folder) that does not exist is fs.ErrNotExist; a file
// reached through a symlink that leaves the folder is refused by os.Root.
func (d *credentialsDir) read(tenant, file string) (string, error) {
	f, err := d.root.Open(tenant + "/" + file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCredentialFile))
	if err != nil {
		return "", err
	}
	b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	return string(b), nil
}

// exists reports whether the tenant's folder exists (and is a folder
// inside the credentials_dir).
func (d *credentialsDir) exists(tenant string) bool {
	fi, err := d.root.Stat(tenant)
	return err == nil && fi.IsDir()
}

// credentials reads a tenant's client ID and secret, and its scopes (nil
// when it has no scope file). errNoTenant when its folder is missing.
func (d *credentialsDir) credentials(tenant string) (*token.Credentials, []string, error) {
	if !d.exists(tenant) {
		return nil, nil, errNoTenant
	}
	var c token.Credentials
	var err error
	if c.ClientID, err = d.read(tenant, dirClientID); err != nil || c.ClientID == "" {
		return nil, nil, fileProblem(dirClientID, err)
	}
	if c.ClientSecret, err = d.read(tenant, dirClientSecret); err != nil || c.ClientSecret == "" {
		return nil, nil, fileProblem(dirClientSecret, err)
	}
	scope, err := d.read(tenant, dirScope)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fileProblem(dirScope, err)
	}
	return &c, strings.Fields(scope), nil
}

// fileProblem says what is wrong with a tenant's file, never quoting it.
func fileProblem(file string, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%s is empty", file)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", file)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: permission denied", file)
	}
	return fmt.Errorf("%s cannot be read (or leads outside credentials_dir)", file)
}

// dirCredentials is the token.CredentialSource of a tenant of a
// credentials_dir: its files are read again each time it is asked (before
// each token request, and while the token endpoint refuses them), with the
// rotation rules of {file.*} values: unreadable or empty files keep the
// last good credentials, with one WARN per outage. A tenant whose folder
// is gone is reported to gone, once.
type dirCredentials struct {
	dir        *credentialsDir
	tenant     string
	log        *zap.Logger // the block's: each line names the tenant itself
	unreadable prometheus.Counter
	gone       func()

	mu       sync.Mutex
	cur      *token.Credentials
	failing  bool
	reported bool
}

// Current implements token.CredentialSource.
func (d *dirCredentials) Current() *token.Credentials {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, _, err := d.dir.credentials(d.tenant)
	switch {
	case errors.Is(err, errNoTenant):
		if !d.reported {
			d.reported = true
			d.log.Info("a tenant's folder is gone from credentials_dir; the tenant is released", zap.String("tenant", d.tenant))
			go d.gone()
		}
		return d.cur
	case err != nil:
		d.unreadable.Inc()
		if !d.failing {
			d.failing = true
			d.log.Warn("a tenant's credentials cannot be read; keeping the last good ones until they can",
				zap.String("tenant", d.tenant), zap.String("why", err.Error()))
		}
		return d.cur
	}
	if d.failing {
		d.failing = false
		d.log.Info("a tenant's credentials can be read again", zap.String("tenant", d.tenant))
	}
	if sameCredentials(c, d.cur) {
		return d.cur
	}
	d.cur = c
	return c
}

// missCache remembers, for a few seconds, the tenant values that named
// nothing, so that a flood of unknown values costs at most one look in
// credentials_dir per value per missFor, in bounded memory.
type missCache struct {
	mu sync.Mutex
	m  map[string]time.Time // value → until
}

// missFor is how long a miss is remembered; maxMisses bounds the misses
// remembered.
const (
	missFor   = 5 * time.Second
	maxMisses = 4096
)

// has reports whether v missed less than missFor ago.
func (c *missCache) has(v string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.m[v]
	return ok && now.Before(until)
}

// add remembers that v missed.
func (c *missCache) add(v string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]time.Time{}
	}
	if len(c.m) >= maxMisses {
		for k, until := range c.m {
			if !now.Before(until) {
				delete(c.m, k)
			}
		}
		for k := range c.m { // still full: forget any one
			if len(c.m) < maxMisses {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[v] = now.Add(missFor)
}
