package transport

import (
	"cmp"
	"context"
	"net"
	"runtime"
	"time"

	"github.com/mirage-pt/mirage/transport/link"
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

// keepAlivePlan is the TCP keep-alive a browser sets on an HTTPS
// connection: first from the start, then later once the connection has
// lived for after (0: first for good).
type keepAlivePlan struct {
	first, later net.KeepAliveConfig
	after        time.Duration
}

// browserKeepAlive returns the keep-alive plan of the browser fp names (its
// alias's, whose hello it sends) on the system goos, so that a carrier,
// idle, is probed as that browser's connection would be. Go's default (15 s,
// then every 15 s) would mark it as a Go program's to anyone watching.
//   - Chromium: after 45 s idle, every 45 s, on desktop systems; none on
//     Android and iOS.
//   - Firefox: after 10 s idle while the connection is young (its first
//     60 s), then after 600 s; every 1 s, 4 probes.
func browserKeepAlive(fp, goos string) keepAlivePlan {
	if alias, ok := fingerprintAliases[fp]; ok {
		fp = alias
	}
	if fp == "firefox" {
		young := net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: time.Second, Count: 4}
		old := young
		old.Idle = 600 * time.Second
		return keepAlivePlan{first: young, later: old, after: 60 * time.Second}
	}
	if goos == "android" || goos == "ios" {
		return keepAlivePlan{}
	}
	return keepAlivePlan{first: net.KeepAliveConfig{
		Enable:   true,
		Idle:     45 * time.Second,
		Interval: 45 * time.Second,
		Count:    -1, // the system's, which Chromium leaves alone
	}}
}

// dialCarrierTCP opens a carrier's TCP connection to address with the
// keep-alive of the browser fp names (browserKeepAlive).
func dialCarrierTCP(ctx context.Context, address, fp string) (net.Conn, error) {
	plan := browserKeepAlive(cmp.Or(fp, link.DefaultFingerprint), runtime.GOOS)
	d := net.Dialer{KeepAliveConfig: plan.first}
	if !plan.first.Enable {
		d.KeepAlive = -1 // else Go turns on its own
	}
	c, err := d.DialContext(ctx, "tcp", address)
	if err == nil && plan.after > 0 {
		keepAliveLater(c.(*net.TCPConn), plan)
	}
	return c, err
}

// keepAliveLater gives c plan's later keep-alive once plan.after has
// passed. A timer, not a goroutine: it holds c until it fires, and setting
// a closed socket's options fails harmlessly.
func keepAliveLater(c *net.TCPConn, plan keepAlivePlan) {
	time.AfterFunc(plan.after, func() { c.SetKeepAliveConfig(plan.later) })
}
