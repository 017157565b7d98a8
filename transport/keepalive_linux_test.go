package transport

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// keepAlive reads a TCP connection's keep-alive settings from its socket:
// whether it is on, and the idle time and interval in seconds.
func keepAlive(t *testing.T, c net.Conn) (on bool, idle, intvl int) {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v [3]int
	var errs [3]error
	rc.Control(func(fd uintptr) {
		v[0], errs[0] = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		v[1], errs[1] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		v[2], errs[2] = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return v[0] != 0, v[1], v[2]
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
			if on, _, _ := keepAlive(t, s); on != tc.want {
				t.Fatalf("accepted connection's keep-alive on: %v, want %v", on, tc.want)
			}
		})
	}
}

// TestCarrierKeepAliveIsChromes proves a carrier's socket probes an idle
// connection as desktop Chromium's do (after 45 s, every 45 s), not as Go's
// default dialer does (15 s).
func TestCarrierKeepAliveIsChromes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name        string
		d           *net.Dialer
		idle, intvl int
	}{
		{"Go's default (control)", &net.Dialer{}, 15, 15},
		{"carrierDialer", carrierDialer(), 45, 45},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.d.DialContext(context.Background(), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			on, idle, intvl := keepAlive(t, c)
			if !on || idle != tc.idle || intvl != tc.intvl {
				t.Fatalf("keep-alive on %v, idle %d s, interval %d s; want on, %d s, %d s", on, idle, intvl, tc.idle, tc.intvl)
			}
		})
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
	on, idle, intvl := keepAlive(t, raw)
	if !on || idle != 45 || intvl != 45 {
		t.Fatalf("carrier keep-alive on %v, idle %d s, interval %d s; want on, 45 s, 45 s (Chromium's)", on, idle, intvl)
	}
}
