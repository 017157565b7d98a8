package transport

import (
	"net"
	"time"
)

// prefixConn is a connection whose first bytes were already read: Read
// returns them first, then reads from the connection. It is how a peer
// handed to the face, or to the tunnel's TLS server, gets its ClientHello
// back. elapsed is how long the server held the connection before handing
// it over; deadlines set through prefixConn are moved earlier by it, so the
// face's timeouts run from when the peer connected, as they would on a
// website that had accepted the connection itself.
type prefixConn struct {
	net.Conn
	prefix  []byte
	elapsed time.Duration
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 && n < len(p) {
			// A read on the bare socket would have returned the bytes
			// that arrived after the prefix too. Take them now, without
			// waiting, so the kernel holds exactly what it would hold
			// for a server that had read the socket itself: whether a
			// close with unread data sends RST or FIN depends on it.
			n += readAvailable(unwrapConn(c.Conn), p[n:])
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *prefixConn) shift(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Add(-c.elapsed)
}

func (c *prefixConn) SetDeadline(t time.Time) error     { return c.Conn.SetDeadline(c.shift(t)) }
func (c *prefixConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(c.shift(t)) }
func (c *prefixConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.shift(t))
}

// CloseWrite half-closes the underlying connection when it can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

var _ net.Conn = (*prefixConn)(nil)
