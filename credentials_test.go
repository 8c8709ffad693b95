package deskoauth

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deskoproxy/caddy-desko-auth/internal/deskotest"
	"github.com/deskoproxy/caddy-desko-auth/internal/scrub/scrubtest"
)

// Credentials that change without a reload, through real Caddy processes
// (in parallel with each other and the fleet tests): a {file.*} secret
// rewritten in place, replaced by a rename, or reached through a swapped
// symlink; rotations with a grace period and hard ones, with 3 s tokens;
// a file that vanishes or turns empty mid-run.

const (
	rotClientID = "rot-client-id"
	// The secrets share no 8 bytes with each other or with anything else
	// in the log: the leak check counts any 8 bytes of a secret as a leak.
	rotSecretA = "Kq7-alpha-Zx93pLm"
	rotSecretB = "Wv2_bravo_Tn58rQe"
	rotTTL     = 3 * time.Second
	// rotPace is the load's pace: 25 requests a second, so that no window
	// of client errors (a refused secret's 502s last a second or more)
	// falls between two.
	rotPace = 40 * time.Millisecond
)

// secretLayout is a way a secret manager changes a file.
type secretLayout struct {
	name string
	// setup writes the first secret into dir and returns the path the
	// placeholder names.
	setup func(t *testing.T, dir, secret string) string
	// rotate puts a new secret in place.
	rotate func(t *testing.T, dir, secret string)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

var secretLayouts = []secretLayout{
	{
		name: "rewritten in place",
		setup: func(t *testing.T, dir, s string) string {
			p := filepath.Join(dir, "secret")
			writeFile(t, p, s+"\n")
			return p
		},
		rotate: func(t *testing.T, dir, s string) { writeFile(t, filepath.Join(dir, "secret"), s+"\n") },
	},
	{
		name: "replaced by a rename",
		setup: func(t *testing.T, dir, s string) string {
			p := filepath.Join(dir, "secret")
			writeFile(t, p, s+"\n")
			return p
		},
		rotate: func(t *testing.T, dir, s string) {
			tmp := filepath.Join(dir, ".secret.tmp")
			writeFile(t, tmp, s+"\n")
			if err := os.Rename(tmp, filepath.Join(dir, "secret")); err != nil {
				t.Fatal(err)
			}
		},
	},
	{
		// Kubernetes secret volumes: <key> -> ..data/<key>, ..data -> a
		// timestamped folder, swapped by renaming a new ..data symlink over
		// the old one.
		name: "a swapped ..data symlink",
		setup: func(t *testing.T, dir, s string) string {
			swapData(t, dir, "..2026_11_30_01", s)
			if err := os.Symlink(filepath.Join("..data", "client_secret"), filepath.Join(dir, "client_secret")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "client_secret")
		},
		rotate: func(t *testing.T, dir, s string) { swapData(t, dir, "..2026_11_30_02", s) },
	},
}

// swapData writes s into a new timestamped folder and points ..data at it
// atomically, as the kubelet does.
func swapData(t *testing.T, dir, stamp, s string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, stamp), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, stamp, "client_secret"), s+"\n")
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(stamp, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// rotWorld is one Caddy process in front of a Desko stand-in that issues 3 s
// tokens, with the client secret behind a {file.*} placeholder.
type rotWorld struct {
	t       *testing.T
	desko   *deskotest.Server
	base    string
	admin   string
	logFile string
	dir     string
}

func newRotWorld(t *testing.T, layout secretLayout) (*rotWorld, string) {
	t.Helper()
	bin := buildCaddy(t)
	desko := deskotest.New(rotClientID, rotSecretA, rotTTL)
	srv := httptest.NewServer(desko)
	t.Cleanup(srv.Close)
	dir, secrets := t.TempDir(), t.TempDir()
	secretFile := layout.setup(t, secrets, rotSecretA)
	port, admin := freePort(t), freePort(t)
	w := &rotWorld{t: t, desko: desko, base: fmt.Sprintf("http://127.0.0.1:%d", port),
		admin: fmt.Sprintf("http://127.0.0.1:%d", admin), logFile: filepath.Join(dir, "caddy.log"), dir: secrets}
	runCaddy(t, bin, dir, fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
	log {
		output file %s
		level DEBUG
	}
}
http://127.0.0.1:%d {
	desko_auth {
		client_id     %s
		client_secret {file.%s}
		token_url     %s%s
	}
	reverse_proxy %s
}
`, admin, w.logFile, port, rotClientID, secretFile, srv.URL, deskotest.TokenPath, srv.Listener.Addr()), port)
	waitFor(t, "the first token", func() bool { return desko.TokenRequests() >= 1 && w.get("/ready") == 200 })
	return w, secretFile
}

func (w *rotWorld) get(path string) int {
	resp, err := http.Get(w.base + path)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// load sends a request every rotPace until stop is closed, and returns,
// for each, when it started and its status.
func (w *rotWorld) load(stop <-chan struct{}) <-chan []rotResult {
	out := make(chan []rotResult, 1)
	go func() {
		var rs []rotResult
		tick := time.NewTicker(rotPace)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				out <- rs
				return
			case <-tick.C:
				start := time.Now()
				rs = append(rs, rotResult{start, w.get("/api")})
			}
		}
	}()
	return out
}

type rotResult struct {
	start  time.Time
	status int
}

// lastSecretSent is the client secret of the stand-in's last token
// request.
func (w *rotWorld) lastSecretSent() string {
	_, body := w.desko.LastTokenRequest()
	var req struct {
		ClientSecret string `json:"client_secret"`
	}
	_ = json.Unmarshal(body, &req)
	return req.ClientSecret
}

func (w *rotWorld) logLines(msg string) int {
	b, _ := os.ReadFile(w.logFile)
	return strings.Count(string(b), `"msg":"`+msg)
}

