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
func Relay(a, b net.Conn) error {
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
