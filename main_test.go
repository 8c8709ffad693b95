package deskoauth

import (
	"flag"
	"fmt"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// What every test in the package shares, set once per test binary by
// TestMain.
var (
	// httpPort and httpsPort are the in-process Caddy's http_port and
	// https_port: loopback ports that were free when the test binary
	// started, so that two test binaries (or a real server) do not clash.
	// The admin address stays localhost:2999, which caddytest requires.
	httpPort, httpsPort string
	// proxyBase is the base URL of the test site on httpPort.
	proxyBase string
	// testTmp is a folder removed when the test binary ends, for what
	// outlives one test (the Caddy binary the fleet tests build).
	testTmp string
)

// caddyTestTimeout bounds, for every caddytest Tester, the loading of a
// config and each test request (caddytest's default is 5 s each). It is a
// bound, not a wait: a config loads and a request is answered in
// milliseconds, but a machine busy with something else (a cold build
// cache's compiles, -race) must not fail a test that would pass.
const caddyTestTimeout = 30 * time.Second

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "desko-auth-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	testTmp = dir
	ports, err := freeLoopbackPorts(2)
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	httpPort, httpsPort = strconv.Itoa(ports[0]), strconv.Itoa(ports[1])
	proxyBase = "http://localhost:" + httpPort

	flag.Parse()
	// Through the defaults every Tester starts from: caddytest's
	// AssertLoadError makes a Tester of its own, which
	// WithDefaultOverrides cannot reach.
	caddytest.Default.LoadRequestTimeout = caddyTestTimeout
	caddytest.Default.TestRequestTimeout = caddyTestTimeout
	// Build the Caddy binary when the run includes a test that needs it
	// (caddybin_test.go): before any test runs if that means compiling,
	// while they run if it means linking only; wait for the build before
	// the folder is removed.
	if !testing.Short() && runMayInclude(caddyBinTests...) {
		startCaddyBuild(dir)
		defer func() { <-caddyBuild.done }()
	}
	// The only parallel tests are the ones with Caddy processes, which
	// mostly wait: run them all at once (four loads: the two fleet tests'
	// three and the rotation) rather than GOMAXPROCS at a time, unless
	// -parallel says otherwise.
	if !flagSet("test.parallel") {
		_ = flag.Set("test.parallel", strconv.Itoa(max(runtime.GOMAXPROCS(0), 4)))
	}
	return m.Run()
}

// flagSet reports whether the flag name was set on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// runMayInclude reports whether -test.run may select one of the top-level
// tests named.
func runMayInclude(names ...string) bool {
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	top, _, _ := strings.Cut(f.Value.String(), "/")
	re, err := regexp.Compile(top)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(names, re.MatchString)
}

// freeLoopbackPorts returns n distinct loopback ports that were free a
// moment ago (all listened on at once, so they differ).
func freeLoopbackPorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
