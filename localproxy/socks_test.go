package localproxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// A tiny SOCKS5 client, enough to drive the proxy byte by byte.

func socksGreeting(methods ...byte) []byte {
	return append([]byte{socksVersion, byte(len(methods))}, methods...)
}

// ipv4Addr returns ATYP | ADDR | PORT of an "ip:port" IPv4 address.
func ipv4Addr(t *testing.T, hostport string) []byte {
	t.Helper()
	ap := netip.MustParseAddrPort(hostport)
	v4 := ap.Addr().As4()
	return binary.BigEndian.AppendUint16(append([]byte{socksAtypIPv4}, v4[:]...), ap.Port())
}

func ipv6Addr(ip string, port uint16) []byte {
	v6 := netip.MustParseAddr(ip).As16()
	return binary.BigEndian.AppendUint16(append([]byte{socksAtypIPv6}, v6[:]...), port)
}

func domainAddr(host string, port uint16) []byte {
	return binary.BigEndian.AppendUint16(append([]byte{socksAtypDomain, byte(len(host))}, host...), port)
}

// socksConnect negotiates (with user/password when user is not empty),
// sends CONNECT to addr and returns the REP. It fails the test on a
// protocol error.
func socksConnect(t *testing.T, c net.Conn, user, pass string, addr []byte) byte {
	t.Helper()
	return socksRequestReply(t, c, user, pass, socksCmdConnect, addr).rep
}

type socksReplyMsg struct {
	rep byte
	bnd transport.Addr
}

func socksRequestReply(t *testing.T, c net.Conn, user, pass string, cmd byte, addr []byte) socksReplyMsg {
	t.Helper()
	method := byte(methodNoAuth)
	if user != "" {
		method = methodUserPass
	}
	var msg []byte
	msg = append(msg, socksGreeting(method)...)
	if user != "" {
		msg = append(msg, userPassVersion, byte(len(user)))
		msg = append(append(msg, user...), byte(len(pass)))
		msg = append(msg, pass...)
	}
	// Pipelined, as curl does: the proxy must not lose the request.
	msg = append(append(msg, socksVersion, cmd, 0), addr...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var b [2]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b != [2]byte{socksVersion, method} {
		t.Fatalf("method selection: %x, %v", b, err)
	}
	if user != "" {
		if _, err := io.ReadFull(c, b[:]); err != nil || b != [2]byte{userPassVersion, userPassOK} {
			t.Fatalf("user/password reply: %x, %v", b, err)
		}
	}
	var hdr [3]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	if hdr[0] != socksVersion || hdr[2] != 0 {
		t.Fatalf("reply header %x", hdr)
	}
	bnd, err := readSOCKSAddr(c)
	if err != nil {
		t.Fatalf("reply address: %v", err)
	}
	return socksReplyMsg{rep: hdr[1], bnd: bnd}
}

func TestSOCKSConnect(t *testing.T) {
	echo := startEcho(t)
	echoPort, _ := strconv.Atoi(echo[len("127.0.0.1:"):])
	port := uint16(echoPort)
	f := &fakeOpener{routes: map[string]string{
		"echo.example:" + strconv.Itoa(echoPort):  echo,
		"[2001:db8::1]:" + strconv.Itoa(echoPort): echo,
		"192.0.2.1:" + strconv.Itoa(echoPort):     echo,
	}}
	_, addr := startProxy(t, f, "")
	for _, tt := range []struct {
		name string
		addr []byte
		want transport.Addr
	}{
		{"IPv4", ipv4Addr(t, echo), transport.Addr{Host: "127.0.0.1", Port: port}},
		{"domain", domainAddr("echo.example", port), transport.Addr{Host: "echo.example", Port: port}},
		{"IPv6", ipv6Addr("2001:db8::1", port), transport.Addr{Host: "2001:db8::1", Port: port}},
		// One spelling per destination: the bridge's policy and the
		// opener see the IPv4 address, as they do for the tunnel's own
		// requests.
		{"IPv4-mapped IPv6", ipv6Addr("::ffff:192.0.2.1", port), transport.Addr{Host: "192.0.2.1", Port: port}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialProxy(t, addr)
			if rep := socksConnect(t, c, "", "", tt.addr); rep != repSucceeded {
				t.Fatalf("REP = %#x, want success", rep)
			}
			echoRoundTrip(t, c, "hello through "+tt.name)
			reqs := f.requests()
			got := reqs[len(reqs)-1]
			if got.Command != transport.CmdConnect || got.Addr != tt.want {
				t.Errorf("opener got %+v, want connect %v", got, tt.want)
			}
		})
	}
}

