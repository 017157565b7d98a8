package hello

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// capture is one recorded ClientHello from testdata.
type capture struct {
	name   string
	stream []byte // the raw TLS records as the browser sent them
}

// loadCaptures returns every testdata capture, failing if there are none so
// that a missing directory cannot make the tests pass vacuously.
func loadCaptures(tb testing.TB) []capture {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.bin"))
	if err != nil {
		tb.Fatal(err)
	}
	var out []capture
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, capture{name: filepath.Base(f), stream: b})
	}
	if len(out) == 0 {
		tb.Fatal("no captures in testdata")
	}
	return out
}

// captureMsg returns the handshake message of a capture, read the normal
// way.
func captureMsg(tb testing.TB, c capture) []byte {
	tb.Helper()
	_, msg, err := ReadClientHello(bytes.NewReader(c.stream))
	if err != nil {
		tb.Fatalf("%s: %v", c.name, err)
	}
	return msg
}

// frame wraps msg in handshake records, the i-th carrying sizes[i] bytes;
// what is left after the listed sizes goes in one last record.
func frame(msg []byte, sizes ...int) []byte {
	var out []byte
	for _, n := range sizes {
		out = appendRecord(out, 0x16, 0x0301, msg[:n])
		msg = msg[n:]
	}
	if len(msg) > 0 {
		out = appendRecord(out, 0x16, 0x0301, msg)
	}
	return out
}

// frameEvery wraps msg in records of n bytes each (the last may be
// shorter).
func frameEvery(msg []byte, n int) []byte {
	var out []byte
	for len(msg) > 0 {
		k := min(n, len(msg))
		out = appendRecord(out, 0x16, 0x0301, msg[:k])
		msg = msg[k:]
	}
	return out
}

func appendRecord(out []byte, typ byte, version uint16, payload []byte) []byte {
	out = append(out, typ)
	out = binary.BigEndian.AppendUint16(out, version)
	out = binary.BigEndian.AppendUint16(out, uint16(len(payload)))
	return append(out, payload...)
}

// deframe concatenates the payloads of the records in stream, which the
// caller knows to be well formed.
func deframe(tb testing.TB, stream []byte) []byte {
	tb.Helper()
	var msg []byte
	for len(stream) > 0 {
		if len(stream) < RecordHeaderLen {
			tb.Fatalf("deframe: %d stray bytes", len(stream))
		}
		n := int(binary.BigEndian.Uint16(stream[3:]))
		if len(stream) < RecordHeaderLen+n {
			tb.Fatalf("deframe: record of %d bytes has %d", n, len(stream)-RecordHeaderLen)
		}
		msg = append(msg, stream[RecordHeaderLen:RecordHeaderLen+n]...)
		stream = stream[RecordHeaderLen+n:]
	}
	return msg
}

// countingReader counts the bytes its callers took from r, to check that
// consumed is exactly what was read.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// chunkReader returns at most size bytes per Read, like a connection
// delivering small TCP segments.
type chunkReader struct {
	b    []byte
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.size)], c.b)
	c.b = c.b[n:]
	return n, nil
}

// --- building synthetic ClientHellos ---

func vec8(b ...[]byte) []byte {
	body := slices.Concat(b...)
	return append([]byte{byte(len(body))}, body...)
}

func vec16(b ...[]byte) []byte {
	body := slices.Concat(b...)
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(body))), body...)
}

func u16s(v ...uint16) []byte {
	var out []byte
	for _, x := range v {
		out = binary.BigEndian.AppendUint16(out, x)
	}
	return out
}

// ext encodes one extension.
func ext(typ uint16, data []byte) []byte {
	return append(u16s(typ), vec16(data)...)
}

func sniExt(names ...string) []byte {
	var list [][]byte
	for _, n := range names {
		list = append(list, []byte{0}, vec16([]byte(n)))
	}
	return ext(0x0000, vec16(list...))
}

func alpnExt(protos ...string) []byte {
	var list [][]byte
	for _, p := range protos {
		list = append(list, vec8([]byte(p)))
	}
	return ext(0x0010, vec16(list...))
}