func (w *rotWorld) metric(result string) float64 {
	resp, err := http.Get(w.admin + "/metrics")
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return metricValue(w.t, string(b), "desko_auth_credentials_total", map[string]string{"result": result})
}

// assertClean checks the log for the secrets and the tokens issued.
func (w *rotWorld) assertClean() {
	logs, _ := os.ReadFile(w.logFile)
	for _, s := range []string{rotSecretA, rotSecretB} {
		scrubtest.NewCheck(rotClientID, s, w.desko.Issued()...).AssertNone(w.t, "Caddy's log", string(logs))
	}
}

// A rotation with a grace period (the server accepts both secrets, the
// file changes, then the server refuses the old one) causes no client
// error, whichever way the file changes; the change is picked up once,
// with one INFO line and a metric, at the next token request.
func TestRotationWithGracePeriod(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy processes")
	}
	t.Parallel()
	for _, layout := range secretLayouts {
		t.Run(layout.name, func(t *testing.T) {
			t.Parallel()
			w, _ := newRotWorld(t, layout)
			stop := make(chan struct{})
			results := w.load(stop)
			w.desko.SetClientSecrets(rotSecretA, rotSecretB)
			layout.rotate(t, w.dir, rotSecretB)
			waitFor(t, "a token request with the new secret", func() bool { return w.lastSecretSent() == rotSecretB })
			w.desko.SetClientSecrets(rotSecretB)
			// Past the lifetime of any token obtained with the old secret.
			waitFor(t, "two more token requests", func() bool { return w.desko.TokenRequests() >= 4 })
			close(stop)
			var failed []rotResult
			rs := <-results
			for _, r := range rs {
				if r.status != 200 {
					failed = append(failed, r)
				}
			}
			if len(failed) != 0 {
				t.Errorf("%d of %d requests failed during a rotation with a grace period: %v", len(failed), len(rs), failed)
			}
			if len(rs) < 20 {
				t.Errorf("%d requests during the rotation, want a load of most of a second (20 at rotPace) or more", len(rs))
			}
			if w.lastSecretSent() != rotSecretB {
				t.Error("the last token request did not use the new secret")
			}
			if n := w.logLines("credentials changed"); n != 1 {
				t.Errorf("%d 'credentials changed' lines, want 1", n)
			}
			if v := w.metric("changed"); v != 1 {
				t.Errorf(`credentials_total{result="changed"} = %v, want 1`, v)
			}
			w.assertClean()
		})
	}
}

