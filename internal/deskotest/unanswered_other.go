//go:build !linux

package deskotest

import "errors"

// Unanswered is Linux-only: see unanswered_linux.go.
func Unanswered() (addr string, stop func(), err error) {
	return "", nil, errors.New("deskotest.Unanswered needs Linux")
}
