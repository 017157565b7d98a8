package egress

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestMain fails the package if a test leaves a goroutine running: every
// relay and UDP relay must end with its stream.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// newEgress is New with the two settings most tests vary.
func newEgress(allowPrivate bool, forward string) *Handler {
	return New(Config{AllowPrivate: allowPrivate, Forward: forward})
}

func TestAllowedIP(t *testing.T) {
	for _, tt := range []struct {
		ip   string
		want bool // with allowPrivate false; with true, everything is allowed
	}{
		// Public addresses.
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"93.184.215.14", true},
		{"100.63.255.255", true}, // just below CGNAT
		{"100.128.0.0", true},    // just above CGNAT
		{"172.15.255.255", true}, // just below 172.16/12
		{"172.32.0.0", true},     // just above
		{"198.17.255.255", true}, // just below benchmarking
		{"198.20.0.0", true},     // just above
		{"223.255.255.255", true},
		{"2606:4700:4700::1111", true},
		{"2a00:1450:4001:82b::200e", true},
		{"::ffff:8.8.8.8", true},
		{"64:ff9b::808:808", true}, // NAT64 of 8.8.8.8
		{"2002:808:808::1", true},  // 6to4 of 8.8.8.8
		{"2001:4860:4860::8888", true},

		// IPv4 refused.
		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"10.0.0.1", false},
		{"10.255.255.255", false},
		{"100.64.0.1", false},
		{"100.127.255.254", false},
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"169.254.169.254", false}, // cloud metadata
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.0.0.8", false},
		{"192.0.2.1", false},
		{"192.168.1.1", false},
		{"198.18.0.1", false},
		{"198.19.255.255", false},
		{"198.51.100.7", false},
		{"203.0.113.9", false},
		{"224.0.0.251", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},

		// IPv4-mapped IPv6 forms of refused IPv4.
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.1.2.3", false},
		{"::ffff:169.254.169.254", false},
		{"::ffff:192.168.0.1", false},
		{"::ffff:0.0.0.0", false},
		{"::ffff:255.255.255.255", false},

		// IPv6 refused.
		{"::", false},
		{"::1", false},
		{"::127.0.0.1", false}, // IPv4-compatible
		{"100::1", false},
		{"fc00::1", false},
		{"fd12:3456:789a::1", false},
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"febf:ffff::1", false},
		{"fec0::1", false},
		{"ff02::1", false},
		{"ff05::2", false},
		{"2001:db8::1", false},
		{"3fff::1", false},
		{"64:ff9b::7f00:1", false},   // NAT64 of 127.0.0.1
		{"64:ff9b::a00:1", false},    // NAT64 of 10.0.0.1
		{"64:ff9b:1::1", false},      // local-use NAT64
		{"2002:7f00:1::", false},     // 6to4 of 127.0.0.1
		{"2002:c0a8:101::1", false},  // 6to4 of 192.168.1.1
		{"2002:a9fe:a9fe::1", false}, // 6to4 of 169.254.169.254
	} {
		ip := netip.MustParseAddr(tt.ip)
		if got := AllowedIP(ip, false); got != tt.want {
			t.Errorf("AllowedIP(%s, false) = %v, want %v", tt.ip, got, tt.want)
		}
		if !AllowedIP(ip, true) && !isControl(ip) {
			t.Errorf("AllowedIP(%s, true) = false, want true", tt.ip)
		}
	}
	if AllowedIP(netip.Addr{}, false) {
		t.Error("the zero Addr is allowed")
	}
}

