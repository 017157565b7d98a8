package transport

import (
	"context"
	"net"
	"runtime"
	"time"
)

// Listen opens a TCP listener on address ("host:port") as a web server's
// listener is opened: plain TCP. Go's net.Listen uses Multipath TCP where
// the kernel offers it (since Go 1.24), and such a listener answers a SYN
// that asks for MPTCP with MP_CAPABLE. nginx, Apache and most web servers
// never do, so that one packet would tell a bridge from the site it passes
// for. Nor do they set TCP keep-alive on the connections they accept,
// where Go probes every connection idle for 15 s. Every listener of a
// bridge's is opened here. (A client's local proxy is not the censor's to
// see, and keeps Go's defaults: keep-alive there finds the phones that
// left the Wi-Fi.)
func Listen(ctx context.Context, address string) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// carrierDialer is the dialer of a carrier's TCP connection when the
// config gives none. It sets TCP keep-alive as the browser whose hello the
// carrier sends: Chromium probes a connection idle for 45 s, then every
// 45 s, on desktop systems, and sets none on Android and iOS. Go's default
// (15 s) would mark an idle carrier as a Go program's to anyone watching.
func carrierDialer() *net.Dialer {
	if runtime.GOOS == "android" || runtime.GOOS == "ios" {
		return &net.Dialer{KeepAlive: -1}
	}
	return &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{
		Enable:   true,
		Idle:     45 * time.Second,
		Interval: 45 * time.Second,
		Count:    -1, // the system's, which Chromium leaves alone
	}}
}
