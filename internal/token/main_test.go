package token

import (
	"flag"
	"os"
	"testing"
)

// TestMain runs the parallel tests (the ones that wait out a real timeout,
// or scrub a megabyte under -race) all at once rather than GOMAXPROCS at a
// time, unless -parallel says otherwise: on 2 cores, the package's tests
// then take about as long as the sequential ones and the slowest of these.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "16")
	}
	os.Exit(m.Run())
}
