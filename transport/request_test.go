package transport

import (
	"bytes"
	"encoding/binary"
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

// TestAddrIPLiteralNameIsIP is the regression test for the first
// FuzzReadDatagram finding: an IP literal sent as a name (ATYP 3) came
// back spelled as sent, "0::" for "::" or "::ffff:127.0.0.1" for
// "127.0.0.1", so one destination had several spellings (the mapped one
// TestRequestMappedIPv4IsIPv4 removed for ATYP 4, among them), and
// WriteDatagram then ReadDatagram turned the address into another. A
// name with a zone stays a name: the wire has no IP form for it.
func TestAddrIPLiteralNameIsIP(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"0::", "::"},
		{"::ffff:127.0.0.1", "127.0.0.1"},
		{"2001:DB8:0::5", "2001:db8::5"},
		{"0:0:0:0:0:0:0:1", "::1"},
		{"192.0.2.1", "192.0.2.1"},
		{"fe80::1%eth0", "fe80::1%eth0"},
		{"example.org", "example.org"},
	} {
		in := binary.BigEndian.AppendUint16(append([]byte{atypDomain, byte(len(c.name))}, c.name...), 53)
		a, err := ReadAddr(bytes.NewReader(in))
		if err != nil || a != (Addr{Host: c.want, Port: 53}) {
			t.Errorf("name %q decoded as %v (%v), want %s", c.name, a, err, c.want)
		}
	}
	// The fuzzer's input: a frame whose address is the name "0::".
	in := []byte("\x00\x0f\x03\x030::0000000000")
	addr, payload, err := ReadDatagram(bytes.NewReader(in), make([]byte, 2+MaxDatagramLen))
	if err != nil || addr != (Addr{Host: "::", Port: 0x3030}) || string(payload) != "00000000" {
		t.Fatalf("datagram read as %v %q (%v), want [::]:12336 with 00000000", addr, payload, err)
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

// FuzzReadDatagram proves the UDP relay's frame decoder, which the bridge
// runs on whatever an app sends through a relay, never panics, reads
// exactly one frame (the 2-byte length and as many bytes as it says, no
// byte past it), and returns either an error and nothing else, or an
// address and a payload that is the frame's tail, in the buffer it was
// given. What it accepts survives WriteDatagram and a second
// ReadDatagram unchanged, and re-encodes to the very bytes it read when
// the address was sent in the one form AppendBinary writes.
func FuzzReadDatagram(f *testing.F) {
	for _, d := range []struct {
		addr    Addr
		payload string
	}{
		{Addr{"198.51.100.1", 53}, "\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"},
		{Addr{"2001:db8::53", 53}, "query"},
		{Addr{"dns.example", 853}, ""},
		{Addr{strings.Repeat("h", 255), 65535}, "x"},
	} {
		var b bytes.Buffer
		if err := WriteDatagram(&b, d.addr, []byte(d.payload)); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	// Two frames back to back: only the first may be read.
	var two bytes.Buffer
	WriteDatagram(&two, Addr{"192.0.2.7", 443}, []byte("quic"))
	WriteDatagram(&two, Addr{"192.0.2.8", 443}, []byte("next"))
	f.Add(two.Bytes())
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte{0, 0})                                // empty frame: no address
	f.Add([]byte{0, 3, 3, 0, 0})                       // empty host name
	f.Add([]byte{0, 7, 1, 127, 0, 0, 1, 0})            // address longer than the frame
	f.Add([]byte{0, 9, 3, 7, '1', '.', '2', '.', '3'}) // frame cut inside the name
	f.Add([]byte{0, 5, 9, 1, 2, 3, 4})                 // unknown address type
	f.Add([]byte{0xff, 0xff, 1, 10, 0, 0, 1, 0, 53})   // length far past the input
	f.Add(append([]byte{0, 20, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1, 0, 53}, 'x'))
	f.Add([]byte{0, 7, 3, 2, ':', ':', 0, 53, 'x'}) // an IPv6 literal sent as a name
	buf := make([]byte, 2+MaxDatagramLen)
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		addr, payload, err := ReadDatagram(r, buf)
		read := len(in) - r.Len()
		if len(in) >= 2 {
			if n := 2 + int(in[0])<<8 + int(in[1]); read > n {
				t.Fatalf("read %d bytes of a %d-byte frame", read, n)
			}
		}
		if err != nil {
			if addr != (Addr{}) || payload != nil {
				t.Fatalf("error %v came with %v and %d payload bytes", err, addr, len(payload))
			}
			return
		}
		n := 2 + int(in[0])<<8 + int(in[1])
		if read != n {
			t.Fatalf("accepted a %d-byte frame after reading %d bytes", n, read)
		}
		if len(payload) > len(buf)-2 || len(payload) > n-2 {
			t.Fatalf("%d payload bytes from a %d-byte frame", len(payload), n)
		}
		// The payload is the frame's tail, read into buf.
		if len(payload) > 0 && &payload[len(payload)-1] != &buf[n-1] {
			t.Fatal("payload is not the tail of the frame in buf")
		}
		if !bytes.Equal(payload, in[n-len(payload):n]) {
			t.Fatalf("payload % x is not the frame's tail % x", payload, in[n-len(payload):n])
		}
		// Keep the payload: buf is reused by the second read below.
		payload = bytes.Clone(payload)
		var out bytes.Buffer
		if err := WriteDatagram(&out, addr, payload); err != nil {
			t.Fatalf("accepted %v with %d payload bytes, which WriteDatagram refuses: %v", addr, len(payload), err)
		}
		enc, _ := addr.AppendBinary(nil)
		if canonical := len(enc) <= n-2 && bytes.Equal(enc, in[2:2+len(enc)]); canonical && !bytes.Equal(out.Bytes(), in[:n]) {
			t.Fatalf("%v re-encodes as % x, read % x", addr, out.Bytes(), in[:n])
		}
		addr2, payload2, err := ReadDatagram(&out, make([]byte, 2+MaxDatagramLen))
		if err != nil || addr2 != addr || !bytes.Equal(payload2, payload) {
			t.Fatalf("%v with % x came back as %v with % x (%v)", addr, payload, addr2, payload2, err)
		}
	})
}

