package deskoauth

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
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
	// Start the in-process Caddy's admin API now, with the build beside
	// it: caddytest starts it at its first use, then sleeps a second
	// before it looks whether it runs.
	if err := caddy.Load([]byte(`{"admin":{"listen":"localhost:2999"}}`), false); err != nil {
		fmt.Fprintln(os.Stderr, "TestMain: starting the in-process Caddy (caddytest will try again):", err)
	}
	// Build the Caddy binary when the run includes a test that needs it
	// (caddybin_test.go): before any test runs if that means compiling,
	// while they run if it means linking only; wait for the build before
	// the folder is removed.
	if !testing.Short() && runMayInclude(caddyBinTests...) {
		startCaddyBuild(dir)
		defer func() { <-caddyBuild.done }()
	}
	// The parallel tests are the end-to-end ones, which mostly wait: for
	// the in-process Caddy (inProcessCaddy lets them use it one at a
	// time), or for tokens to age in Caddy processes of their own. Start
	// them all at once, so that the two kinds run beside each other,
	// unless -parallel says otherwise: on 2 cores, that took 22-24 s where
	// 4 or 6 at a time took 24-30 s.
	if !flagSet("test.parallel") {
		_ = flag.Set("test.parallel", "1000")
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
// moment ago (all listened on at once, so they differ), taken below the
// kernel's ephemeral range: a port the in-process Caddy binds again after
// a config without it, or a Caddy process binds after its start, is then
// never meanwhile the local end of one of the tests' own outgoing
// connections (which the kernel numbers from that range), an "address
// already in use" that fails a config load once in many runs.
func freeLoopbackPorts(n int) ([]int, error) {
	low, high := belowEphemeral()
	handedOut.Lock()
	defer handedOut.Unlock()
	var ports []int
	for len(ports) < n {
		var l net.Listener
		var err error
		for try := 0; try < 100 && l == nil; try++ {
			p := low + rand.IntN(high-low+1)
			if handedOut.ports[p] {
				continue // another test's (parallel tests ask at once)
			}
			if l, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err != nil {
				l = nil
			}
		}
		if l == nil { // the range is crowded: any free port
			if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				return nil, err
			}
		}
		defer l.Close()
		p := l.Addr().(*net.TCPAddr).Port
		handedOut.ports[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// handedOut are the ports freeLoopbackPorts returned: never twice in one
// test binary.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// belowEphemeral is a range of ports under the kernel's ephemeral range
// (Linux: /proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default),
// and above the well-known and most registered services' ports.
func belowEphemeral() (low, high int) {
	low, high = 20000, 32767
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if start, err := strconv.Atoi(f[0]); err == nil && start > 2048 {
				high = start - 1
				low = max(1024, min(low, high-4096))
			}
		}
	}
	return low, high
}