// pskExt is a pre_shared_key extension with one identity of the given
// length and binders of the given lengths.
func pskExt(identityLen int, binderLens ...int) []byte {
	identity := append(vec16(bytes.Repeat([]byte{0x1d}, identityLen)), 0, 0, 0, 9)
	var binders [][]byte
	for _, n := range binderLens {
		binders = append(binders, vec8(bytes.Repeat([]byte{0xb1}, n)))
	}
	return ext(0x0029, append(vec16(identity), vec16(binders...)...))
}

func keyShareEntry(group uint16, key []byte) []byte {
	return append(u16s(group), vec16(key)...)
}

// helloParts are the fields of a ClientHello body, each already encoded
// with its length prefix, so a test can break any one of them.
type helloParts struct {
	typ     byte
	version []byte
	random  []byte
	sid     []byte // session_id with its length byte
	suites  []byte
	comp    []byte
	exts    []byte // extensions block with its length; nil: no block
	trailer []byte // bytes after the extensions block
	lenFix  int    // added to the handshake length field
}

// goodParts returns the parts of a small valid ClientHello that carries
// every extension Parse decodes.
func goodParts() helloParts {
	return helloParts{
		typ:     1,
		version: u16s(0x0303),
		random:  bytes.Repeat([]byte{0xAA}, 32),
		sid:     vec8(bytes.Repeat([]byte{0x55}, 32)),
		suites:  vec16(u16s(0x1301, 0x1302, 0x1303)),
		comp:    vec8([]byte{0}),
		exts: vec16(
			sniExt("example.com"),
			alpnExt("h2", "http/1.1"),
			ext(0x002b, vec8(u16s(0x0304, 0x0303))),
			ext(0x0033, vec16(keyShareEntry(0x001d, bytes.Repeat([]byte{7}, 32)))),
			ext(0x000a, vec16(u16s(0x001d))), // supported_groups: kept raw
		),
	}
}

// build assembles a handshake message from parts.
func (p helloParts) build() []byte {
	body := slices.Concat(p.version, p.random, p.sid, p.suites, p.comp, p.exts, p.trailer)
	n := len(body) + p.lenFix
	msg := []byte{p.typ, byte(n >> 16), byte(n >> 8), byte(n)}
	return append(msg, body...)
}

// withExts returns good parts with the given extensions as the block.
func withExts(exts ...[]byte) helloParts {
	p := goodParts()
	p.exts = vec16(exts...)
	return p
}

// --- invariants of a successful Parse ---

