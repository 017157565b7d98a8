package transport

import (
	"context"
	"net"
)

// Listen opens a TCP listener on address ("host:port") as a web server's
// listener is opened: plain TCP. Go's net.Listen uses Multipath TCP where
// the kernel offers it (since Go 1.24), and such a listener answers a SYN
// that asks for MPTCP with MP_CAPABLE. nginx, Apache and most web servers
// never do, so that one packet would tell a bridge from the site it passes
// for. A bridge's listener, and any other port a stranger can reach, is
// opened here.
func Listen(ctx context.Context, address string) (*net.TCPListener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}
