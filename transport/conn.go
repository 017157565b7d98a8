package transport

import (
	"net"
	"sync/atomic"
	"time"
)

// prefixConn is a connection whose first bytes were already read: Read
// returns them first, then reads from the connection. It is how a peer
// handed to the face, or to the tunnel's TLS server, gets its ClientHello
// back. elapsed is how long the server held the connection before handing
// it over; the deadlines of the TLS handshake are moved earlier by it, so
// the face's handshake timeout runs from when the peer connected, as it
// would on a website that had accepted the connection itself. net/http
// clears the deadlines when the handshake is done; from then on deadlines
// pass unchanged, so request and idle timeouts are the site's own.
type prefixConn struct {
	net.Conn
	prefix  []byte
	elapsed atomic.Int64 // time.Duration; 0 once a deadline was cleared
}

func newPrefixConn(c net.Conn, prefix []byte, elapsed time.Duration) *prefixConn {
	p := &prefixConn{Conn: c, prefix: prefix}
	p.elapsed.Store(int64(elapsed))
	return p
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
		c.elapsed.Store(0) // the handshake is over
		return t
	}
	return t.Add(-time.Duration(c.elapsed.Load()))
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
