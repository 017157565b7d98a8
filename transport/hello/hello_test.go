package hello

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

const (
	groupX25519      = 0x001d
	groupX25519MLKEM = 0x11ec
)

// TestCaptures proves that real browser hellos are read whole and parsed,
// with the fields the bridge relies on.
func TestCaptures(t *testing.T) {
	for _, c := range loadCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			consumed, msg, err := ReadClientHello(bytes.NewReader(c.stream))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(consumed, c.stream) {
				t.Fatalf("consumed %d bytes, the capture has %d", len(consumed), len(c.stream))
			}
			if !bytes.Equal(msg, deframe(t, c.stream)) {
				t.Fatal("msg is not the records' payload")
			}
			h, err := Parse(msg)
			if err != nil {
				t.Fatal(err)
			}
			checkHello(t, msg, h)
			if h.ServerName == "" {
				t.Error("no server name")
			}
			if len(h.SessionID) != 32 || h.SessionIDOffset != 4+2+32+1 {
				t.Errorf("session_id %d bytes at %d, want 32 at 39", len(h.SessionID), h.SessionIDOffset)
			}
			if ks, ok := h.KeyShare(groupX25519); !ok || len(ks) != 32 {
				t.Errorf("x25519 share: %d bytes, present %v", len(ks), ok)
			}
			if strings.HasPrefix(c.name, "chromium") {
				if ks, ok := h.KeyShare(groupX25519MLKEM); !ok || len(ks) != 1216 {
					t.Errorf("X25519MLKEM768 share: %d bytes, present %v", len(ks), ok)
				}
			}
			if !slices.Contains(h.ALPN, "h2") {
				t.Errorf("ALPN %q lacks h2", h.ALPN)
			}
			if !slices.Contains(h.SupportedVersions, 0x0304) {
				t.Errorf("supported_versions %x lacks TLS 1.3", h.SupportedVersions)
			}
		})
	}
}

// TestReadOneByteAtATime proves that a hello arriving in one-byte segments
// reads the same as one arriving at once.
func TestReadOneByteAtATime(t *testing.T) {
	for _, c := range loadCaptures(t) {
		consumed, msg, err := ReadClientHello(iotest.OneByteReader(bytes.NewReader(c.stream)))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !bytes.Equal(consumed, c.stream) || !bytes.Equal(msg, captureMsg(t, c)) {
			t.Fatalf("%s: one byte at a time read differently", c.name)
		}
	}
}