// isControl reports a cloud control endpoint, plain or embedded in a
// NAT64 or 6to4 address.
func isControl(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	b := ip.As16()
	switch {
	case ip.Is6() && nat64Prefix.Contains(ip):
		ip = netip.AddrFrom4([4]byte(b[12:16]))
	case ip.Is6() && sixToFour.Contains(ip):
		ip = netip.AddrFrom4([4]byte(b[2:6]))
	}
	for _, p := range controlPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// TestAllowedIPCloudControl proves that cloud metadata and control
// endpoints are refused, in every spelling, even with -allow-private:
// Azure's WireServer is a public address, and the rest sit in ranges an
// operator may open with -allow-private (issue 11, Egress).
func TestAllowedIPCloudControl(t *testing.T) {
	for _, s := range []string{
		"169.254.169.254",      // AWS, GCP, Azure, OpenStack, DigitalOcean …
		"169.254.170.2",        // AWS ECS credentials
		"169.254.170.23",       // AWS EKS Pod Identity
		"169.254.0.23",         // Tencent Cloud
		"168.63.129.16",        // Azure WireServer (public)
		"100.100.100.200",      // Alibaba Cloud
		"192.0.0.192",          // Oracle Cloud legacy
		"fd00:ec2::254",        // AWS IMDS over IPv6
		"fd00:ec2::23",         // AWS EKS Pod Identity over IPv6
		"fd20:ce::254",         // Google Cloud over IPv6
		"::ffff:168.63.129.16", // IPv4-mapped
		"64:ff9b::a83f:8110",   // NAT64 of 168.63.129.16
		"2002:a83f:8110::1",    // 6to4 of 168.63.129.16
		"64:ff9b::6464:64c8",   // NAT64 of 100.100.100.200
		"fd00:ec2::254%eth0",   // with a zone
	} {
		ip := netip.MustParseAddr(s)
		if AllowedIP(ip, false) {
			t.Errorf("AllowedIP(%s, false) = true: a cloud control endpoint is reachable", s)
		}
		if AllowedIP(ip, true) {
			t.Errorf("AllowedIP(%s, true) = true: -allow-private opens a cloud control endpoint", s)
		}
	}
	// Neighbours stay as they were.
	for s, want := range map[string]bool{"168.63.129.15": true, "168.63.129.17": true, "169.254.169.253": false} {
		if got := AllowedIP(netip.MustParseAddr(s), false); got != want {
			t.Errorf("AllowedIP(%s, false) = %v, want %v", s, got, want)
		}
		if !AllowedIP(netip.MustParseAddr(s), true) {
			t.Errorf("AllowedIP(%s, true) = false", s)
		}
	}
}

// TestEgressRefusesSMTP proves that a CONNECT to port 25 is refused
// (StatusNotAllowed, nothing dialled) unless AllowSMTP, even to an
// otherwise allowed destination, and that AllowSMTP lets it be dialled.
func TestEgressRefusesSMTP(t *testing.T) {
	dialled := 0
	lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
		dialled++
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	req := transport.Request{Command: transport.CmdConnect, Addr: transport.Addr{Host: "mail.test", Port: 25}}
	c, done := runHandler(t, New(Config{AllowPrivate: true, Lookup: lookup}), req)
	if got := readStatus(t, c); got != transport.StatusNotAllowed {
		t.Fatalf("CONNECT to port 25: status %v, want not allowed", got)
	}
	<-done
	if dialled != 0 {
		t.Fatal("port 25 was resolved before being refused")
	}
	c, done = runHandler(t, New(Config{AllowPrivate: true, AllowSMTP: true, Lookup: lookup}), req)
	if got := readStatus(t, c); got == transport.StatusNotAllowed {
		t.Fatalf("CONNECT to port 25 with AllowSMTP: status %v", got)
	}
	<-done
	if dialled != 1 {
		t.Fatal("with AllowSMTP, port 25 was not dialled")
	}
}

// TestRelayErrorsScrubbed proves that a relay error, which names the
// destination's address ("read tcp A->B: connection reset by peer"),
// reaches the logger scrubbed, even one that does not scrub (an embedder's
// own handler), unless UnsafeLogging (issue 11, Egress).
func TestRelayErrorsScrubbed(t *testing.T) {
	for _, unsafe := range []bool{false, true} {
		// A destination that resets the connection once the request
		// arrives: the relay ends with an error naming 127.0.0.1.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(testTimeout))
			c.Read(make([]byte, 1))
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}()
		var buf syncBuffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		e := New(Config{AllowPrivate: true, Logger: log, UnsafeLogging: unsafe})
		c, done := runHandler(t, e, connectTo(ln.Addr().(*net.TCPAddr).AddrPort()))
		if got := readStatus(t, c); got != transport.StatusOK {
			t.Fatalf("status %v", got)
		}
		c.Write([]byte("x"))
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Fatal("relay did not end on a reset")
		}
		ln.Close()
		out := buf.String()
		if !strings.Contains(out, "relay ended") {
			t.Fatalf("no relay error logged:\n%s", out)
		}
		if has := strings.Contains(out, "127.0.0.1"); has != unsafe {
			t.Errorf("UnsafeLogging %v: log names the destination: %v\n%s", unsafe, has, out)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStatusFor(t *testing.T) {
	sysErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	for _, tt := range []struct {
		name string
		err  error
		want transport.Status
	}{
		{"policy", errNotAllowed, transport.StatusNotAllowed},
		{"wrapped policy", fmt.Errorf("x: %w", errNotAllowed), transport.StatusNotAllowed},
		{"no such host", &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}, transport.StatusHostUnreachable},
		{"DNS server failure", &net.DNSError{Err: "server misbehaving", Name: "x.example"}, transport.StatusHostUnreachable},
		{"DNS timeout", &net.DNSError{Err: "i/o timeout", Name: "x.example", IsTimeout: true}, transport.StatusTimeout},
		{"refused", sysErr(syscall.ECONNREFUSED), transport.StatusConnectionRefused},
		{"network unreachable", sysErr(syscall.ENETUNREACH), transport.StatusNetworkUnreachable},
		{"host unreachable", sysErr(syscall.EHOSTUNREACH), transport.StatusHostUnreachable},
		{"context deadline", context.DeadlineExceeded, transport.StatusTimeout},
		{"dial timeout", &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}, transport.StatusTimeout},
		{"other", errors.New("something else"), transport.StatusGeneralFailure},
		{"permission", sysErr(syscall.EACCES), transport.StatusGeneralFailure},
	} {
		if got := statusFor(tt.err); got != tt.want {
			t.Errorf("%s: statusFor = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// fakeLookup answers names from a table, without DNS.
func fakeLookup(table map[string][]string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		addrs, ok := table[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var ips []netip.Addr
		for _, a := range addrs {
			ips = append(ips, netip.MustParseAddr(a))
		}
		return ips, nil
	}
}

func TestResolveAllowed(t *testing.T) {
	e := newEgress(false, "")
	e.lookup = fakeLookup(map[string][]string{
		"public.example":   {"93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"},
		"rebind.example":   {"93.184.215.14", "127.0.0.1"},
		"private.example":  {"10.0.0.5"},
		"mapped.example":   {"::ffff:93.184.215.14"},
		"metadata.example": {"::ffff:169.254.169.254"},
	})
	for _, tt := range []struct {
		host string
		want string // first address, or the status of the refusal
	}{
		{"public.example", "93.184.215.14"},
		{"mapped.example", "93.184.215.14"}, // unmapped for dialling
		{"8.8.4.4", "8.8.4.4"},
		{"rebind.example", "not allowed by the bridge's policy"},
		{"private.example", "not allowed by the bridge's policy"},
		{"metadata.example", "not allowed by the bridge's policy"},
		{"127.0.0.1", "not allowed by the bridge's policy"},
		{"::ffff:127.0.0.1", "not allowed by the bridge's policy"},
		{"unknown.example", "host unreachable"},
	} {
		ips, err := e.resolveAllowed(context.Background(), tt.host)
		got := ""
		if err != nil {
			got = statusFor(err).String()
		} else {
			got = ips[0].String()
		}
		if got != tt.want {
			t.Errorf("resolveAllowed(%s) = %s, want %s", tt.host, got, tt.want)
		}
	}
}

// streamPair returns a *transport.Stream carrying req over a loopback
// TCP connection, as the transport hands it to a handler, and the client's
// end of it. It stands in for a session's smux stream (Reply, Read, Write
// and CloseWrite behave the same) so that each case can be driven byte by
// byte; TestEgressThroughBridge runs the egress under a real session.
func streamPair(t *testing.T, req transport.Request) (*transport.Stream, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	client.SetDeadline(time.Now().Add(testTimeout))
	return &transport.Stream{Conn: server, Request: req}, client.(*net.TCPConn)
}

// runHandler runs e.Handle on a stream for req, closing the stream when
// it returns as the transport does, and returns the client's end and a
// channel closed when the handler has returned.
func runHandler(t *testing.T, e *Handler, req transport.Request) (*net.TCPConn, <-chan struct{}) {
	t.Helper()
	st, client := streamPair(t, req)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer st.Close()
		e.Handle(st)
	}()
	t.Cleanup(func() {
		client.Close()
		<-done
	})
	return client, done
}

// readStatus reads the stream reply.
func readStatus(t *testing.T, c net.Conn) transport.Status {
	t.Helper()
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if b[0] != 1 {
		t.Fatalf("reply version %d", b[0])
	}
	return transport.Status(b[1])
}

// startTCPEcho runs an echo server on 127.0.0.1 that half-closes after
// echoing, and returns its address.
func startTCPEcho(t *testing.T) netip.AddrPort {
	return transporttest.StartTCPEcho(t, testTimeout).AddrPort()
}

// closedPort returns a loopback TCP address nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return ap
}

func connectTo(ap netip.AddrPort) transport.Request {
	return transport.Request{Command: transport.CmdConnect, Addr: transport.Addr{Host: ap.Addr().String(), Port: ap.Port()}}
}

// echoThrough checks a round trip with half-close through the stream.
func echoThrough(t *testing.T, c *net.TCPConn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v; want %q", got, err, msg)
	}
}

func TestEgressConnect(t *testing.T) {
	echo := startTCPEcho(t)
	closed := closedPort(t)
	localhost := transport.Request{Command: transport.CmdConnect, Addr: transport.Addr{Host: "echo.test", Port: echo.Port()}}
	for _, tt := range []struct {
		name         string
		allowPrivate bool
		req          transport.Request
		want         transport.Status
	}{
		{"loopback allowed", true, connectTo(echo), transport.StatusOK},
		{"loopback refused", false, connectTo(echo), transport.StatusNotAllowed},
		{"mapped loopback refused", false, transport.Request{Command: transport.CmdConnect, Addr: transport.Addr{Host: "::ffff:127.0.0.1", Port: echo.Port()}}, transport.StatusNotAllowed},
		{"name of loopback allowed", true, localhost, transport.StatusOK},
		{"name of loopback refused", false, localhost, transport.StatusNotAllowed},
		{"closed port", true, connectTo(closed), transport.StatusConnectionRefused},
		{"unknown name", true, transport.Request{Command: transport.CmdConnect, Addr: transport.Addr{Host: "nowhere.test", Port: 80}}, transport.StatusHostUnreachable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEgress(tt.allowPrivate, "")
			e.lookup = fakeLookup(map[string][]string{"echo.test": {"127.0.0.1"}})
			c, done := runHandler(t, e, tt.req)
			if got := readStatus(t, c); got != tt.want {
				t.Fatalf("status %v, want %v", got, tt.want)
			}
			if tt.want == transport.StatusOK {
				echoThrough(t, c, "through the bridge")
			} else if rest, _ := io.ReadAll(c); len(rest) != 0 {
				t.Errorf("%q after a refusal", rest)
			}
			select {
			case <-done:
			case <-time.After(testTimeout):
				t.Fatal("handler did not return")
			}
		})
	}
}