// A hard rotation: the server refuses the old secret first and the file
// changes a second later. Clients see errors only until the file changes:
// the source, refused, reads the file again every second, and the new
// secret lifts the refusal's backoff (5 s) at once. Requests that start 2 s
// after the change succeed.
func TestRotationHard(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy processes")
	}
	t.Parallel()
	w, _ := newRotWorld(t, secretLayouts[1])
	stop := make(chan struct{})
	results := w.load(stop)
	w.desko.SetClientSecrets(rotSecretB) // the old secret is refused from now on
	waitFor(t, "the old secret refused", func() bool {
		code := w.get("/refused")
		return code == http.StatusBadGateway
	})
	refusedAt := time.Now()
	// A second later, the file gets the new secret.
	waitFor(t, "a second to pass", func() bool { return time.Since(refusedAt) >= time.Second })
	secretLayouts[1].rotate(t, w.dir, rotSecretB)
	changed := time.Now()
	waitFor(t, "a token request with the new secret", func() bool { return w.lastSecretSent() == rotSecretB })
	if d := time.Since(changed); d >= 2*time.Second {
		t.Errorf("the new secret was used %v after the file changed, want < 2 s (the backoff was 5 s)", d)
	}
	waitFor(t, "3 s after the change", func() bool { return time.Since(changed) >= 3*time.Second })
	close(stop)
	for _, r := range <-results {
		if r.start.After(changed.Add(2*time.Second)) && r.status != 200 {
			t.Errorf("a request that started %v after the change got %d", r.start.Sub(changed).Round(time.Millisecond), r.status)
		}
	}
	if n := w.logLines("credentials changed"); n != 1 {
		t.Errorf("%d 'credentials changed' lines, want 1", n)
	}
	w.assertClean()
}

// A file that vanishes or turns empty mid-run keeps the last good secret in
// use (never an empty one), with one WARN naming the file and a metric;
// when it is back, one INFO line.
func TestRotationFileVanishes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy processes")
	}
	t.Parallel()
	w, secretFile := newRotWorld(t, secretLayouts[0])
	refresh := func() {
		t.Helper()
		resp, err := http.Post(w.admin+"/desko_auth/refresh", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.Contains(string(b), "refresh_error") {
			t.Fatalf("refresh: %d %s", resp.StatusCode, b)
		}
	}
	if err := os.Remove(secretFile); err != nil {
		t.Fatal(err)
	}
	before := w.desko.TokenRequests()
	refresh()
	writeFile(t, secretFile, "\n") // now empty
	refresh()
	if n := w.desko.TokenRequests() - before; n != 2 || w.lastSecretSent() != rotSecretA {
		t.Fatalf("%d token requests, last with %q; want 2 with the last good secret", n, w.lastSecretSent())
	}
	if w.get("/still-fine") != 200 {
		t.Fatal("requests fail while the file is unreadable")
	}
	if n := w.logLines("a credentials file cannot be read"); n != 1 {
		t.Errorf("%d WARN lines about the file, want 1 per outage", n)
	}
	b, _ := os.ReadFile(w.logFile)
	if !strings.Contains(string(b), secretFile) {
		t.Error("the WARN does not name the file")
	}
	if v := w.metric("unreadable"); v < 2 {
		t.Errorf(`credentials_total{result="unreadable"} = %v, want at least 2`, v)
	}
	writeFile(t, secretFile, rotSecretA+"\n")
	refresh()
	if n := w.logLines("a credentials file can be read again"); n != 1 {
		t.Errorf("%d INFO lines about the file being back, want 1", n)
	}
	if n := w.logLines("credentials changed"); n != 0 {
		t.Errorf("%d 'credentials changed' lines for an unchanged secret, want 0", n)
	}
	w.assertClean()
}
