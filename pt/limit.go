package pt

import (
	"net"
	"sync"

	"github.com/mirage-pt/mirage/sockcopy"
)

// limitListener lets at most cap(slots) connections be open at once, over
// every listener sharing slots: Accept waits for one to close. Waiting in
// Accept leaves new connections in the kernel's backlog, which a stranger
// cannot tell from a busy website. This is mirage-server -max-conns under
// tor, as standalone: tor may ask for several bind addresses, and the
// limit is the machine's, so they share it.
type limitListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{} // closed by Close: a waiting Accept gives up
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, slots chan struct{}) *limitListener {
	return &limitListener{Listener: ln, slots: slots, done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its slot back when closed, once.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Read and Write go to the connection under the wrapper with sockcopy,
// so that a bridge's carriers keep its raw system calls
// (sockcopy/write.go).
func (c *limitConn) Read(p []byte) (int, error) { return sockcopy.Read(c.Conn, p) }

func (c *limitConn) Write(p []byte) (int, error) { return sockcopy.Write(c.Conn, p) }

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite keeps half-closes working through the wrapper.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// NetConn returns the connection under the wrapper, so the transport can
// splice and reset it directly.
func (c *limitConn) NetConn() net.Conn { return c.Conn }

// LimitListener returns ln letting at most n connections be open at once
// (mirage-server -max-conns standalone; under tor, RunServer shares one
// limit among its listeners).
func LimitListener(ln net.Listener, n int) net.Listener {
	return newLimitListener(ln, make(chan struct{}, n))
}
