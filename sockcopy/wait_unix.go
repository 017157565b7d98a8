//go:build unix

package sockcopy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// WaitReadable waits until c (a TCP or UDP socket) has something to read
// (data, a datagram, an end or an error), without reading it and without
// a buffer: relays wait here while idle, so a thousand idle relays hold no
// 32 or 64 KiB buffer each. It peeks a byte (MSG_PEEK leaves it queued)
// instead of only waiting for the poller, because data already queued
// behind what was just read brings no new wake-up. A c that is not a
// socket returns at once, and its reader waits in Read instead.
func WaitReadable(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return !errors.Is(perr, syscall.EAGAIN) && !errors.Is(perr, syscall.EINTR)
	})
	if err != nil {
		return err // closed, or a deadline
	}
	if perr != nil {
		// The peek took the socket's pending error (a reset, say): the
		// read would not see it again, so report it as the read would.
		return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("recvfrom", perr)}
	}
	return nil
}

// canReadNow reports whether c is a socket that ReadNow reads.
func canReadNow(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

// ReadNow reads into p what c's socket holds right now, without waiting.
// It returns 0 and nil when nothing is queued (or c is not a socket),
// 0 and io.EOF at the end of the stream, or the read's error.
func ReadNow(c net.Conn, p []byte) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, rerr = readNonblocking(fd, p)
		return true // never wait
	})
	switch {
	case err != nil:
		return 0, err // closed
	case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EINTR):
		return 0, nil
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
