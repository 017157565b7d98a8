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
		dst.Close()
		src.Close()
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
