package deskotest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// clientsDir makes the token endpoint accept the clients of a folder laid
// out as desko_auth's credentials_dir: <dir>/<tenant>/client_id and
// <dir>/<tenant>/client_secret. It is read on demand: the index from
// client ID to folder is built at the first token request and built again
// when a client ID is not in it (at most once a second), and a client's
// secret is read from its folder at each token request, so that folders
// added, changed or removed while the stand-in runs are seen. Everything
// is read through an os.Root: nothing outside the folder is read.
type clientsDir struct {
	root *os.Root

	mu      sync.Mutex
	index   map[string]string // client ID → tenant folder
	scanned time.Time
}

// rescanEvery bounds how often a client ID that is not in the index makes
// the folder be read again.
const rescanEvery = time.Second

// SetClientsDir makes the token endpoint also accept every client of dir,
// a folder laid out as desko_auth's credentials_dir
// (<dir>/<tenant>/client_id, <dir>/<tenant>/client_secret), read on
// demand. The bench's 10,000 tenants are registered this way.
func (s *Server) SetClientsDir(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("clients dir: %w", err)
	}
	s.mu.Lock()
	s.dir = &clientsDir{root: root}
	s.mu.Unlock()
	return nil
}

// accepts reports whether id and secret are those of one of the folder's
// clients.
func (c *clientsDir) accepts(id, secret string) bool {
	if id == "" || secret == "" {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tenant, ok := c.index[id]
	if !ok && time.Since(c.scanned) >= rescanEvery {
		c.scanLocked()
		tenant, ok = c.index[id]
	}
	if !ok {
		return false
	}
	got, err := c.read(tenant, "client_id")
	if err != nil || got != id { // changed since the scan
		return false
	}
	want, err := c.read(tenant, "client_secret")
	return err == nil && want != "" && want == secret
}

// scanLocked builds the index again; c.mu is held.
func (c *clientsDir) scanLocked() {
	c.scanned = time.Now()
	d, err := c.root.Open(".")
	if err != nil {
		return
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return
	}
	index := make(map[string]string, len(entries))
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if id, err := c.read(e.Name(), "client_id"); err == nil && id != "" {
			index[id] = e.Name()
		}
	}
	c.index = index
}

// read reads a tenant's file, without its trailing line break.
func (c *clientsDir) read(tenant, file string) (string, error) {
	f, err := c.root.Open(tenant + "/" + file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("empty")
	}
	return string(bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))), nil
}
