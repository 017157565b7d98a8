//go:build unix

package egress

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// waitReadable waits until c (a TCP or UDP socket) has something to read
// (data, a datagram, an end or an error), without reading it and without
// a buffer: relays wait here while idle, so a thousand idle relays hold no
// 32 or 64 KiB buffer each. It peeks a byte (MSG_PEEK leaves it queued)
// instead of only waiting for the poller, because data already queued
// behind what was just read brings no new wake-up. A c that is not a
// socket returns at once, and its reader waits in Read instead.
func waitReadable(c net.Conn) error {
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