// TestReadSplitRecords proves that a hello spread over several records, at
// every possible cut (including inside the 4-byte handshake header), reads
// as the same message and that all the records are consumed.
func TestReadSplitRecords(t *testing.T) {
	for _, c := range loadCaptures(t)[:2] {
		msg := captureMsg(t, c)
		want, err := Parse(msg)
		if err != nil {
			t.Fatal(err)
		}
		for cut := 1; cut < len(msg); cut++ {
			stream := frame(msg, cut)
			consumed, got, err := ReadClientHello(bytes.NewReader(stream))
			if err != nil {
				t.Fatalf("%s cut at %d: %v", c.name, cut, err)
			}
			if !bytes.Equal(consumed, stream) || !bytes.Equal(got, msg) {
				t.Fatalf("%s cut at %d: read differently", c.name, cut)
			}
		}
		// Two records through one-byte reads, and many tiny records.
		for _, stream := range [][]byte{frame(msg, len(msg)/2), frameEvery(msg, 1), frameEvery(msg, 100)} {
			consumed, got, err := ReadClientHello(iotest.OneByteReader(bytes.NewReader(stream)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(consumed, stream) || !bytes.Equal(got, msg) {
				t.Fatal("multi-record hello read differently")
			}
			h, err := Parse(got)
			if err != nil || h.ServerName != want.ServerName || !bytes.Equal(h.SessionID, want.SessionID) {
				t.Fatalf("multi-record hello parsed differently: %v", err)
			}
		}
	}
}

// TestReadDoesNotOverRead proves that bytes after the hello stay in the
// reader, whatever the framing and segmenting, so a face or the tunnel
// gets them in order.
func TestReadDoesNotOverRead(t *testing.T) {
	extra := []byte("\x17\x03\x03\x00\x05early and more bytes the client sent after its hello")
	c := loadCaptures(t)[0]
	msg := captureMsg(t, c)
	for _, stream := range [][]byte{c.stream, frame(msg, 3), frameEvery(msg, 512)} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(slices.Concat(stream, extra))
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			consumed, _, err := ReadClientHello(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(consumed, stream) {
				t.Fatalf("consumed %d bytes, want %d", len(consumed), len(stream))
			}
			rest, _ := io.ReadAll(r)
			if !bytes.Equal(rest, extra) {
				t.Fatalf("left %q in the reader, want %q", rest, extra)
			}
		}
	}
}

// TestReadTruncated proves that every prefix of a hello fails cleanly,
// reports io.EOF or io.ErrUnexpectedEOF, and returns every byte it read.
func TestReadTruncated(t *testing.T) {
	for _, c := range loadCaptures(t) {
		for n := range len(c.stream) {
			r := &countingReader{r: bytes.NewReader(c.stream[:n])}
			consumed, msg, err := ReadClientHello(r)
			if err == nil || msg != nil {
				t.Fatalf("%s: prefix of %d bytes accepted", c.name, n)
			}
			wantErr := io.ErrUnexpectedEOF
			if n == 0 {
				wantErr = io.EOF
			}
			if !errors.Is(err, wantErr) {
				t.Fatalf("%s: prefix of %d bytes: %v, want %v", c.name, n, err, wantErr)
			}
			if !bytes.Equal(consumed, c.stream[:n]) || r.n != n {
				t.Fatalf("%s: prefix of %d bytes: consumed %d, read %d", c.name, n, len(consumed), r.n)
			}
		}
	}
}

// TestParseTruncated proves that Parse refuses every proper prefix of a
// real hello (all its length fields then overrun or disagree).
func TestParseTruncated(t *testing.T) {
	for _, c := range loadCaptures(t) {
		msg := captureMsg(t, c)
		for n := range len(msg) {
			if h, err := Parse(msg[:n]); err == nil {
				t.Fatalf("%s: prefix of %d bytes parsed: %+v", c.name, n, h)
			}
		}
	}
}

// TestReadLengthFieldMutations sets each byte of the record length and the
// handshake length to every value: the read must fail, or succeed with a
// message that is consistent with the bytes consumed and parses (if it
// does) to a self-consistent hello. Only the original value may give the
// original message.
func TestReadLengthFieldMutations(t *testing.T) {
	for _, c := range loadCaptures(t) {
		orig := captureMsg(t, c)
		for _, pos := range []int{3, 4, 6, 7, 8} {
			for v := range 256 {
				stream := bytes.Clone(c.stream)
				stream[pos] = byte(v)
				r := &countingReader{r: bytes.NewReader(stream)}
				consumed, msg, err := ReadClientHello(r)
				if !bytes.Equal(consumed, stream[:len(consumed)]) || r.n != len(consumed) {
					t.Fatalf("%s [%d]=%#x: consumed is not what was read", c.name, pos, v)
				}
				if err != nil {
					continue
				}
				if byte(v) != c.stream[pos] {
					t.Logf("%s [%d]=%#x: accepted a %d-byte message", c.name, pos, v, len(msg))
				}
				if !bytes.Equal(msg, deframe(t, consumed)) {
					t.Fatalf("%s [%d]=%#x: msg is not the payload of the records consumed", c.name, pos, v)
				}
				if bodyLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]); bodyLen+4 != len(msg) {
					t.Fatalf("%s [%d]=%#x: message length field %d, message %d bytes", c.name, pos, v, bodyLen, len(msg))
				}
				if h, err := Parse(msg); err == nil {
					checkHello(t, msg, h)
				}
				if bytes.Equal(msg, orig) != (byte(v) == c.stream[pos]) {
					t.Fatalf("%s [%d]=%#x: a changed length gave the original message", c.name, pos, v)
				}
			}
		}
		// The same for the handshake length given straight to Parse.
		for pos := 1; pos <= 3; pos++ {
			for v := range 256 {
				if byte(v) == orig[pos] {
					continue
				}
				msg := bytes.Clone(orig)
				msg[pos] = byte(v)
				if _, err := Parse(msg); err == nil {
					t.Fatalf("%s: handshake length byte %d = %#x parsed", c.name, pos, v)
				}
			}
		}
	}
}

