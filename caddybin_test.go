package deskoauth

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Caddy binary that the tests with real Caddy processes run: Caddy and
// this module, built from ./internal/caddycmd (the program xcaddy would
// build) once per test binary, into the folder TestMain removes.
//
// When it is built matters. Built beside the in-process end-to-end tests
// on a cold build cache, it compiled Caddy and its dependencies on every
// core for minutes, and those tests, starved, ran out of caddytest's
// timeouts. So TestMain starts the build and watches what it does (go run
// -x): while it compiles more than a few packages (a cold cache, changed
// dependencies) no test runs; once it only links (this module's packages
// changed) or is done (go run keeps linked binaries in the build cache, so
// an unchanged tree takes a second), the tests start.

// caddyBinTests are the tests that run the Caddy binary: TestMain builds
// it when the run may include them.
var caddyBinTests = []string{
	"TestFleetSharesOneTokenPerLifetime", "TestFleetRevokingServer", "TestRotationThroughCaddyReload",
	"TestCaddyValidateCommandSendsNoTokenRequest", "TestRotationWithGracePeriod", "TestRotationHard", "TestRotationFileVanishes", "TestCheckCommand",
	"TestCaddyValidateClientKey", "TestRotationPrivateKey", "TestCheckCommandJWTStyles",
	// newParallelE2E's
	"TestE2EPeerClockAhead", "TestE2ENoTokenInItsLastMoments", "TestE2ETokenEndpointClockSkew", "TestE2ETokenEndpointDown",
	"TestE2EHTMLAnswerThenRecovery", "TestE2EMetricsSurviveReload", "TestE2EPrivateKeyJWT",
	"TestE2EARouteThatRefusesEveryTokenCostsOthersNothing", "TestE2ESharedCacheFIFOEntry", "TestE2ESharedCacheReadOnlyStorage",
	"TestE2ETenantsLifecycle", "TestE2ETenantsNeverCrossTokens", "TestE2ETenantLogLinesNameTheTenantOnce",
	"TestE2ESourceLabelsAreDistinct", "TestE2EConnectionAttemptUnanswered",
}

// coldCompiles is how many packages a build compiles before it counts as
// cold: a change to this module's own code compiles a handful.
const coldCompiles = 20

// caddyBuild is the build of the binary.
var caddyBuild = struct {
	once sync.Once
	done chan struct{} // closed when the build has ended
	bin  string
	err  error
}{done: make(chan struct{})}

// startCaddyBuild starts the build into dir, once per test binary, and
// returns when tests may run beside what is left of it.
func startCaddyBuild(dir string) {
	caddyBuild.once.Do(func() {
		start := time.Now()
		compiling, linking := buildCaddyBinary(filepath.Join(dir, "caddy"))
		select {
		case <-caddyBuild.done:
		case <-linking:
		case <-compiling:
			<-caddyBuild.done
			fmt.Fprintf(os.Stderr, "TestMain: built the Caddy binary in %v before running the tests (a cold build cache)\n",
				time.Since(start).Round(time.Second))
		}
	})
}

// buildCaddyBinary runs the build into bin, closing caddyBuild.done when
// it has ended, compiling when it has compiled coldCompiles packages and
// linking when it links. go run -exec cp runs "cp <binary> bin": it
// copies the binary go run would run, from the build cache when it is
// there.
func buildCaddyBinary(bin string) (compiling, linking <-chan struct{}) {
	comp, link := make(chan struct{}), make(chan struct{})
	cmd := exec.Command("go", "run", "-x", "-exec", "cp", "./internal/caddycmd", bin)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		caddyBuild.err = fmt.Errorf("building the Caddy binary: %v", err)
		close(caddyBuild.done)
		return comp, link
	}
	var tail []string // the end of the output, for an error
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		compiles, linked := 0, false
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, "/compile "):
				if compiles++; compiles == coldCompiles {
					close(comp)
				}
			case strings.Contains(line, "/link ") && !linked:
				linked = true
				close(link)
			}
			if tail = append(tail, line); len(tail) > 100 {
				tail = tail[1:]
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line too long for the scanner
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-scanned
		if err != nil {
			caddyBuild.err = fmt.Errorf("go run -exec cp ./internal/caddycmd %s: %v\n%s", bin, err, strings.Join(tail, "\n"))
		} else {
			caddyBuild.bin = bin
		}
		close(caddyBuild.done)
	}()
	return comp, link
}

// buildCaddy returns the Caddy binary, waiting for its build, and fails the
// test if it could not be built, or if it is not one of caddyBinTests.
func buildCaddy(t *testing.T) string {
	t.Helper()
	if top, _, _ := strings.Cut(t.Name(), "/"); !slices.Contains(caddyBinTests, top) {
		t.Errorf("%s runs the Caddy binary but is not one of caddyBinTests: TestMain would not build it before the tests start", top)
	}
	startCaddyBuild(testTmp)
	<-caddyBuild.done
	if caddyBuild.err != nil {
		t.Fatal(caddyBuild.err)
	}
	return caddyBuild.bin
}