// TestSOCKSConnectStatus checks that the bridge's answer reaches the app
// as the REP code, at once, and the connection closes.
func TestSOCKSConnectStatus(t *testing.T) {
	f := &fakeOpener{refuse: map[uint16]transport.Status{
		9:  transport.StatusConnectionRefused,
		10: transport.StatusNotAllowed,
		11: transport.StatusHostUnreachable,
	}}
	_, addr := startProxy(t, f, "")
	for port, want := range map[uint16]byte{9: 0x05, 10: 0x02, 11: 0x04} {
		c := dialProxy(t, addr)
		start := time.Now()
		if rep := socksConnect(t, c, "", "", domainAddr("refused.example", port)); rep != want {
			t.Errorf("port %d: REP = %#x, want %#x", port, rep, want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("port %d: reply took %v", port, d)
		}
		if rest := expectClosed(t, c); len(rest) != 0 {
			t.Errorf("port %d: %x after the failure reply", port, rest)
		}
	}
}

// TestSOCKSBridgeDown checks that a failure of the tunnel itself (not an
// answer of the bridge) is REP 0x01 general failure.
func TestSOCKSBridgeDown(t *testing.T) {
	f := &fakeOpener{err: errors.New("transport: cannot reach the bridge: connection refused")}
	_, addr := startProxy(t, f, "")
	c := dialProxy(t, addr)
	if rep := socksConnect(t, c, "", "", domainAddr("example.com", 443)); rep != repGeneralFailure {
		t.Fatalf("REP = %#x, want general failure", rep)
	}
}

func TestSOCKSUserPass(t *testing.T) {
	echo := startEcho(t)
	_, addr := startProxy(t, &fakeOpener{}, "alice:s3cret")

	t.Run("accept", func(t *testing.T) {
		c := dialProxy(t, addr)
		if rep := socksConnect(t, c, "alice", "s3cret", ipv4Addr(t, echo)); rep != repSucceeded {
			t.Fatalf("REP = %#x", rep)
		}
		echoRoundTrip(t, c, "authenticated")
	})
	for _, tt := range []struct{ name, user, pass string }{
		{"wrong password", "alice", "guess"},
		{"wrong user", "bob", "s3cret"},
		{"empty", "", ""},
		{"prefix", "alice", "s3cre"},
	} {
		t.Run("reject "+tt.name, func(t *testing.T) {
			c := dialProxy(t, addr)
			msg := append(socksGreeting(methodUserPass), userPassVersion, byte(len(tt.user)))
			msg = append(append(msg, tt.user...), byte(len(tt.pass)))
			c.Write(append(msg, tt.pass...))
			got := expectClosed(t, c)
			want := []byte{socksVersion, methodUserPass, userPassVersion, userPassRejected}
			if !bytes.Equal(got, want) {
				t.Fatalf("got %x, want %x and close", got, want)
			}
		})
	}
	t.Run("no-auth refused", func(t *testing.T) {
		c := dialProxy(t, addr)
		c.Write(socksGreeting(methodNoAuth))
		if got := expectClosed(t, c); !bytes.Equal(got, []byte{socksVersion, methodNoneOK}) {
			t.Fatalf("got %x, want 05ff and close", got)
		}
	})
}

// TestSOCKSNoAuthRefusesUserPassOnly checks the other side: without
// configured credentials, an app offering only user/password gets 0xFF.
func TestSOCKSNoAuthRefusesUserPassOnly(t *testing.T) {
	_, addr := startProxy(t, &fakeOpener{}, "")
	c := dialProxy(t, addr)
	c.Write(socksGreeting(methodUserPass))
	if got := expectClosed(t, c); !bytes.Equal(got, []byte{socksVersion, methodNoneOK}) {
		t.Fatalf("got %x, want 05ff and close", got)
	}
}

func TestSOCKSBind(t *testing.T) {
	f := &fakeOpener{}
	_, addr := startProxy(t, f, "")
	c := dialProxy(t, addr)
	if r := socksRequestReply(t, c, "", "", socksCmdBind, domainAddr("example.com", 21)); r.rep != repCommandNotSupported {
		t.Fatalf("REP = %#x, want command not supported", r.rep)
	}
	expectClosed(t, c)
	if len(f.requests()) != 0 {
		t.Error("BIND opened a stream")
	}
}

// TestSOCKSMalformed sends broken handshakes: each must end with the
// connection closed (after the reply given, if any), and nothing opened.
func TestSOCKSMalformed(t *testing.T) {
	f := &fakeOpener{}
	_, addr := startProxy(t, f, "")
	noAuth := []byte{socksVersion, methodNoAuth}
	for _, tt := range []struct {
		name string
		in   []byte
		want []byte // what the proxy answers before closing
	}{
		{"SOCKS4", []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, nil},
		{"truncated greeting", []byte{5}, nil},
		{"truncated methods", []byte{5, 3, 0}, nil},
		{"zero methods", []byte{5, 0}, []byte{5, 0xff}},
		{"only unknown methods", []byte{5, 2, 0x80, 0x03}, []byte{5, 0xff}},
		{"wrong request version", append(socksGreeting(0), 4, 1, 0, 1, 127, 0, 0, 1, 0, 80), noAuth},
		{"truncated request", append(socksGreeting(0), 5, 1, 0), noAuth},
		{"truncated IPv6", append(socksGreeting(0), 5, 1, 0, 4, 0x20, 0x01), noAuth},
		{"truncated domain", append(socksGreeting(0), 5, 1, 0, 3, 10, 'a', 'b'), noAuth},
		{"empty domain", append(socksGreeting(0), 5, 1, 0, 3, 0, 0, 80), append(noAuth, socksReply(repGeneralFailure, netip.AddrPort{})...)},
		{"unknown address type", append(socksGreeting(0), 5, 1, 0, 2, 1, 2, 3, 4, 0, 80), append(noAuth, socksReply(repAddrNotSupported, netip.AddrPort{})...)},
		{"unknown command", append(append(socksGreeting(0), 5, 9, 0), domainAddr("example.com", 80)...), append(noAuth, socksReply(repCommandNotSupported, netip.AddrPort{})...)},
		{"HTTP garbage", []byte("\x16\x03\x01\x00\x05hello"), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialProxy(t, addr)
			c.Write(tt.in)
			c.CloseWrite()
			got := expectClosed(t, c)
			if tt.want != nil && !bytes.Equal(got, tt.want) {
				t.Errorf("got %x, want %x", got, tt.want)
			}
			if tt.want == nil && len(got) > 0 && got[0] == socksVersion {
				t.Errorf("got a SOCKS answer %x", got)
			}
		})
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("%d streams opened for malformed requests", n)
	}
}