// TestParseByteMutations changes each byte of two real hellos three ways.
// Parse must never panic, and whatever it accepts must satisfy every
// invariant (slices in Raw, exact re-encoding, and so on).
func TestParseByteMutations(t *testing.T) {
	all := loadCaptures(t)
	for _, c := range []capture{all[0], all[len(all)-1]} {
		orig := captureMsg(t, c)
		for i := range orig {
			for _, mut := range []func(byte) byte{
				func(b byte) byte { return b ^ 0xff },
				func(b byte) byte { return b + 1 },
				func(b byte) byte { return b - 1 },
			} {
				msg := bytes.Clone(orig)
				msg[i] = mut(msg[i])
				if h, err := Parse(msg); err == nil {
					checkHello(t, msg, h)
				}
			}
		}
	}
}

// TestReadMalformed proves that each way a stream can fail to be a
// ClientHello is refused with an error that says what was wrong, that
// non-TLS input is marked ErrNotTLS, and that consumed is exactly what was
// read.
func TestReadMalformed(t *testing.T) {
	good := goodParts().build()
	rec := func(typ byte, version uint16, payload []byte) []byte {
		return appendRecord(nil, typ, version, payload)
	}
	tests := []struct {
		name   string
		stream []byte
		want   string // substring of the error
		notTLS bool
		read   int // bytes that must have been consumed; -1: the whole stream
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "first byte 0x47", true, 1},
		{"sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, "first byte 0x80", true, 1},
		{"alert first", rec(0x15, 0x0303, []byte{2, 40}), "first byte 0x15", true, 1},
		{"version 2.x", rec(0x16, 0x0200, good), "record version 0x0200", true, 5},
		{"version 4.x", rec(0x16, 0x0403, good), "record version 0x0403", true, 5},
		{"empty", nil, "EOF", false, 0},
		{"record len 0", rec(0x16, 0x0301, nil), "record length 0", false, 5},
		{"oversize record", append([]byte{0x16, 3, 1, 0x4e, 0x20}, make([]byte, 20000)...),
			"hello: record length 20000 exceeds 16384", false, 5},
		{"max+1 record", append([]byte{0x16, 3, 1, 0x40, 0x01}, make([]byte, 16385)...), "exceeds 16384", false, 5},
		{"handshake type 2", rec(0x16, 0x0303, append([]byte{2}, good[1:]...)), "handshake type 2", false, -1},
		{"trailing data", rec(0x16, 0x0301, append(bytes.Clone(good), 0)), "1 bytes after the ClientHello", false, -1},
		{"trailing handshake", rec(0x16, 0x0301, append(bytes.Clone(good), 20, 0, 0, 0)), "4 bytes after", false, -1},
		{"too long", rec(0x16, 0x0301, []byte{1, 0x01, 0x00, 0x00}), "ClientHello length 65540 exceeds 65536", false, -1},
		{"huge length", rec(0x16, 0x0301, []byte{1, 0xff, 0xff, 0xff}), "exceeds 65536", false, -1},
		{"interleaved alert", slices.Concat(rec(0x16, 0x0301, good[:10]), rec(0x15, 0x0301, []byte{1, 0}), rec(0x16, 0x0301, good[10:])),
			"record of type 21 inside the ClientHello", false, 16},
		{"interleaved ccs", slices.Concat(rec(0x16, 0x0301, good[:2]), rec(0x14, 0x0301, []byte{1})),
			"record of type 20", false, 8},
		{"second record version 4.x", slices.Concat(rec(0x16, 0x0301, good[:10]), rec(0x16, 0x0401, good[10:])),
			"record version 0x0401 inside", false, 20},
		{"cut in second header", slices.Concat(rec(0x16, 0x0301, good[:10]), []byte{0x16, 3}), "unexpected EOF", false, -1},
		{"cut in payload", rec(0x16, 0x0301, good)[:30], "unexpected EOF", false, -1},
		{"cut after type byte", []byte{0x16}, "unexpected EOF", false, -1},
		{"cut at record boundary", rec(0x16, 0x0301, good[:10]), "unexpected EOF", false, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingReader{r: bytes.NewReader(tt.stream)}
			consumed, msg, err := ReadClientHello(r)
			if err == nil || msg != nil {
				t.Fatalf("accepted: msg %d bytes, err %v", len(msg), err)
			}
			if !errContains(err, tt.want) || !strings.HasPrefix(err.Error(), "hello: ") {
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
			if errors.Is(err, ErrNotTLS) != tt.notTLS {
				t.Fatalf("errors.Is(%q, ErrNotTLS) = %v", err, !tt.notTLS)
			}
			want := tt.read
			if want < 0 {
				want = len(tt.stream)
			}
			if r.n != want || !bytes.Equal(consumed, tt.stream[:want]) {
				t.Fatalf("read %d bytes, consumed %d, want %d", r.n, len(consumed), want)
			}
		})
	}
}

