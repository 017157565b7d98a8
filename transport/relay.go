package transport

import (
	"io"
	"net"
)

// Relay copies a to b and b to a until both directions have ended. When
// one side ends its writing (EOF), Relay half-closes the other side's
// writing and keeps copying the other way; when a copy fails, it closes
// both, so the other direction ends too. It returns the first error, or
// nil. It does not close a or b on success: the caller does.
//
// If a or b is a stream (it has GetDieCh, as smux streams and *Stream do),
// Relay also ends when the stream dies, say because its session was
// closed: otherwise a copy blocked reading the other side, after a
// half-close, would wait forever.
func Relay(a, b net.Conn) error {
	done := make(chan struct{})
	defer close(done)
	for _, c := range []net.Conn{a, b} {
		if d, ok := c.(interface{ GetDieCh() <-chan struct{} }); ok {
			go func() {
				select {
				case <-d.GetDieCh():
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
	_, err := io.Copy(dst, src)
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
