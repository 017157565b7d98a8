package transport

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestRequestRoundTrip proves every request kind encodes and decodes to
// itself, and that the decoder reads exactly the request and no byte of
// the data that follows it.
func TestRequestRoundTrip(t *testing.T) {
	long := strings.Repeat("a", 255)
	for _, req := range []Request{
		{Command: CmdConnect, Addr: Addr{Host: "example.org", Port: 443}},
		{Command: CmdConnect, Addr: Addr{Host: long, Port: 1}},
		{Command: CmdConnect, Addr: Addr{Host: "203.0.113.9", Port: 65535}},
		{Command: CmdConnect, Addr: Addr{Host: "2001:db8::5", Port: 22}},
		{Command: CmdDefault},
		{Command: CmdUDP},
	} {
		b, err := req.MarshalBinary()
		if err != nil {
			t.Fatalf("%v: %v", req, err)
		}
		r := bytes.NewReader(append(b, "DATA"...))
		got, err := ReadRequest(r)
		if err != nil || got != req {
			t.Fatalf("%v came back as %v (%v)", req, got, err)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "DATA" {
			t.Fatalf("%v: decoder consumed data after the request: %q left", req, rest)
		}
		// Every truncation is an error, never a shorter request.
		for i := range b {
			if _, err := ReadRequest(bytes.NewReader(b[:i])); err == nil {
				t.Fatalf("%v truncated to %d bytes decoded", req, i)
			}
		}
	}
}

// TestRequestErrors proves malformed requests get the status a server
// must answer with.
func TestRequestErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want Status
	}{
		{"version", []byte{2, 1}, StatusGeneralFailure},
		{"command", []byte{1, 9}, StatusCommandNotSupported},
		{"address type", []byte{1, 1, 7, 0, 0}, StatusAddrTypeNotSupported},
	} {
		_, err := ReadRequest(bytes.NewReader(c.in))
		var se *StatusError
		if !errors.As(err, &se) || se.Status != c.want {
			t.Errorf("%s: err = %v, want status %v", c.name, err, c.want)
		}
	}
	if _, err := ReadRequest(bytes.NewReader([]byte{1, 1, 3, 0, 0, 80})); err == nil {
		t.Error("empty host name accepted")
	}
	if _, err := (Request{Command: CmdConnect, Addr: Addr{Host: strings.Repeat("a", 256), Port: 1}}).MarshalBinary(); err == nil {
		t.Error("256-byte host name encoded")
	}
}

// TestDatagramRoundTrip proves UDP relay framing carries address and
// payload intact, and refuses truncated frames.
func TestDatagramRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	addrs := []Addr{{"198.51.100.1", 53}, {"2001:db8::53", 53}, {"dns.example", 853}}
	for i, a := range addrs {
		if err := WriteDatagram(&buf, a, bytes.Repeat([]byte{byte(i)}, 100*i)); err != nil {
			t.Fatal(err)
		}
	}
	frame := make([]byte, 2+MaxDatagramLen)
	for i, a := range addrs {
		got, p, err := ReadDatagram(&buf, frame)
		if err != nil || got != a || !bytes.Equal(p, bytes.Repeat([]byte{byte(i)}, 100*i)) {
			t.Fatalf("datagram %d: %v %v %d bytes", i, got, err, len(p))
		}
	}
	var one bytes.Buffer
	WriteDatagram(&one, addrs[0], []byte("x"))
	b := one.Bytes()
	if _, _, err := ReadDatagram(bytes.NewReader(b[:len(b)-1]), frame); err == nil {
		t.Fatal("truncated datagram accepted")
	}
	if err := WriteDatagram(io.Discard, addrs[0], make([]byte, MaxDatagramLen)); err == nil {
		t.Fatal("oversized datagram written")
	}
}

// TestRequestMappedIPv4IsIPv4 is the regression test for the first
// FuzzReadRequest finding: an IPv4-mapped IPv6 address decoded as
// "::ffff:a.b.c.d", a second spelling of an IPv4 destination that an
// egress policy might not recognise.
func TestRequestMappedIPv4IsIPv4(t *testing.T) {
	in := append([]byte{1, 1, 4}, make([]byte, 10)...)
	in = append(in, 0xff, 0xff, 127, 0, 0, 1, 0, 80)
	req, err := ReadRequest(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if req.Addr.Host != "127.0.0.1" {
		t.Fatalf("decoded as %q, want 127.0.0.1", req.Addr.Host)
	}
}

// FuzzReadRequest: the request decoder never panics, never reads more
// than MaxAddrLen+2 bytes, and what it accepts re-encodes to the bytes it
// read.
func FuzzReadRequest(f *testing.F) {
	for _, req := range []Request{
		{Command: CmdConnect, Addr: Addr{Host: "example.org", Port: 443}},
		{Command: CmdConnect, Addr: Addr{Host: "203.0.113.9", Port: 80}},
		{Command: CmdConnect, Addr: Addr{Host: "2001:db8::5", Port: 22}},
		{Command: CmdDefault},
		{Command: CmdUDP},
	} {
		b, _ := req.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{1, 1, 3, 0})
	f.Add([]byte{1, 1, 3, 255})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		req, err := ReadRequest(r)
		read := len(in) - r.Len()
		if read > 2+MaxAddrLen {
			t.Fatalf("read %d bytes", read)
		}
		if err != nil {
			return
		}
		b, err := req.MarshalBinary()
		if err != nil {
			// A domain that parses as an IP literal re-encodes as an IP;
			// anything else must re-encode.
			t.Fatalf("accepted %v but cannot encode it: %v", req, err)
		}
		if req.Command != CmdConnect || in[2] == atypIPv4 || (in[2] == atypIPv6 && !isMapped(in[3:19])) {
			if !bytes.Equal(b, in[:read]) {
				t.Fatalf("%v re-encodes as % x, read % x", req, b, in[:read])
			}
		}
	})
}

func isMapped(b []byte) bool {
	return bytes.Equal(b[:12], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff})
}