// within reports where s lies inside raw, if it does. Parse promises that
// its slices alias Raw; comparing addresses is the only way to check that.
func within(raw, s []byte) (int, bool) {
	if len(s) == 0 {
		return 0, true // an empty slice holds no bytes that could escape Raw
	}
	if len(s) > len(raw) {
		return 0, false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(raw)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	if p < base || p-base > uintptr(len(raw)-len(s)) {
		return 0, false
	}
	return int(p - base), true
}

// checkHello verifies everything a successful Parse of msg promises.
func checkHello(t testing.TB, msg []byte, h *ClientHello) {
	t.Helper()
	if h == nil {
		t.Fatal("Parse returned nil without an error")
	}
	if unsafe.SliceData(h.Raw) != unsafe.SliceData(msg) || len(h.Raw) != len(msg) {
		t.Fatal("Raw is not the message given to Parse")
	}
	if len(h.Random) != 32 {
		t.Fatalf("random is %d bytes", len(h.Random))
	}
	if len(h.SessionID) > 32 {
		t.Fatalf("session_id is %d bytes", len(h.SessionID))
	}
	if len(h.CipherSuites) == 0 || len(h.CompressionMethods) == 0 {
		t.Fatal("empty cipher suites or compression methods accepted")
	}
	for name, s := range map[string][]byte{"random": h.Random, "session_id": h.SessionID, "compression": h.CompressionMethods} {
		if _, ok := within(h.Raw, s); !ok {
			t.Fatalf("%s does not lie within Raw", name)
		}
	}
	if h.SessionIDOffset < 0 || h.SessionIDOffset+len(h.SessionID) > len(h.Raw) {
		t.Fatalf("SessionIDOffset %d out of range", h.SessionIDOffset)
	}
	if off, _ := within(h.Raw, h.SessionID); len(h.SessionID) > 0 && off != h.SessionIDOffset {
		t.Fatalf("SessionIDOffset %d, session_id is at %d", h.SessionIDOffset, off)
	}
	if h.Raw[h.SessionIDOffset-1] != byte(len(h.SessionID)) {
		t.Fatal("SessionIDOffset does not follow the session_id length byte")
	}
	seen := map[uint16]bool{}
	var keyShareExt []byte
	for _, e := range h.Extensions {
		if _, ok := within(h.Raw, e.Data); !ok {
			t.Fatalf("extension 0x%04x data does not lie within Raw", e.Type)
		}
		if seen[e.Type] {
			t.Fatalf("duplicate extension 0x%04x accepted", e.Type)
		}
		seen[e.Type] = true
		if e.Type == 0x0033 {
			keyShareExt = e.Data
		}
	}
	if (h.ServerName != "") != seen[0x0000] {
		t.Fatalf("ServerName %q but server_name present %v", h.ServerName, seen[0x0000])
	}
	if (len(h.ALPN) > 0) != seen[0x0010] || (len(h.SupportedVersions) > 0) != seen[0x002b] {
		t.Fatal("decoded ALPN or supported_versions disagree with the extension list")
	}
	for _, ks := range h.KeyShares {
		off, ok := within(h.Raw, ks.Data)
		ext, _ := within(h.Raw, keyShareExt)
		if !ok || len(ks.Data) == 0 || off < ext || off+len(ks.Data) > ext+len(keyShareExt) {
			t.Fatalf("key share 0x%04x does not lie within the key_share extension", ks.Group)
		}
		if got, ok := h.KeyShare(ks.Group); !ok || !bytes.Equal(got, ks.Data) {
			t.Fatalf("KeyShare(0x%04x) disagrees with KeyShares", ks.Group)
		}
	}
	// Re-encoding the parsed fields must give back Raw byte for byte: that
	// proves no byte was skipped or read twice.
	if got := marshal(h); !bytes.Equal(got, h.Raw) {
		t.Fatalf("re-encoding the parsed hello differs from Raw\n got %x\nwant %x", got, h.Raw)
	}
	if h.BindersOffset != 0 {
		// The binders are the tail of the last extension, pre_shared_key.
		last := h.Extensions[len(h.Extensions)-1]
		off, _ := within(h.Raw, last.Data)
		if last.Type != 0x0029 || off+len(last.Data) != len(h.Raw) || h.BindersOffset <= off || h.BindersOffset+2 > len(h.Raw) ||
			int(binary.BigEndian.Uint16(h.Raw[h.BindersOffset:])) != len(h.Raw)-h.BindersOffset-2 {
			t.Fatalf("BindersOffset %d is not the binders list of a last pre_shared_key", h.BindersOffset)
		}
	} else if seen[0x0029] {
		t.Fatal("pre_shared_key present but BindersOffset is 0")
	}
	before := bytes.Clone(h.Raw)
	z := h.AuthData()
	if !bytes.Equal(h.Raw, before) {
		t.Fatal("AuthData modified Raw")
	}
	for i := range z {
		inSID := i >= h.SessionIDOffset && i < h.SessionIDOffset+len(h.SessionID)
		inBinders := h.BindersOffset > 0 && i >= h.BindersOffset
		if (inSID || inBinders) && z[i] != 0 || !inSID && !inBinders && z[i] != h.Raw[i] {
			t.Fatalf("AuthData byte %d is %#x", i, z[i])
		}
	}
}

// marshal encodes h from its fields (not from Raw).
func marshal(h *ClientHello) []byte {
	body := binary.BigEndian.AppendUint16(nil, h.LegacyVersion)
	body = append(body, h.Random...)
	body = append(body, vec8(h.SessionID)...)
	body = append(body, vec16(u16s(h.CipherSuites...))...)
	body = append(body, vec8(h.CompressionMethods)...)
	if h.Extensions != nil {
		var exts []byte
		for _, e := range h.Extensions {
			exts = append(exts, ext(e.Type, e.Data)...)
		}
		body = append(body, vec16(exts)...)
	}
	n := len(body)
	return append([]byte{1, byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// errContains reports whether err's text contains want.
func errContains(err error, want string) bool {
	return err != nil && strings.Contains(err.Error(), want)
}
