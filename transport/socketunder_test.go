package transport

import (
	"crypto/tls"
	"net"
	"testing"
)

// TestSocketUnderOurWrappers: closeWrite's FIN reaches the TCP socket under
// TLS and our wrappers, while unwrapConn (which prefixConn's reads and the
// cover's splice use) still stops at countingConn and prefixConn: reaching
// around them would read bytes the carrier's budget does not count, or
// skip a prefix.
func TestSocketUnderOurWrappers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	tcp, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	counted := &countingConn{Conn: tcp}
	prefixed := newPrefixConn(counted, []byte("x"), 0)
	for _, c := range []net.Conn{
		tls.Server(prefixed, &tls.Config{}),
		tls.Client(&abortConn{Conn: counted}, &tls.Config{}),
		prefixed,
	} {
		if got := socketUnder(c); got != tcp {
			t.Errorf("socketUnder(%T) = %T, want the TCP socket", c, got)
		}
	}
	if got := unwrapConn(prefixed); got != net.Conn(prefixed) {
		t.Errorf("unwrapConn went past prefixConn to %T", got)
	}
	if got := unwrapConn(counted); got != net.Conn(counted) {
		t.Errorf("unwrapConn went around countingConn to %T", got)
	}
}
