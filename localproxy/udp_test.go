package localproxy

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// udpAssociate opens an association and returns the control connection
// and the proxy's UDP address.
func udpAssociate(t *testing.T, proxy string, announce []byte) (*net.TCPConn, *net.UDPAddr) {
	t.Helper()
	c := dialProxy(t, proxy)
	r := socksRequestReply(t, c, "", "", socksCmdUDP, announce)
	if r.rep != repSucceeded {
		t.Fatalf("UDP ASSOCIATE REP = %#x", r.rep)
	}
	ap, err := netip.ParseAddrPort(r.bnd.String())
	if err != nil || ap.Port() == 0 {
		t.Fatalf("bound address %v: %v", r.bnd, err)
	}
	if ap.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("bound address %v, want the control connection's 127.0.0.1", ap)
	}
	return c, net.UDPAddrFromAddrPort(ap)
}

// udpDatagram builds a datagram with the SOCKS UDP header.
func udpDatagram(t *testing.T, frag byte, dst transport.Addr, payload string) []byte {
	t.Helper()
	b, err := dst.AppendBinary([]byte{0, 0, frag})
	if err != nil {
		t.Fatal(err)
	}
	return append(b, payload...)
}

// recvUDP reads one datagram, or returns nil after wait.
func recvUDP(t *testing.T, pc *net.UDPConn, wait time.Duration) []byte {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, maxUDPPacket)
	n, err := pc.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func TestUDPAssociate(t *testing.T) {
	f := &fakeOpener{}
	_, proxy := startProxy(t, f, "")
	ctrl, relay := udpAssociate(t, proxy, []byte{socksAtypIPv4, 0, 0, 0, 0, 0, 0})

	app, err := net.DialUDP("udp", nil, relay)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	for _, dst := range []transport.Addr{
		{Host: "192.0.2.7", Port: 53},
		{Host: "2001:db8::7", Port: 443},
		{Host: "dns.example", Port: 53},
	} {
		msg := udpDatagram(t, 0, dst, "query to "+dst.String())
		if _, err := app.Write(msg); err != nil {
			t.Fatal(err)
		}
		// The fake echoes from the destination: the reply's header names
		// it as the source, which is the same header.
		if got := recvUDP(t, app, testTimeout); !bytes.Equal(got, msg) {
			t.Fatalf("reply %q, want %q", got, msg)
		}
	}

	// A fragment is dropped, and so is anything from another port once
	// the app's port is locked in.
	app.Write(udpDatagram(t, 1, transport.Addr{Host: "192.0.2.7", Port: 53}, "fragment"))
	stranger, err := net.DialUDP("udp", nil, relay)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	stranger.Write(udpDatagram(t, 0, transport.Addr{Host: "192.0.2.7", Port: 53}, "stranger"))
	if got := recvUDP(t, app, 200*time.Millisecond); got != nil {
		t.Errorf("app got %q from a dropped datagram", got)
	}
	if got := recvUDP(t, stranger, 50*time.Millisecond); got != nil {
		t.Errorf("stranger got %q", got)
	}
	// Still working after the drops.
	msg := udpDatagram(t, 0, transport.Addr{Host: "192.0.2.7", Port: 53}, "again")
	app.Write(msg)
	if got := recvUDP(t, app, testTimeout); !bytes.Equal(got, msg) {
		t.Fatalf("reply %q, want %q", got, msg)
	}

	// Closing the control connection ends the association: the socket
	// closes and the stream with it (the fake's echo goroutine ends,
	// which the leak check and startProxy's cleanup wait for).
	ctrl.Close()
	deadline := time.Now().Add(testTimeout)
	for {
		app.Write(msg)
		if recvUDP(t, app, 50*time.Millisecond) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("association still relaying after its control connection closed")
		}
	}
	f.wg.Wait()

	reqs := f.requests()
	if len(reqs) != 1 || reqs[0].Command != transport.CmdUDP {
		t.Errorf("requests %v, want one UDP stream", reqs)
	}
}

// TestUDPAssociateAnnouncedPort checks that when the app names its UDP
// port in the request, datagrams from another port are not accepted even
// if they come first.
func TestUDPAssociateAnnouncedPort(t *testing.T) {
	_, proxy := startProxy(t, &fakeOpener{}, "")
	app, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	port := uint16(app.LocalAddr().(*net.UDPAddr).Port)
	_, relay := udpAssociate(t, proxy, ipv4Addr(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()))
	msg := udpDatagram(t, 0, transport.Addr{Host: "192.0.2.9", Port: 9}, "x")
	other.WriteToUDP(msg, relay)
	if got := recvUDP(t, other, 200*time.Millisecond); got != nil {
		t.Fatalf("unannounced port got %q", got)
	}
	app.WriteToUDP(msg, relay)
	if got := recvUDP(t, app, testTimeout); !bytes.Equal(got, msg) {
		t.Fatalf("announced port got %q", got)
	}
}

