//go:build !race

package scrub_test

const raceDetector = false