// FuzzReadReply proves the client's reader of the bridge's answer to a
// stream request never panics and reads the 2-byte reply and no byte of
// the stream data behind it; that it succeeds only on the bytes
// marshalReply writes for StatusOK; that a *StatusError comes only from
// the bytes marshalReply writes for the status it carries; and that
// anything else (a short reply, another version) is a plain error.
func FuzzReadReply(f *testing.F) {
	for _, s := range []Status{StatusOK, StatusGeneralFailure, StatusNotAllowed, StatusConnectionRefused, StatusAddrTypeNotSupported} {
		f.Add(marshalReply(s))
		f.Add(append(marshalReply(s), "stream data"...))
	}
	f.Add([]byte{})
	f.Add([]byte{requestVersion})
	f.Add([]byte{0, 0})
	f.Add([]byte{2, 0})
	f.Add([]byte{requestVersion, 0xff})
	f.Add([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}) // a SOCKS5 reply where ours belongs
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		err := readReply(r)
		if read := len(in) - r.Len(); read > 2 {
			t.Fatalf("read %d bytes of a 2-byte reply", read)
		}
		var se *StatusError
		switch {
		case err == nil:
			if !bytes.Equal(in[:2], marshalReply(StatusOK)) {
				t.Fatalf("accepted % x, which the bridge writes for no status", in[:2])
			}
		case errors.As(err, &se):
			if se.Status == StatusOK || !bytes.Equal(in[:2], marshalReply(se.Status)) {
				t.Fatalf("% x read as status %v", in[:2], se.Status)
			}
		default:
			if len(in) >= 2 && bytes.Equal(in[:2], marshalReply(Status(in[1]))) {
				t.Fatalf("the bridge's reply % x read as an error: %v", in[:2], err)
			}
			if !strings.HasPrefix(err.Error(), "transport: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		}
	})
}
