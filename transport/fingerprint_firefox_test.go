package transport

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/transport/hello"
)

// firefoxShape is what a Firefox hello looks like once the values drawn per
// connection (random, session_id, key shares, the GREASE ECH config_id,
// enc and payload) and the server name are left out.
type firefoxShape struct {
	recordVersion uint16
	legacyVersion uint16
	sessionIDLen  int
	ciphers       []uint16
	compression   []byte
	order         []uint16          // extension types in wire order
	fixed         map[uint16][]byte // bodies of the extensions that never vary
	groups        []uint16          // supported_groups
	shareGroups   []uint16          // key_share groups, in order
	shareLens     []int             // key_share data lengths, in order
	alpn          []string
	sigalgs       []uint16 // signature_algorithms
	echHeader     []byte   // GREASE ECH: outer type and KDF id
	echAEAD       uint16   // GREASE ECH: AEAD id, drawn per connection
	echEncLen     int
	echPayloadLen int
	helloLen      int // handshake message length, less the server name
}

// u16s decodes a list of 16-bit values behind a 16-bit length.
func u16s(t *testing.T, what string, b []byte) []uint16 {
	t.Helper()
	if len(b) < 2 || int(binary.BigEndian.Uint16(b)) != len(b)-2 || len(b)%2 != 0 {
		t.Fatalf("malformed %s: %x", what, b)
	}
	var vs []uint16
	for i := 2; i < len(b); i += 2 {
		vs = append(vs, binary.BigEndian.Uint16(b[i:]))
	}
	return vs
}

