package sockcopy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// Write writes all of p to c, as c.Write does, but where c is a TCP
// socket on Linux (outside race-detector builds) with raw system calls,
// which the Go scheduler does not track: a write of a carrier's 256 KiB,
// or of a 64 KiB frame to an app, takes long enough that the runtime
// hands the writing thread's P to another thread meanwhile, and back
// (raw_linux.go says what that costs). The socket is non-blocking:
// when it has no room, Write waits for it in the poller, as c.Write
// does, and c's write deadline holds. Errors are c.Write's: *net.OpError
// with Op "write".
func Write(c net.Conn, p []byte) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok || !rawSyscalls {
		return c.Write(p)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c.Write(p)
	}
	n := 0
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			k, e := writeNonblocking(fd, p[n:])
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				return false // no room: wait for it
			case e != nil:
				werr = e
				return true
			}
			n += k
		}
		return true
	})
	if werr != nil {
		return n, syscallError("write", c, werr)
	}
	return n, pollerError("write", err)
}

// Read reads into p from c, as c.Read does (waiting in the poller until
// the socket has something, within c's read deadline, with c.Read's
// errors: *net.OpError with Op "read", io.EOF at the end), but where c
// is a TCP socket on Linux outside race-detector builds with raw system
// calls, as Write writes.
func Read(c net.Conn, p []byte) (int, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok || !rawSyscalls || len(p) == 0 {
		return c.Read(p)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c.Read(p)
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = readNonblocking(fd, p)
			if rerr != syscall.EINTR {
				return rerr != syscall.EAGAIN // nothing yet: wait for it
			}
		}
	})
	switch {
	case err != nil:
		return 0, pollerError("read", err)
	case rerr != nil:
		return 0, syscallError("read", c, rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// syscallError is the error c.Read or c.Write (op) returns for the
// system call's error errno.
func syscallError(op string, c net.Conn, errno error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// pollerError names err, the poller's (c closed, or its deadline
// passed), as c.Read or c.Write (op) names it; nil stays nil.
func pollerError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		oe.Op = op
	}
	return err
}