func TestEgressCommands(t *testing.T) {
	echo := startTCPEcho(t)
	udp := transport.Request{Command: transport.CmdUDP}
	def := transport.Request{Command: transport.CmdDefault}
	for _, tt := range []struct {
		name    string
		forward string
		req     transport.Request
		want    transport.Status
	}{
		{"proxy mode default", "", def, transport.StatusCommandNotSupported},
		{"forward mode default", echo.String(), def, transport.StatusOK},
		{"forward mode connect", echo.String(), connectTo(echo), transport.StatusNotAllowed},
		{"forward mode UDP", echo.String(), udp, transport.StatusNotAllowed},
		{"forward target down", closedPort(t).String(), def, transport.StatusConnectionRefused},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// allowPrivate is true so that only the mode can refuse.
			c, _ := runHandler(t, newEgress(true, tt.forward), tt.req)
			if got := readStatus(t, c); got != tt.want {
				t.Fatalf("status %v, want %v", got, tt.want)
			}
			if tt.want == transport.StatusOK {
				echoThrough(t, c, "forwarded")
			}
		})
	}
}

// startUDPEcho runs a UDP echo server on 127.0.0.1 and returns its
// address and a count of the datagrams it received.
func startUDPEcho(t *testing.T) (netip.AddrPort, func() int) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			k, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			pc.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

