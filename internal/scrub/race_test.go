//go:build race

package scrub_test

// raceDetector: the race detector slows scrubbing ten times or more,
// which says nothing of the budget's size.
const raceDetector = true
