package transport

import (
	"context"
	"net"
	"testing"
	"time"
)

// agreesToMultipath connects to addr asking for Multipath TCP and says
// whether the listener agreed.
func agreesToMultipath(t *testing.T, addr string) bool {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second}
	d.SetMultipathTCP(true)
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mp, err := c.(*net.TCPConn).MultipathTCP()
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

// TestListenRefusesMultipath proves a bridge's listener answers a SYN
// asking for Multipath TCP as a web server does, with plain TCP, where Go's
// default listener on the same kernel agrees to it.
func TestListenRefusesMultipath(t *testing.T) {
	std, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer std.Close()
	if !agreesToMultipath(t, std.Addr().String()) {
		t.Skip("this kernel does not offer Multipath TCP (net.mptcp.enabled), so no listener can agree to it")
	}
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if agreesToMultipath(t, ln.Addr().String()) {
		t.Fatal("the listener agreed to Multipath TCP: its SYN-ACK carried MP_CAPABLE, which a web server's does not")
	}
}
