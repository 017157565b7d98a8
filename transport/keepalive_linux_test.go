package transport

import (
	"context"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sockKeepAlive is a socket's keep-alive: on, and the idle time and
// interval in seconds and the count of probes.
type sockKeepAlive struct {
	on                 bool
	idle, intvl, count int
}

// keepAlive reads a TCP connection's keep-alive settings from its socket.
func keepAlive(t *testing.T, c net.Conn) sockKeepAlive {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v [4]int
	var errs [4]error
	rc.Control(func(fd uintptr) {
		v[0], errs[0] = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		v[1], errs[1] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		v[2], errs[2] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
		v[3], errs[3] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return sockKeepAlive{v[0] != 0, v[1], v[2], v[3]}
}

// systemKeepAliveCount is the probe count a socket gets from the system
// (net.ipv4.tcp_keepalive_probes).
func systemKeepAliveCount(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_keepalive_probes")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestListenAcceptsWithoutKeepAlive proves the connections a bridge
// accepts carry no TCP keep-alive, as nginx's do not, where Go's default
// listener would probe each after 15 s idle.
func TestListenAcceptsWithoutKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen func() (net.Listener, error)
		want   bool
	}{
		{"net.Listen (control)", func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }, true},
		{"Listen", func() (net.Listener, error) { return Listen(context.Background(), "127.0.0.1:0") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tc.listen()
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if on := keepAlive(t, s).on; on != tc.want {
				t.Fatalf("accepted connection's keep-alive on: %v, want %v", on, tc.want)
			}
		})
	}
}

// TestCarrierKeepAliveIsTheBrowsers proves a carrier's socket is probed,
// idle, as the connection of the browser whose hello it sends would be, not
// as Go's default dialer's (15 s, every 15 s, 9 probes).
func TestCarrierKeepAliveIsTheBrowsers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sys := systemKeepAliveCount(t)
	chrome := sockKeepAlive{true, 45, 45, sys}
	if runtime.GOOS == "android" || runtime.GOOS == "ios" {
		chrome = sockKeepAlive{}
	}
	dialer := func(fp string) func() (net.Conn, error) {
		return func() (net.Conn, error) { return dialCarrierTCP(context.Background(), ln.Addr().String(), fp) }
	}
	for _, tc := range []struct {
		name string
		dial func() (net.Conn, error)
		want sockKeepAlive
	}{
		{"Go's default (control)", func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }, sockKeepAlive{true, 15, 15, 9}},
		{"default fp", dialer(""), chrome},
		{"chrome", dialer("chrome"), chrome},
		{"safari (sends Chrome's hello)", dialer("safari"), chrome},
		{"firefox", dialer("firefox"), sockKeepAlive{true, 10, 1, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := keepAlive(t, c)
			if !got.on {
				got = sockKeepAlive{} // the rest means nothing then
			}
			if got != tc.want {
				t.Fatalf("keep-alive %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestFirefoxKeepAliveGrowsOld proves a Firefox carrier's keep-alive moves
// from the young connection's to the old one's when its time comes.
func TestFirefoxKeepAliveGrowsOld(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	plan := browserKeepAlive("firefox", "linux")
	if plan.after != 60*time.Second || plan.later.Idle != 600*time.Second {
		t.Fatalf("Firefox's plan: %+v", plan)
	}
	plan.after = 50 * time.Millisecond
	d := net.Dialer{KeepAliveConfig: plan.first}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keepAliveLater(c.(*net.TCPConn), plan)
	if got := keepAlive(t, c); got != (sockKeepAlive{true, 10, 1, 4}) {
		t.Fatalf("young: %+v", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for keepAlive(t, c).idle != 600 {
		if time.Now().After(deadline) {
			t.Fatalf("still %+v after 5 s, want the idle time 600 s", keepAlive(t, c))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := keepAlive(t, c); got != (sockKeepAlive{true, 600, 1, 4}) {
		t.Fatalf("old: %+v", got)
	}
}

// TestSessionCarrierKeepAlive proves a session's carrier, dialed with no
// Dial of the config's, is the socket carrierDialer makes.
func TestSessionCarrierKeepAlive(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	sess := b.dialVia(t, b.addr)
	sess.conn.mu.Lock()
	raw := sess.conn.carriers[0].raw.Conn
	sess.conn.mu.Unlock()
	if got := keepAlive(t, raw); !got.on || got.idle != 45 || got.intvl != 45 {
		t.Fatalf("carrier keep-alive %+v, want on, 45 s, every 45 s (Chromium's)", got)
	}
}