// TestReadMaxHelloLen proves the MaxHelloLen bound is exact: a hello of
// exactly MaxHelloLen bytes (over several records) is accepted, one byte
// more is refused before its body is read.
func TestReadMaxHelloLen(t *testing.T) {
	p := goodParts()
	base := len(p.build())
	// A padding extension (0x0015) fills the message to the bound.
	pad := MaxHelloLen - base - 4
	p = withExts(sniExt("example.com"), ext(0x0015, make([]byte, pad)))
	pad += MaxHelloLen - len(p.build())
	p = withExts(sniExt("example.com"), ext(0x0015, make([]byte, pad)))
	msg := p.build()
	if len(msg) != MaxHelloLen {
		t.Fatalf("built %d bytes", len(msg))
	}
	stream := frameEvery(msg, MaxRecordPayload)
	consumed, got, err := ReadClientHello(bytes.NewReader(stream))
	if err != nil || !bytes.Equal(got, msg) || !bytes.Equal(consumed, stream) {
		t.Fatalf("hello of MaxHelloLen: %v", err)
	}
	if _, err := Parse(got); err != nil {
		t.Fatal(err)
	}

	p = withExts(sniExt("example.com"), ext(0x0015, make([]byte, pad+1)))
	stream = frameEvery(p.build(), MaxRecordPayload)
	r := &countingReader{r: bytes.NewReader(stream)}
	if _, _, err := ReadClientHello(r); !errContains(err, "exceeds 65536") {
		t.Fatalf("hello of MaxHelloLen+1: %v", err)
	}
	if r.n != RecordHeaderLen+MaxRecordPayload {
		t.Fatalf("read %d bytes before refusing, want only the first record", r.n)
	}
}

// TestReadTimeout proves a deadline mid-hello surfaces as a deadline error
// with the bytes already read in consumed, as the bridge needs for a slow
// prober.
func TestReadTimeout(t *testing.T) {
	c := loadCaptures(t)[0]
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go client.Write(c.stream[:100])
	server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	consumed, _, err := ReadClientHello(server)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err %v, want a deadline error", err)
	}
	if !bytes.Equal(consumed, c.stream[:100]) {
		t.Fatalf("consumed %d bytes, want the 100 sent", len(consumed))
	}
}

