package deskotest

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Unanswered returns a loopback address whose connection attempts get no
// answer, as behind a firewall that drops them: a listening socket with
// the smallest accept queue, filled by one connection it never accepts
// (Linux then drops further SYNs, and a dial waits until its deadline).
// stop closes the socket and the filling connection.
func Unanswered() (addr string, stop func(), err error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	closeFd := func() { syscall.Close(fd) }
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		closeFd()
		return "", nil, err
	}
	if err := syscall.Listen(fd, 0); err != nil {
		closeFd()
		return "", nil, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		closeFd()
		return "", nil, err
	}
	addr = fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue: connections complete until it is full, then hang.
	var fill []net.Conn
	stop = func() {
		for _, c := range fill {
			c.Close()
		}
		closeFd()
	}
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr, stop, nil // the queue is full: no answer
			}
			stop()
			return "", nil, err
		}
		fill = append(fill, c)
	}
	stop()
	return "", nil, fmt.Errorf("%s still answers after %d connections", addr, len(fill))
}