func TestEgressUDP(t *testing.T) {
	echo, received := startUDPEcho(t)
	dst := transport.Addr{Host: "127.0.0.1", Port: echo.Port()}

	t.Run("allowed", func(t *testing.T) {
		e := newEgress(true, "")
		e.lookup = fakeLookup(map[string][]string{"udp.test": {"127.0.0.1"}})
		c, done := runHandler(t, e, transport.Request{Command: transport.CmdUDP})
		if got := readStatus(t, c); got != transport.StatusOK {
			t.Fatalf("status %v", got)
		}
		buf := make([]byte, 2+transport.MaxDatagramLen)
		for i, to := range []transport.Addr{dst, {Host: "udp.test", Port: echo.Port()}, dst} {
			msg := fmt.Sprintf("datagram %d", i)
			if err := transport.WriteDatagram(c, to, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			src, payload, err := transport.ReadDatagram(c, buf)
			if err != nil {
				t.Fatal(err)
			}
			if src != dst || string(payload) != msg {
				t.Fatalf("got %v %q, want %v %q", src, payload, dst, msg)
			}
		}
		// The client's end closing ends the relay.
		c.CloseWrite()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Fatal("relay did not end when the stream did")
		}
	})

	t.Run("refused destination dropped", func(t *testing.T) {
		before := received()
		c, _ := runHandler(t, newEgress(false, ""), transport.Request{Command: transport.CmdUDP})
		if got := readStatus(t, c); got != transport.StatusOK {
			t.Fatalf("status %v", got)
		}
		transport.WriteDatagram(c, dst, []byte("to loopback"))
		transport.WriteDatagram(c, transport.Addr{Host: "::ffff:127.0.0.1", Port: echo.Port()}, []byte("to mapped loopback"))
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		var b [1]byte
		if n, err := c.Read(b[:]); n != 0 || !isTimeout(err) {
			t.Fatalf("read %d bytes, %v; want nothing", n, err)
		}
		if received() != before {
			t.Fatal("a refused datagram reached the destination")
		}
	})

	t.Run("idle", func(t *testing.T) {
		e := newEgress(true, "")
		e.udpIdle = 200 * time.Millisecond
		c, done := runHandler(t, e, transport.Request{Command: transport.CmdUDP})
		if got := readStatus(t, c); got != transport.StatusOK {
			t.Fatalf("status %v", got)
		}
		start := time.Now()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Fatal("idle relay did not end")
		}
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Fatalf("ended after %v, before the idle timeout", d)
		}
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("stream did not end cleanly: %v", err)
		}
	})
}