// TestSOCKSHandshakeTimeout checks that an app that stops in the middle
// of its greeting is dropped after the request timeout.
func TestSOCKSHandshakeTimeout(t *testing.T) {
	_, addr := startProxy(t, &fakeOpener{}, "", func(c *Config) { c.RequestTimeout = 100 * time.Millisecond })
	c := dialProxy(t, addr)
	c.Write([]byte{5, 2, 0})
	start := time.Now()
	expectClosed(t, c)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

func TestReadSOCKSRequest(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		want socksRequest
		rep  int // -1: no reply, just close
	}{
		{"IPv4", []byte{5, 1, 0, 1, 192, 0, 2, 1, 0x01, 0xbb}, socksRequest{1, transport.Addr{Host: "192.0.2.1", Port: 443}}, 0},
		{"domain", append([]byte{5, 1, 0}, domainAddr("a.example", 80)...), socksRequest{1, transport.Addr{Host: "a.example", Port: 80}}, 0},
		{"IPv6", append([]byte{5, 3, 0}, ipv6Addr("2001:db8::2", 53)...), socksRequest{3, transport.Addr{Host: "2001:db8::2", Port: 53}}, 0},
		// The IPv4-mapped fix from FuzzReadRequest, through the one codec:
		// the local proxy used to pass "::ffff:10.0.0.1" on.
		{"IPv4-mapped IPv6", append([]byte{5, 1, 0}, ipv6Addr("::ffff:10.0.0.1", 22)...), socksRequest{1, transport.Addr{Host: "10.0.0.1", Port: 22}}, 0},
		{"nonzero RSV", []byte{5, 1, 7, 1, 1, 2, 3, 4, 0, 1}, socksRequest{1, transport.Addr{Host: "1.2.3.4", Port: 1}}, 0},
		{"version 4", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 1}, socksRequest{}, -1},
		{"empty", nil, socksRequest{}, -1},
		{"no address", []byte{5, 1, 0}, socksRequest{}, -1},
		{"short port", []byte{5, 1, 0, 1, 1, 2, 3, 4, 0}, socksRequest{}, -1},
		{"empty domain", []byte{5, 1, 0, 3, 0, 0, 80}, socksRequest{}, int(repGeneralFailure)},
		{"bad atyp", []byte{5, 1, 0, 5, 1, 2, 3, 4, 0, 80}, socksRequest{}, int(repAddrNotSupported)},
	} {
		in := tt.in
		if tt.rep == 0 {
			in = append(in, "trailing"...)
		}
		r := bytes.NewReader(in)
		got, err := readSOCKSRequest(r)
		var se *socksError
		switch {
		case tt.rep == 0 && err != nil:
			t.Errorf("%s: error %v", tt.name, err)
		case tt.rep == 0 && got != tt.want:
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		case tt.rep == 0 && r.Len() != len("trailing"):
			t.Errorf("%s: read past the request", tt.name)
		case tt.rep > 0 && (!errors.As(err, &se) || se.rep != byte(tt.rep)):
			t.Errorf("%s: error %v, want reply %#x", tt.name, err, tt.rep)
		case tt.rep < 0 && (err == nil || errors.As(err, &se)):
			t.Errorf("%s: error %v, want a plain error", tt.name, err)
		}
	}
}