// TestParseValid covers legal shapes the captures do not: no extensions
// block, an empty one, unknown extensions, other server name types and an
// empty key_share list.
func TestParseValid(t *testing.T) {
	p := goodParts()
	h, err := Parse(p.build())
	if err != nil {
		t.Fatal(err)
	}
	checkHello(t, h.Raw, h)
	if h.ServerName != "example.com" || !slices.Equal(h.ALPN, []string{"h2", "http/1.1"}) ||
		!slices.Equal(h.SupportedVersions, []uint16{0x0304, 0x0303}) ||
		!slices.Equal(h.CipherSuites, []uint16{0x1301, 0x1302, 0x1303}) || h.LegacyVersion != 0x0303 {
		t.Fatalf("parsed %+v", h)
	}
	if len(h.Extensions) != 5 || h.Extensions[4].Type != 0x000a || !bytes.Equal(h.Extensions[4].Data, vec16(u16s(0x001d))) {
		t.Fatalf("unknown extension not kept raw: %+v", h.Extensions)
	}
	if _, ok := h.KeyShare(0x0017); ok {
		t.Fatal("KeyShare found an absent group")
	}

	p.exts = nil
	h, err = Parse(p.build())
	if err != nil || h.Extensions != nil {
		t.Fatalf("no extensions block: %v, %v", err, h)
	}
	checkHello(t, h.Raw, h)

	p.exts = vec16()
	h, err = Parse(p.build())
	if err != nil || h.Extensions == nil || len(h.Extensions) != 0 {
		t.Fatalf("empty extensions block: %v, %v", err, h)
	}
	checkHello(t, h.Raw, h)

	p.sid = vec8()
	h, err = Parse(p.build())
	if err != nil || len(h.SessionID) != 0 || !bytes.Equal(h.AuthData(), h.Raw) {
		t.Fatalf("empty session_id: %v", err)
	}

	otherType := ext(0x0000, vec16([]byte{7}, vec16([]byte("whatever")), []byte{0}, vec16([]byte("a.example"))))
	h, err = Parse(withExts(otherType, ext(0x0033, vec16())).build())
	if err != nil || h.ServerName != "a.example" || len(h.KeyShares) != 0 {
		t.Fatalf("other name type and empty key_share: %v, %+v", err, h)
	}
	checkHello(t, h.Raw, h)

	for _, name := range []string{"a", "x-y.example", "_acme.example", "1.example", strings.Repeat("a", 63) + ".b", "Mixed.Case"} {
		if h, err := Parse(withExts(sniExt(name)).build()); err != nil || h.ServerName != name {
			t.Errorf("server name %q: %v", name, err)
		}
	}
}