// TestUDPPeerTable checks the bound on remembered destinations.
func TestUDPPeerTable(t *testing.T) {
	r := &udpRelay{e: newEgress(false, ""), peers: make(map[netip.AddrPort]time.Time)}
	for i := range udpMaxPeers {
		ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{8, 8, byte(i >> 8), byte(i)}), 53)
		if !r.remember(ap) {
			t.Fatalf("peer %d refused", i)
		}
	}
	extra := netip.MustParseAddrPort("9.9.9.9:53")
	if r.remember(extra) {
		t.Fatal("table grew past udpMaxPeers")
	}
	if !r.known(netip.MustParseAddrPort("8.8.0.0:53")) || r.known(extra) {
		t.Fatal("known() disagrees with remember()")
	}
	// Entries idle for longer than the idle timeout make room.
	for a := range r.peers {
		r.peers[a] = time.Now().Add(-2 * DefaultUDPIdleTimeout)
		break
	}
	if !r.remember(extra) {
		t.Fatal("stale entry did not make room")
	}
}

// selfSignedCert returns a fresh self-signed ECDSA certificate for name.
func selfSignedCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// bridgeSession runs a real bridge on loopback with e.Handle as its
// stream handler and returns an authenticated session to it: the egress
// as the binary runs it, under the real handshake, smux and stream
// requests.
func bridgeSession(t *testing.T, e *Handler) *transport.Session {
	t.Helper()
	const sni = "bridge.test"
	priv, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cert := selfSignedCert(t, sni)
	srv, err := transport.NewServer(transport.ServerConfig{
		PrivateKey: priv,
		Site: &transport.SiteFace{
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
			Handler:   http.NotFoundHandler(),
		},
		Handler: e.Handle,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sess, err := transport.Dial(ctx, &transport.ClientConfig{
		Address: ln.Addr().String(),
		Params:  link.Params{PublicKey: priv.Public(), ServerName: sni, Pin: transporttest.Pin(t, cert)},
	})
	if err != nil {
		srv.Close()
		<-errc
		t.Fatalf("dialing the test bridge: %v", err)
	}
	t.Cleanup(func() {
		sess.Close()
		srv.Close()
		<-errc
	})
	return sess
}

// TestEgressThroughBridge runs the egress behind a real transport pair:
// what a client's OpenStream gets back is the egress's decision.
func TestEgressThroughBridge(t *testing.T) {
	echo := startTCPEcho(t)
	udpEcho, _ := startUDPEcho(t)
	closed := closedPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	private := bridgeSession(t, newEgress(true, ""))
	st, err := private.OpenStream(ctx, connectTo(echo))
	if err != nil {
		t.Fatalf("CONNECT to the echo server: %v", err)
	}
	st.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(st, "over the tunnel")
	st.(interface{ CloseWrite() error }).CloseWrite()
	if got, err := io.ReadAll(st); err != nil || string(got) != "over the tunnel" {
		t.Fatalf("echo %q, %v", got, err)
	}
	st.Close()

	_, err = private.OpenStream(ctx, connectTo(closed))
	var se *transport.StatusError
	if !errors.As(err, &se) || se.Status != transport.StatusConnectionRefused {
		t.Fatalf("CONNECT to a closed port: %v, want connection refused", err)
	}

	us, err := private.OpenStream(ctx, transport.Request{Command: transport.CmdUDP})
	if err != nil {
		t.Fatalf("UDP stream: %v", err)
	}
	us.SetDeadline(time.Now().Add(testTimeout))
	dst := transport.Addr{Host: "127.0.0.1", Port: udpEcho.Port()}
	if err := transport.WriteDatagram(us, dst, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2+transport.MaxDatagramLen)
	src, payload, err := transport.ReadDatagram(us, buf)
	if err != nil || src != dst || string(payload) != "ping" {
		t.Fatalf("UDP echo: %v %q, %v", src, payload, err)
	}
	us.Close()

	public := bridgeSession(t, newEgress(false, ""))
	_, err = public.OpenStream(ctx, connectTo(echo))
	if !errors.As(err, &se) || se.Status != transport.StatusNotAllowed {
		t.Fatalf("CONNECT to loopback without -allow-private: %v, want not allowed", err)
	}
	if public.IsClosed() {
		t.Fatal("a refusal closed the session")
	}
}

// TestEgressRefusesOwnAddresses proves the policy refuses every address
// of this machine's own interfaces, public ones included (a bridge on a
// VPS must not let clients reach services bound to its public address),
// unless -allow-private.
func TestEgressRefusesOwnAddresses(t *testing.T) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	e := newEgress(false, "")
	open := newEgress(true, "")
	n := 0
	for _, a := range as {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		n++
		if e.allowed(p.Addr()) {
			t.Errorf("own address %v allowed", p.Addr())
		}
		if !open.allowed(p.Addr()) {
			t.Errorf("own address %v refused with -allow-private", p.Addr())
		}
	}
	if n == 0 {
		t.Fatal("no interface addresses to test with")
	}
	// A public address that is not ours stays allowed (no traffic is sent).
	if !e.allowed(netip.MustParseAddr("1.1.1.1")) {
		t.Error("a public address was refused")
	}
}

// TestStuckDestinationEndsTheStream: a destination that accepted but
// takes nothing of what the client sends (a hung server, a tarpit) ends
// the stream after Config.WriteStallTimeout, so that what the bridge
// holds for it is let go. Before, the relay waited on it for as long as
// the destination kept the connection open: the bridge held the stream's
// bytes, and its client, which counts them until the bridge lets them
// go, lost that much of its session's room for good.
func TestStuckDestinationEndsTheStream(t *testing.T) {
	client, _, done := stallRelay(t, 300*time.Millisecond) // the destination never reads
	// More than the kernel's buffers on both sides take.
	go client.Write(make([]byte, 64<<20))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream towards a destination that reads nothing did not end within 10 s")
	}
}