// shapeOf parses a recorded hello (record header and message) and checks
// what must hold for any Firefox hello: one x25519 key in both the hybrid
// and the x25519 share.
func shapeOf(t *testing.T, name string, raw []byte) (*hello.ClientHello, firefoxShape) {
	t.Helper()
	_, msg, err := hello.ReadClientHello(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	h, err := hello.Parse(msg)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	s := firefoxShape{
		recordVersion: binary.BigEndian.Uint16(raw[1:]),
		legacyVersion: h.LegacyVersion,
		sessionIDLen:  len(h.SessionID),
		ciphers:       h.CipherSuites,
		compression:   h.CompressionMethods,
		fixed:         map[uint16][]byte{},
		alpn:          h.ALPN,
		helloLen:      len(msg) - len(h.ServerName),
	}
	for _, e := range h.Extensions {
		s.order = append(s.order, e.Type)
		switch e.Type {
		case 0x0000, 0x0033: // server name; key shares
		case 0x000a:
			s.groups = u16s(t, "supported_groups", e.Data)
			s.fixed[e.Type] = e.Data
		case 0x000d:
			s.sigalgs = u16s(t, "signature_algorithms", e.Data)
			s.fixed[e.Type] = e.Data
		case 0xfe0d:
			// ECHClientHello: type(1) kdf(2) aead(2) config_id(1)
			// enc<0..2^16-1> payload<1..2^16-1>.
			d := e.Data
			if len(d) < 8 {
				t.Fatalf("%s: short ECH extension %x", name, d)
			}
			s.echHeader = d[:3]
			s.echAEAD = binary.BigEndian.Uint16(d[3:])
			s.echEncLen = int(binary.BigEndian.Uint16(d[6:]))
			if len(d) < 8+s.echEncLen+2 {
				t.Fatalf("%s: short ECH extension %x", name, d)
			}
			s.echPayloadLen = int(binary.BigEndian.Uint16(d[8+s.echEncLen:]))
			if len(d) != 8+s.echEncLen+2+s.echPayloadLen {
				t.Fatalf("%s: malformed ECH extension %x", name, d)
			}
		default:
			s.fixed[e.Type] = e.Data
		}
	}
	for _, ks := range h.KeyShares {
		s.shareGroups = append(s.shareGroups, ks.Group)
		s.shareLens = append(s.shareLens, len(ks.Data))
	}
	hybrid, ok1 := h.KeyShare(0x11ec)
	x25519, ok2 := h.KeyShare(0x001d)
	if !ok1 || !ok2 || !bytes.HasSuffix(hybrid, x25519) {
		t.Errorf("%s: the X25519MLKEM768 share does not end in the x25519 share", name)
	}
	return h, s
}

func hexList(vs []uint16) string {
	var b strings.Builder
	for _, v := range vs {
		fmt.Fprintf(&b, " %04x", v)
	}
	return strings.TrimSpace(b.String())
}

// compareShapes reports every field in which got differs from want. The
// ECH AEAD, which Firefox draws per connection, must be one of aeads.
func compareShapes(t *testing.T, got, want firefoxShape, aeads []uint16) {
	t.Helper()
	check := func(field string, g, w any) {
		t.Helper()
		if gs, ws := fmt.Sprint(g), fmt.Sprint(w); gs != ws {
			t.Errorf("%s: ours %s, Firefox's %s", field, gs, ws)
		}
	}
	check("record version", fmt.Sprintf("%04x", got.recordVersion), fmt.Sprintf("%04x", want.recordVersion))
	check("legacy_version", fmt.Sprintf("%04x", got.legacyVersion), fmt.Sprintf("%04x", want.legacyVersion))
	check("session_id length", got.sessionIDLen, want.sessionIDLen)
	check("cipher suites", hexList(got.ciphers), hexList(want.ciphers))
	check("compression methods", fmt.Sprintf("%x", got.compression), fmt.Sprintf("%x", want.compression))
	check("extension order", hexList(got.order), hexList(want.order))
	check("supported_groups", hexList(got.groups), hexList(want.groups))
	check("key_share groups", hexList(got.shareGroups), hexList(want.shareGroups))
	check("key_share lengths", got.shareLens, want.shareLens)
	check("ALPN", got.alpn, want.alpn)
	check("signature_algorithms", hexList(got.sigalgs), hexList(want.sigalgs))
	check("ECH type and KDF", fmt.Sprintf("%x", got.echHeader), fmt.Sprintf("%x", want.echHeader))
	if !slices.Contains(aeads, got.echAEAD) {
		t.Errorf("ECH AEAD: ours %04x, Firefox's one of %s", got.echAEAD, hexList(aeads))
	}
	check("ECH enc length", got.echEncLen, want.echEncLen)
	check("ECH payload length", got.echPayloadLen, want.echPayloadLen)
	check("hello length less the server name", got.helloLen, want.helloLen)
	for typ, w := range want.fixed {
		if g, ok := got.fixed[typ]; ok && !bytes.Equal(g, w) {
			t.Errorf("extension %04x: ours %x, Firefox's %x", typ, g, w)
		}
	}
}

// TestFirefoxMatchesCapturedJA4 proves that an fp=firefox client sends the
// ClientHello of the Firefox ESR that Debian ships (captured in
// hello/testdata): the same JA4 and, beyond what JA4 covers, the same
// extension order (Firefox does not shuffle), the same lists inside them,
// the same constant extension bodies and the same lengths of what varies.
func TestFirefoxMatchesCapturedJA4(t *testing.T) {
	captures, _ := filepath.Glob("hello/testdata/firefox-*.bin")
	if len(captures) == 0 {
		t.Fatal("no Firefox captures")
	}
	const published = "t13d1617h2_86a278354501_3cbfd9057e0d" // shared/fingerprints/README.md
	var shapes []firefoxShape
	var aeads []uint16 // the ECH AEADs Firefox drew
	for _, c := range captures {
		if got := ja4(parseCapture(t, c)); got != published {
			t.Fatalf("%s: JA4 %s, want %s (the JA4 code is wrong)", c, got, published)
		}
		raw, err := os.ReadFile(c)
		if err != nil {
			t.Fatal(err)
		}
		_, s := shapeOf(t, c, raw)
		shapes = append(shapes, s)
		if !slices.Contains(aeads, s.echAEAD) {
			aeads = append(aeads, s.echAEAD)
		}
	}
	want := shapes[0]
	for i, s := range shapes[1:] {
		// The captures agree among themselves, or a reference taken from
		// one of them would be wrong.
		t.Run("capture "+filepath.Base(captures[i+1]), func(t *testing.T) { compareShapes(t, s, want, aeads) })
	}

	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	cfg := b.clientConfig()
	cfg.Fingerprint = "firefox"
	var shares [][]byte
	for range 2 {
		raw := recordHello(t, cfg)
		h, s := shapeOf(t, "our hello", raw)
		if got := ja4(h); got != published {
			t.Errorf("our Firefox hello has JA4 %s, Firefox ESR 153 has %s", got, published)
		}
		compareShapes(t, s, want, aeads)
		x25519, _ := h.KeyShare(0x001d)
		shares = append(shares, x25519)
	}
	if bytes.Equal(shares[0], shares[1]) {
		t.Error("two hellos had the same x25519 share")
	}
}