// TestParseMalformed proves that each strictness rule of Parse is
// enforced, with an error naming the problem.
func TestParseMalformed(t *testing.T) {
	x25519 := keyShareEntry(0x001d, make([]byte, 32))
	mod := func(f func(p *helloParts)) []byte {
		p := goodParts()
		f(&p)
		return p.build()
	}
	tests := []struct {
		name string
		msg  []byte
		want string
	}{
		{"empty", nil, "handshake type"},
		{"handshake type 2", mod(func(p *helloParts) { p.typ = 2 }), "handshake type 2"},
		{"length too long", mod(func(p *helloParts) { p.lenFix = 1 }), "handshake length"},
		{"length too short", mod(func(p *helloParts) { p.lenFix = -1 }), "handshake length"},
		{"trailing after extensions", mod(func(p *helloParts) { p.trailer = []byte{0} }), "1 trailing bytes after extensions"},
		{"short random", mod(func(p *helloParts) { p.random = p.random[:31]; p.sid, p.suites, p.comp, p.exts = nil, nil, nil, nil }), "random"},
		{"session_id 33", mod(func(p *helloParts) { p.sid = vec8(make([]byte, 33)) }), "session_id length 33 exceeds 32"},
		{"session_id overrun", mod(func(p *helloParts) { p.sid = []byte{32, 1}; p.suites, p.comp, p.exts = nil, nil, nil }), "session_id"},
		{"no cipher_suites", mod(func(p *helloParts) { p.suites = vec16() }), "empty cipher_suites"},
		{"odd cipher_suites", mod(func(p *helloParts) { p.suites = vec16([]byte{0x13, 0x01, 0x13}) }), "odd"},
		{"cipher_suites overrun", mod(func(p *helloParts) { p.suites = []byte{0xff, 0xff, 0x13, 0x01}; p.comp, p.exts = nil, nil }), "cipher_suites"},
		{"no compression", mod(func(p *helloParts) { p.comp = vec8() }), "empty compression_methods"},
		{"compression missing", mod(func(p *helloParts) { p.comp, p.exts = nil, nil }), "compression_methods"},
		{"extensions overrun", mod(func(p *helloParts) { p.exts[1]++ }), "extensions"},
		{"extensions length cut", mod(func(p *helloParts) { p.exts = []byte{0} }), "extensions length"},
		{"extension header cut", withExts(sniExt("a.example"), []byte{0x00}).build(), "extension type"},
		{"extension data overrun", withExts(sniExt("a.example"), []byte{0x00, 0x15, 0x00, 0x05, 0}).build(), "extension 0x0015"},
		{"duplicate extension", withExts(ext(0x0015, nil), sniExt("a.example"), ext(0x0015, nil)).build(), "duplicate extension 0x0015"},
		{"duplicate server_name", withExts(sniExt("a.example"), sniExt("a.example")).build(), "duplicate extension 0x0000"},

		{"server_name empty ext", withExts(ext(0x0000, nil)).build(), "server_name list length"},
		{"server_name empty list", withExts(ext(0x0000, vec16())).build(), "empty server_name list"},
		{"server_name trailing", withExts(ext(0x0000, append(vec16([]byte{0}, vec16([]byte("a.example"))), 0))).build(), "trailing bytes in server_name"},
		{"server_name entry overrun", withExts(ext(0x0000, vec16([]byte{0, 0, 9}, []byte("a.ex")))).build(), "server_name"},
		{"server_name no host_name", withExts(ext(0x0000, vec16([]byte{1}, vec16([]byte("x"))))).build(), "no host_name"},
		{"server_name two host_names", withExts(sniExt("a.example", "b.example")).build(), "more than one host_name"},
		{"host_name empty", withExts(sniExt("")).build(), "host_name length 0"},
		{"host_name trailing dot", withExts(sniExt("a.example.")).build(), "empty label"},
		{"host_name leading dot", withExts(sniExt(".a.example")).build(), "empty label"},
		{"host_name double dot", withExts(sniExt("a..example")).build(), "empty label"},
		{"host_name space", withExts(sniExt("a example")).build(), "byte 0x20"},
		{"host_name NUL", withExts(sniExt("a\x00.example")).build(), "byte 0x00"},
		{"host_name UTF-8", withExts(sniExt("bücher.example")).build(), "byte 0xc3"},
		{"host_name IPv4", withExts(sniExt("192.0.2.1")).build(), "IP address"},
		{"host_name IPv6", withExts(sniExt("2001:db8::1")).build(), "byte 0x3a"},
		{"host_name long label", withExts(sniExt(strings.Repeat("a", 64) + ".b")).build(), "label over 63"},
		{"host_name too long", withExts(sniExt(strings.Repeat("abcdefg.", 32) + "a")).build(), "host_name length 257"},

		{"ALPN empty list", withExts(ext(0x0010, vec16())).build(), "empty ALPN list"},
		{"ALPN empty name", withExts(ext(0x0010, vec16(vec8([]byte("h2")), vec8()))).build(), "empty ALPN protocol name"},
		{"ALPN trailing", withExts(ext(0x0010, append(vec16(vec8([]byte("h2"))), 0))).build(), "trailing bytes in ALPN"},
		{"ALPN name overrun", withExts(ext(0x0010, vec16([]byte{5, 'h', '2'}))).build(), "ALPN protocol"},

		{"supported_versions empty", withExts(ext(0x002b, vec8())).build(), "supported_versions length 0"},
		{"supported_versions odd", withExts(ext(0x002b, vec8([]byte{3, 4, 3}))).build(), "supported_versions length 3"},
		{"supported_versions trailing", withExts(ext(0x002b, append(vec8(u16s(0x0304)), 0))).build(), "trailing bytes in supported_versions"},
		{"supported_versions overrun", withExts(ext(0x002b, []byte{4, 3, 4})).build(), "supported_versions list"},

		{"key_share trailing", withExts(ext(0x0033, append(vec16(x25519), 0))).build(), "trailing bytes in key_share"},
		{"key_share entry cut", withExts(ext(0x0033, vec16(x25519[:10]))).build(), "key_share 0x001d"},
		{"key_share group cut", withExts(ext(0x0033, vec16(x25519, []byte{0}))).build(), "key_share group"},
		{"key_share empty key", withExts(ext(0x0033, vec16(keyShareEntry(0x001d, nil)))).build(), "empty key_share 0x001d"},
		{"key_share duplicate group", withExts(ext(0x0033, vec16(x25519, keyShareEntry(0x0017, []byte{4}), x25519))).build(), "duplicate key_share 0x001d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Parse(tt.msg)
			if err == nil {
				t.Fatalf("parsed: %+v", h)
			}
			if h != nil {
				t.Fatal("returned a hello with an error")
			}
			if !errContains(err, tt.want) || !strings.HasPrefix(err.Error(), "hello: ") {
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestAuthData proves that exactly the session_id bytes are zeroed
// in a copy and Raw is left as it was.
func TestAuthData(t *testing.T) {
	for _, c := range loadCaptures(t) {
		msg := captureMsg(t, c)
		orig := bytes.Clone(msg)
		h, err := Parse(msg)
		if err != nil {
			t.Fatal(err)
		}
		sid := bytes.Clone(h.SessionID)
		z := h.AuthData()
		if !bytes.Equal(h.Raw, orig) || !bytes.Equal(h.SessionID, sid) {
			t.Fatal("Raw was modified")
		}
		want := bytes.Clone(orig)
		copy(want[39:71], make([]byte, 32))
		if !bytes.Equal(z, want) {
			t.Fatalf("%s: zeroed copy differs outside bytes 39..71 or is not zero inside", c.name)
		}
		z[39] = 1 // the copy must not share memory with Raw
		if h.Raw[39] != orig[39] {
			t.Fatal("the copy aliases Raw")
		}
	}
}

// TestKeyShareLookup proves KeyShare finds each share by group and reports
// absent groups.
func TestKeyShareLookup(t *testing.T) {
	msg := withExts(ext(0x0033, vec16(keyShareEntry(0x11ec, []byte{1, 2, 3}), keyShareEntry(0x001d, []byte{4, 5})))).build()
	h, err := Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := h.KeyShare(0x001d); !ok || !bytes.Equal(d, []byte{4, 5}) {
		t.Fatalf("x25519: %x %v", d, ok)
	}
	if d, ok := h.KeyShare(0x11ec); !ok || !bytes.Equal(d, []byte{1, 2, 3}) {
		t.Fatalf("hybrid: %x %v", d, ok)
	}
	if _, ok := h.KeyShare(0x0017); ok {
		t.Fatal("found an absent group")
	}
}

// TestParseSlicesCannotOverwrite proves the slices Parse returns are capped,
// so an append to one cannot clobber the bytes after it in Raw.
func TestParseSlicesCannotOverwrite(t *testing.T) {
	msg := goodParts().build()
	h, err := Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	orig := bytes.Clone(msg)
	_ = append(h.SessionID, 0xEE)
	_ = append(h.Random, 0xEE)
	_ = append(h.Extensions[0].Data, 0xEE)
	if !bytes.Equal(msg, orig) {
		t.Fatal("an append to a parsed slice overwrote Raw")
	}
}

// TestManyExtensionsIsCheap proves that a maximal hello packed with the
// smallest extensions and key shares parses quickly: the duplicate checks
// must not be quadratic, or a prober could tie up the bridge's CPU.
func TestManyExtensionsIsCheap(t *testing.T) {
	var exts [][]byte
	for i := range 16000 {
		exts = append(exts, ext(uint16(0x1000+i), nil))
	}
	var shares [][]byte
	for i := range 9000 {
		shares = append(shares, keyShareEntry(uint16(i), []byte{1}))
	}
	for _, msg := range [][]byte{withExts(exts...).build(), withExts(ext(0x0033, vec16(shares...))).build()} {
		start := time.Now()
		h, err := Parse(msg)
		if err != nil {
			t.Fatal(err)
		}
		checkHello(t, msg, h)
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("parse took %v", d)
		}
	}
}

// TestPreSharedKey proves that a hello offering a PSK (a browser resuming
// a TLS session) parses, that its binders are found at the end of Raw, and
// that AuthData zeroes them along with the session_id and nothing else:
// the client computes the binders after the tag is in the session_id, so
// the tag cannot cover them. A pre_shared_key a TLS server would refuse
// does not parse.
func TestPreSharedKey(t *testing.T) {
	base := withExts(sniExt("example.com"), ext(0x002b, vec8(u16s(0x0304))),
		ext(0x0033, vec16(keyShareEntry(0x001d, bytes.Repeat([]byte{7}, 32)))))
	p := withExts(sniExt("example.com"), ext(0x002b, vec8(u16s(0x0304))),
		ext(0x0033, vec16(keyShareEntry(0x001d, bytes.Repeat([]byte{7}, 32)))), pskExt(120, 32))
	msg := p.build()
	h, err := Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	checkHello(t, msg, h)
	if want := len(msg) - (2 + 1 + 32); h.BindersOffset != want {
		t.Fatalf("BindersOffset %d, want %d", h.BindersOffset, want)
	}
	z := h.AuthData()
	if !bytes.Equal(z[h.BindersOffset:], make([]byte, len(msg)-h.BindersOffset)) {
		t.Fatal("the binders are not zeroed in AuthData")
	}
	if !bytes.Equal(z[:h.SessionIDOffset], msg[:h.SessionIDOffset]) ||
		!bytes.Equal(z[h.SessionIDOffset+32:h.BindersOffset], msg[h.SessionIDOffset+32:h.BindersOffset]) {
		t.Fatal("AuthData changed bytes outside the session_id and the binders")
	}
	// Without a PSK nothing past the session_id is zeroed.
	hb, err := Parse(base.build())
	if err != nil || hb.BindersOffset != 0 {
		t.Fatalf("hello without a PSK: BindersOffset %d, %v", hb.BindersOffset, err)
	}

	for _, tt := range []struct {
		name string
		p    helloParts
		want string
	}{
		{"not last", withExts(pskExt(16, 32), sniExt("example.com")), "not the last extension"},
		{"no identity", withExts(ext(0x0029, append(vec16(), vec16(vec8(bytes.Repeat([]byte{1}, 32)))...))), "no psk identity"},
		{"empty identity", withExts(ext(0x0029, append(vec16(append(vec16(), 0, 0, 0, 0)), vec16(vec8(bytes.Repeat([]byte{1}, 32)))...))), "empty psk identity"},
		{"short binder", withExts(pskExt(16, 31)), "shorter than 32"},
		{"no binder", withExts(pskExt(16)), "no psk binder"},
		{"trailing", withExts(ext(0x0029, append(append(vec16(append(vec16([]byte{1}), 0, 0, 0, 0)), vec16(vec8(bytes.Repeat([]byte{1}, 32)))...), 0))), "trailing bytes in pre_shared_key"},
		{"cut age", withExts(ext(0x0029, append(vec16(append(vec16([]byte{1}), 0, 0)), vec16(vec8(bytes.Repeat([]byte{1}, 32)))...))), "obfuscated_ticket_age"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Parse(tt.p.build())
			if err == nil || h != nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