// TestUDPAssociateRefused checks that a bridge refusing UDP is reported
// with its status and no socket is left open.
func TestUDPAssociateRefused(t *testing.T) {
	f := &fakeOpener{err: &transport.StatusError{Status: transport.StatusCommandNotSupported}}
	_, proxy := startProxy(t, f, "")
	c := dialProxy(t, proxy)
	if r := socksRequestReply(t, c, "", "", socksCmdUDP, []byte{socksAtypIPv4, 0, 0, 0, 0, 0, 0}); r.rep != repCommandNotSupported {
		t.Fatalf("REP = %#x", r.rep)
	}
	expectClosed(t, c)
}

func TestParseUDPHeader(t *testing.T) {
	for _, tt := range []struct {
		name    string
		in      []byte
		addr    transport.Addr
		payload string
		ok      bool
	}{
		{"IPv4", []byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 53, 'h', 'i'}, transport.Addr{Host: "192.0.2.1", Port: 53}, "hi", true},
		{"empty payload", []byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 53}, transport.Addr{Host: "192.0.2.1", Port: 53}, "", true},
		{"domain", append(append([]byte{0, 0, 0}, domainAddr("a.example", 123)...), 'x'), transport.Addr{Host: "a.example", Port: 123}, "x", true},
		{"IPv6", append(append([]byte{0, 0, 0}, ipv6Addr("2001:db8::1", 1)...), 'y'), transport.Addr{Host: "2001:db8::1", Port: 1}, "y", true},
		{"fragment", []byte{0, 0, 1, 1, 192, 0, 2, 1, 0, 53, 'h'}, transport.Addr{}, "", false},
		{"short", []byte{0, 0, 0, 1, 192, 0, 2, 1, 0}, transport.Addr{}, "", false},
		{"truncated domain", []byte{0, 0, 0, 3, 20, 'a', 'b', 'c', 'd', 'e', 'f'}, transport.Addr{}, "", false},
		{"bad atyp", []byte{0, 0, 0, 9, 192, 0, 2, 1, 0, 53}, transport.Addr{}, "", false},
	} {
		addr, payload, err := parseUDPHeader(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("%s: error %v, want ok %v", tt.name, err, tt.ok)
			continue
		}
		if tt.ok && (addr != tt.addr || string(payload) != tt.payload) {
			t.Errorf("%s: got %v %q, want %v %q", tt.name, addr, payload, tt.addr, tt.payload)
		}
	}
}

// FuzzUDPHeader checks that the datagram header parser never panics and
// that a parsed datagram rebuilds to the same bytes, modulo the address
// form (re-encoding is stable).
func FuzzUDPHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 53, 'h', 'i'})
	f.Add(append(append([]byte{0, 0, 0}, domainAddr("a.example", 123)...), 'x'))
	f.Add([]byte{0, 0, 0, 3, 0, 0, 53})
	f.Fuzz(func(t *testing.T, in []byte) {
		addr, payload, err := parseUDPHeader(in)
		if err != nil {
			return
		}
		b, err := appendUDPHeader(nil, addr)
		if err != nil {
			t.Fatalf("cannot rebuild header for %v: %v", addr, err)
		}
		addr2, payload2, err := parseUDPHeader(append(b, payload...))
		if err != nil || !bytes.Equal(payload2, payload) {
			t.Fatalf("rebuilt datagram parses as %v %q, %v; want %v %q", addr2, payload2, err, addr, payload)
		}
		if b2, _ := appendUDPHeader(nil, addr2); !bytes.Equal(b2, b) {
			t.Fatalf("header not stable: %x then %x", b, b2)
		}
	})
}

// TestUDPAssociateDropsWhatNoFrameHolds: an app on IPv6 loopback can send
// a datagram of 65527 bytes. Named by an IPv6 literal sent as a name
// ("::", 2 bytes), it grows by 13 bytes in the frame's form, past what a
// frame holds. It is dropped, and the association goes on: it used to
// end, and with it every datagram of the app's after it.
func TestUDPAssociateDropsWhatNoFrameHolds(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	f := &fakeOpener{}
	p := NewServer(Config{Opener: f, RequestTimeout: testTimeout})
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		<-errc
		f.wg.Wait()
	})
	c := dialProxy(t, ln.Addr().String())
	r := socksRequestReply(t, c, "", "", socksCmdUDP, []byte{socksAtypIPv4, 0, 0, 0, 0, 0, 0})
	if r.rep != repSucceeded {
		t.Fatalf("UDP ASSOCIATE REP = %#x", r.rep)
	}
	relay, err := net.ResolveUDPAddr("udp", r.bnd.String())
	if err != nil {
		t.Fatal(err)
	}
	app, err := net.DialUDP("udp", nil, relay)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	const maxIPv6UDP = 65527
	name := []byte{0, 0, 0, socksAtypDomain, 2, ':', ':', 0, 53}
	big := append(name, make([]byte, maxIPv6UDP-len(name))...)
	if _, err := app.Write(big); err != nil {
		t.Skip("this system's IPv6 loopback does not take a 65527-byte datagram:", err)
	}
	msg := udpDatagram(t, 0, transport.Addr{Host: "192.0.2.7", Port: 53}, "after the big one")
	app.Write(msg)
	if got := recvUDP(t, app, testTimeout); !bytes.Equal(got, msg) {
		t.Fatalf("reply %q after a datagram no frame holds, want %q", got, msg)
	}
}
