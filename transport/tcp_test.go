package transport

import (
	"context"
	"net"
	"testing"

	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestListenRefusesMultipath proves a bridge's listener answers a SYN
// asking for Multipath TCP as a web server does, with plain TCP, where Go's
// default listener on the same kernel agrees to it.
func TestListenRefusesMultipath(t *testing.T) {
	std, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer std.Close()
	if !transporttest.AgreesToMultipath(t, std.Addr().String()) {
		t.Skip("this kernel does not offer Multipath TCP (net.mptcp.enabled), so no listener can agree to it")
	}
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if transporttest.AgreesToMultipath(t, ln.Addr().String()) {
		t.Fatal("the listener agreed to Multipath TCP: its SYN-ACK carried MP_CAPABLE, which a web server's does not")
	}
}