// stallRelay runs a TCP stream through an egress whose WriteStallTimeout
// is stall to a destination on loopback, and returns the client's end,
// the destination's end (closed when the test ends, before the handler
// is waited for) and a channel closed when the handler has returned.
func stallRelay(t *testing.T, stall time.Duration) (client *net.TCPConn, dst net.Conn, done <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e := New(Config{AllowPrivate: true, WriteStallTimeout: stall})
	client, done = runHandler(t, e, connectTo(ln.Addr().(*net.TCPAddr).AddrPort()))
	dst, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Close() })
	if got := readStatus(t, client); got != transport.StatusOK {
		t.Fatalf("status %v", got)
	}
	return client, dst, done
}

// TestSlowDestinationKeepsTheStream: a destination that reads, however
// slowly, keeps its stream: one write that takes longer than
// WriteStallTimeout in all, but makes progress, does not end it.
func TestSlowDestinationKeepsTheStream(t *testing.T) {
	// A second: TCP itself may wait a few hundred milliseconds to tell
	// a sender that a full window opened again (its persist timer), and
	// more under a loaded CI machine.
	client, slow, done := stallRelay(t, time.Second)
	const size = 32 << 20 // more than the kernel's buffers take
	go client.Write(make([]byte, size))
	// Read 256 KiB every 100 ms for four seconds, four times the stall
	// timeout: progress, far slower than the writes' pace.
	buf := make([]byte, 256<<10)
	read := int64(0)
	for range 40 {
		slow.SetReadDeadline(time.Now().Add(time.Second))
		n, err := io.ReadFull(slow, buf)
		if err != nil {
			t.Fatalf("the destination's read: %v", err)
		}
		read += int64(n)
		select {
		case <-done:
			t.Fatal("the stream ended while its destination was reading")
		case <-time.After(100 * time.Millisecond):
		}
	}
	// And what is left goes through.
	slow.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := io.Copy(io.Discard, io.LimitReader(slow, size-read)); n != size-read {
		t.Fatalf("the rest of the upload: %d bytes of %d, %v", n, size-read, err)
	}
}
