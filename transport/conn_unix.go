//go:build unix

package transport

import (
	"net"
	"syscall"
)

// readAvailable reads into p whatever c's socket holds right now, without
// blocking, and returns how many bytes it read (0 if none, or if c is not a
// socket).
func readAvailable(c net.Conn, p []byte) int {
	sc, ok := c.(syscall.Conn)
	if !ok || len(p) == 0 {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var n int
	rc.Read(func(fd uintptr) bool {
		m, err := syscall.Read(int(fd), p)
		if err == nil && m > 0 {
			n = m
		}
		return true // never wait for more
	})
	return n
}

// controlSocket runs f with the file descriptor of the socket under c
// (socketUnder); not at all if there is none.
func controlSocket(c net.Conn, f func(fd int)) {
	sc, ok := socketUnder(c).(syscall.Conn)
	if !ok {
		return
	}
	if rc, err := sc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { f(int(fd)) })
	}
}