// FuzzSOCKSRequest checks that the request parser never panics, never
// reads past the request, and that what it accepts encodes back stably.
func FuzzSOCKSRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80})
	f.Add(append([]byte{5, 1, 0}, domainAddr("example.com", 443)...))
	f.Add(append([]byte{5, 3, 0}, ipv6Addr("::1", 53)...))
	f.Add(append([]byte{5, 1, 0}, ipv6Addr("::ffff:10.0.0.1", 22)...))
	f.Add([]byte{5, 1, 0, 3, 0, 0, 80})
	f.Add([]byte{5, 1, 0, 3, 255, 'a'})
	f.Add([]byte{5, 2, 0, 9})
	f.Add([]byte{4, 1, 0, 80, 1, 2, 3, 4, 0})
	f.Add(append([]byte{5, 1, 0}, domainAddr("127.0.0.1", 1)...))
	f.Add(append([]byte{5, 1, 0}, domainAddr("fe80::1%eth0", 1)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		req, err := readSOCKSRequest(r)
		if err != nil {
			return
		}
		used := len(in) - r.Len()
		if used > 3+transport.MaxAddrLen {
			t.Fatalf("read %d bytes", used)
		}
		enc, err := req.addr.AppendBinary(nil)
		if err != nil {
			t.Fatalf("cannot encode parsed address %+v: %v", req.addr, err)
		}
		again, err := readSOCKSAddr(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("cannot parse re-encoded %x: %v", enc, err)
		}
		enc2, _ := again.AppendBinary(nil)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not stable: %x then %x", enc, enc2)
		}
		// Whatever the app sent must be something the tunnel can carry.
		if _, err := (transport.Request{Command: transport.CmdConnect, Addr: req.addr}).MarshalBinary(); err != nil {
			t.Fatalf("parsed address %+v does not marshal: %v", req.addr, err)
		}
	})
}
