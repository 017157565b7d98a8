package transport

import (
	"io"
	"net"

	"github.com/mirage-pt/mirage/sockcopy"
)

// Relay copies a to b and b to a until both directions have ended. When
// one side ends its writing (EOF), Relay half-closes the other side's
// writing and keeps copying the other way; when a copy fails, it closes
// both, so the other direction ends too. It returns the first error, or
// nil. It does not close a or b on success: the caller does.
//
// If a or b is a stream of a session (it has SessionDone, as the streams
// of Server and Session do), Relay also ends when that session ends:
// otherwise a copy blocked reading the other side, after a half-close,
// would wait forever. (A stream's own end is not such a signal: smux
// marks a stream dead once both sides have sent FIN, while data may still
// be on its way to the other side.)
func Relay(a, b net.Conn) error {
	done := make(chan struct{})
	defer close(done)
	for _, c := range []net.Conn{a, b} {
		if d, ok := c.(interface{ SessionDone() <-chan struct{} }); ok {
			go func() {
				select {
				case <-d.SessionDone():
					a.Close()
					b.Close()
				case <-done:
				}
			}()
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- copyThenCloseWrite(b, a) }()
	err := copyThenCloseWrite(a, b)
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

func copyThenCloseWrite(dst, src net.Conn) error {
	var err error
	if _, ok := src.(*net.TCPConn); ok {
		// A socket (tor's connection, an app's): no buffer while it is
		// idle, a whole smux frame per read while it sends.
		_, err = sockcopy.Copy(dst, src, src, nil)
	} else {
		_, err = io.Copy(dst, src)
	}
	if err != nil {
		// Unblock the other direction: it cannot finish cleanly now.
		// A stream ends abortively, so that the peer ends its side as
		// a reset would (PROTOCOL.md §7).
		Abort(dst)
		Abort(src)
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Abort closes c as a reset would. A stream of a session is aborted (its
// Abort method): the peer's reads and writes of it then fail, where after
// a close the peer would take the stream for half-closed and go on sending
// into it. A TCP connection, or a wrapper of one that has NetConn, is
// closed with a reset instead of a FIN, so that the app or destination
// knows its transfer was cut, not finished: a download whose end is the
// connection's would otherwise look complete.
func Abort(c net.Conn) error {
	if a, ok := c.(interface{ Abort() error }); ok {
		return a.Abort()
	}
	for u := c; ; {
		if l, ok := u.(interface{ SetLinger(int) error }); ok {
			l.SetLinger(0)
			break
		}
		w, ok := u.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		u = w.NetConn()
	}
	return c.Close()
}
