package deskoauth

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayering checks with go list that the token engine and the scrubber
// depend on nothing of Caddy's (certmagic included), and that the fleet's
// store depends on certmagic but not on Caddy: dependencies run one way,
// handler → fleet → token → scrub.
func TestLayering(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	const (
		tokenPkg = "github.com/deskoproxy/caddy-desko-auth/internal/token"
		scrubPkg = "github.com/deskoproxy/caddy-desko-auth/internal/scrub"
		fleetPkg = "github.com/deskoproxy/caddy-desko-auth/internal/fleet"
	)
	out, err := exec.Command(goCmd, "list", "-f", `{{.ImportPath}} {{join .Deps " "}}`, tokenPkg, scrubPkg, fleetPkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		deps[f[0]] = f[1:]
	}
	for _, pkg := range []string{tokenPkg, scrubPkg, fleetPkg} {
		if len(deps[pkg]) < 10 {
			t.Fatalf("go list gave %s %d dependencies: the check would prove nothing\n%s", pkg, len(deps[pkg]), out)
		}
	}
	for _, pkg := range []string{tokenPkg, scrubPkg} {
		for _, d := range deps[pkg] {
			if strings.HasPrefix(d, "github.com/caddyserver/") {
				t.Errorf("%s depends on %s: it must not depend on Caddy or certmagic", pkg, d)
			}
		}
	}
	certmagic := false
	for _, d := range deps[fleetPkg] {
		certmagic = certmagic || d == "github.com/caddyserver/certmagic"
		if d == "github.com/caddyserver/caddy/v2" || strings.HasPrefix(d, "github.com/caddyserver/caddy/") {
			t.Errorf("%s depends on %s: it must not depend on Caddy", fleetPkg, d)
		}
	}
	if !certmagic {
		t.Errorf("%s does not depend on certmagic: the check of its dependencies would prove nothing", fleetPkg)
	}
}
