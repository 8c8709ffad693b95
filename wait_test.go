package deskoauth

import (
	"testing"
	"time"
)

// The tests' one way to wait: for a condition (waitFor) or a value on a
// channel (waitChan), never for a fixed time. Each wait is bounded by
// waitLimit, a safety net and never a synchronisation device: a condition
// that has not come true by then fails the test instead of hanging it. It
// is generous, so that a busy machine (-race, a cold build beside the
// tests) fails nothing that would pass; a passing test never waits for it.
const waitLimit = 30 * time.Second

// waitPoll is how often waitFor looks at its condition again.
const waitPoll = 5 * time.Millisecond

// eventually reports whether cond came true within waitLimit, looking at
// it every waitPoll. Use it where the failure needs more words than
// waitFor's; elsewhere use waitFor.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(waitLimit)
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// waitFor waits until cond is true, and fails the test (from the test's
// goroutine) if it is not within waitLimit. what says what was awaited.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !eventually(cond) {
		t.Fatalf("waited %v for %s", waitLimit, what)
	}
}

// waitChan receives one value from ch, failing the test if none comes
// within waitLimit.
func waitChan[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("waited %v for %s", waitLimit, what)
		panic("unreachable")
	}
}
