package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/link"
)

// helloShape describes a recorded hello (record header and message) with
// what a browser draws per connection left out: the random, the
// session_id's bytes, key share data, GREASE values (GREASE extension
// bodies stay: Chrome's are fixed), and GREASE ECH's config_id, enc and
// payload bytes (their lengths stay). Two hellos of one browser for one
// server name have equal shapes, extension order included.
func helloShape(t *testing.T, raw []byte) []string {
	t.Helper()
	_, msg, err := hello.ReadClientHello(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	h, err := hello.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	g := func(v uint16) string {
		if isGREASE(v) {
			return "GREASE"
		}
		return fmt.Sprintf("%04x", v)
	}
	list := func(b []byte, skip int) string {
		var s []string
		for i := skip; i+1 < len(b); i += 2 {
			s = append(s, g(binary.BigEndian.Uint16(b[i:])))
		}
		return strings.Join(s, " ")
	}
	var ciphers []string
	for _, c := range h.CipherSuites {
		ciphers = append(ciphers, g(c))
	}
	shape := []string{
		fmt.Sprintf("record type %d version %x", raw[0], raw[1:3]),
		fmt.Sprintf("handshake message length %d", len(msg)),
		fmt.Sprintf("legacy_version %04x", h.LegacyVersion),
		fmt.Sprintf("session_id length %d", len(h.SessionID)),
		"ciphers " + strings.Join(ciphers, " "),
		fmt.Sprintf("compression %x", h.CompressionMethods),
	}
	for _, e := range h.Extensions {
		var body string
		switch e.Type {
		case 0x000a, 0x000d:
			body = list(e.Data, 2)
		case 0x002b:
			body = list(e.Data, 1)
		case 0x0033:
			var s []string
			for _, ks := range h.KeyShares {
				if isGREASE(ks.Group) {
					s = append(s, fmt.Sprintf("GREASE:%x", ks.Data))
				} else {
					s = append(s, fmt.Sprintf("%04x:%d bytes", ks.Group, len(ks.Data)))
				}
			}
			body = strings.Join(s, " ")
		case 0xfe0d:
			d := e.Data
			encLen := int(binary.BigEndian.Uint16(d[6:]))
			body = fmt.Sprintf("type %d suite %x enc %d bytes payload %d bytes", d[0], d[1:5], encLen,
				binary.BigEndian.Uint16(d[8+encLen:]))
		default:
			body = fmt.Sprintf("%x", e.Data)
		}
		shape = append(shape, "extension "+g(e.Type)+": "+body)
	}
	return shape
}

// captureFiles returns the captures of a browser in hello/testdata
// (copies of shared/fingerprints).
func captureFiles(t *testing.T, browser string) []string {
	t.Helper()
	files, _ := filepath.Glob("hello/testdata/" + browser + "-*.bin")
	if len(files) == 0 {
		t.Fatalf("no %s captures", browser)
	}
	return files
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// useCaptured sets h for fp for the rest of the test.
func useCaptured(t *testing.T, fp string, h *CapturedHello) {
	t.Helper()
	if err := UseCapturedHello(fp, h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { UseCapturedHello(fp, nil) })
}

// TestCapturedHelloRoundTrips proves that a client given one capture sends
// that very hello: for every Chromium 156 and Firefox ESR 153 capture, the
// hello on the wire equals the capture in everything but what the browser
// itself draws per connection (random, session_id, key shares, GREASE
// values, ECH's random fields), and those are drawn anew, not replayed.
// Before, no capture could be used at all.
func TestCapturedHelloRoundTrips(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	for _, browser := range []string{"chromium", "firefox"} {
		for _, file := range captureFiles(t, browser) {
			t.Run(filepath.Base(file), func(t *testing.T) {
				capture := readFile(t, file)
				h, err := ParseCapturedHello(capture)
				if err != nil {
					t.Fatal(err)
				}
				useCaptured(t, "chrome", h)
				want := parseCapture(t, file)
				cfg := b.clientConfig()
				cfg.ServerName = want.ServerName // the capture's, so lengths compare
				raw := recordHello(t, cfg)
				gotShape, wantShape := helloShape(t, raw), helloShape(t, capture)
				// Chrome draws its GREASE ECH payload length per
				// connection from four (Firefox: one), and the
				// hello's length moves with it.
				gotECH, wantECH := echPayloadLen(gotShape), echPayloadLen(wantShape)
				allowed := []int{wantECH}
				if browser == "chromium" {
					allowed = []int{144, 176, 208, 240}
				}
				if !slices.Contains(allowed, gotECH) {
					t.Errorf("ECH payload %d bytes, want one of %d", gotECH, allowed)
				}
				if d := len(raw) - len(capture); d != gotECH-wantECH {
					t.Errorf("the hello is %d bytes longer than the capture, its ECH payload %d", d, gotECH-wantECH)
				}
				gotS, wantS := withoutLengths(gotShape), withoutLengths(wantShape)
				if browser == "chromium" {
					// Chrome shuffles its extensions but for the
					// GREASE ones, first and last.
					first := slices.IndexFunc(gotS, func(l string) bool { return strings.HasPrefix(l, "extension ") })
					for _, i := range []int{first, len(gotS) - 1} {
						if !strings.HasPrefix(gotS[i], "extension GREASE") {
							t.Errorf("%q where Chrome has a GREASE extension", gotS[i])
						}
					}
					gotS, wantS = sortedExtensions(gotS), sortedExtensions(wantS)
				}
				if !slices.Equal(gotS, wantS) {
					t.Errorf("the hello sent differs from the capture:\n%s", diffLines(gotS, wantS))
				}
				_, msg, _ := hello.ReadClientHello(bytes.NewReader(raw))
				got, _ := hello.Parse(msg)
				if bytes.Equal(got.Random, want.Random) || bytes.Equal(got.SessionID, want.SessionID) {
					t.Error("the capture's random or session_id was replayed")
				}
				for _, ks := range want.KeyShares {
					if d, _ := got.KeyShare(ks.Group); !isGREASE(ks.Group) && bytes.Equal(d, ks.Data) {
						t.Errorf("the capture's key share %04x was replayed", ks.Group)
					}
				}
				// Firefox puts one x25519 key in its hybrid and its
				// x25519 share, Chrome two keys: the client does as
				// the capture shows.
				hybrid, _ := got.KeyShare(0x11ec)
				x25519, _ := got.KeyShare(0x001d)
				if bytes.HasSuffix(hybrid, x25519) != (browser == "firefox") {
					t.Errorf("x25519 key shared between shares: %v, want %v", bytes.HasSuffix(hybrid, x25519), browser == "firefox")
				}
				if got, want := ja4(got), ja4(want); got != want {
					t.Errorf("JA4 %s, capture's %s", got, want)
				}
			})
		}
	}
}

// echPayloadLen returns the ECH payload length in shape.
func echPayloadLen(shape []string) int {
	for _, l := range shape {
		if strings.HasPrefix(l, "extension fe0d") {
			var n int
			fmt.Sscanf(l[strings.Index(l, " payload ")+1:], "payload %d bytes", &n)
			return n
		}
	}
	return -1
}

// withoutLengths is shape without the lengths that follow the ECH payload
// length.
func withoutLengths(shape []string) []string {
	var out []string
	for _, l := range shape {
		switch {
		case strings.HasPrefix(l, "handshake message length"):
		case strings.HasPrefix(l, "extension fe0d"):
			out = append(out, l[:strings.Index(l, " payload ")])
		default:
			out = append(out, l)
		}
	}
	return out
}

// sortedExtensions is shape with its extension lines sorted.
func sortedExtensions(shape []string) []string {
	out := slices.Clone(shape)
	i := slices.IndexFunc(out, func(l string) bool { return strings.HasPrefix(l, "extension ") })
	slices.Sort(out[i:])
	return out
}

func diffLines(got, want []string) string {
	var b strings.Builder
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			fmt.Fprintf(&b, "\tsent:    %s\n\tcapture: %s\n", g, w)
		}
	}
	return b.String()
}

// TestCapturedHellosVaryAsTheBrowser proves that from captures of a
// browser that shuffles its extensions and varies its ECH payload length
// (Chromium's eight, or just one of them), the client varies the same
// things, within what Chrome does; and that a browser that does neither
// (Firefox's three, or one) is sent in its one order.
func TestCapturedHellosVaryAsTheBrowser(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	for _, tc := range []struct {
		browser string
		files   int // how many captures to load; 0: all
		varies  bool
	}{{"chromium", 0, true}, {"chromium", 1, true}, {"firefox", 0, false}, {"firefox", 1, false}} {
		t.Run(fmt.Sprintf("%s/%d", tc.browser, tc.files), func(t *testing.T) {
			dir := t.TempDir()
			var sorted []string // the captures' shape, extensions sorted
			echs := map[string]bool{}
			files := captureFiles(t, tc.browser)
			if tc.files > 0 {
				files = files[:tc.files]
			}
			for _, f := range files {
				c := readFile(t, f)
				if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), c, 0o600); err != nil {
					t.Fatal(err)
				}
				s := helloShape(t, c)
				for _, l := range s {
					if strings.HasPrefix(l, "extension fe0d") {
						echs[l] = true
					}
				}
				sorted = canonicalShape(s)
			}
			if tc.browser == "chromium" {
				// Chrome draws from four lengths; the eight
				// captures show three.
				for _, n := range []int{144, 176, 208, 240} {
					echs[fmt.Sprintf("extension fe0d: type 0 suite 00010001 enc 32 bytes payload %d bytes", n)] = true
				}
			}
			h, err := LoadCapturedHello(dir)
			if err != nil {
				t.Fatal(err)
			}
			useCaptured(t, "chrome", h)
			cfg := b.clientConfig()
			cfg.ServerName = "fp-test.example"
			orders := map[string]bool{}
			for range 8 {
				s := helloShape(t, recordHello(t, cfg))
				if got := canonicalShape(s); !slices.Equal(got, sorted) {
					t.Fatalf("the hello sent differs from the captures:\n%s", diffLines(got, sorted))
				}
				var order []string
				for _, l := range s {
					if strings.HasPrefix(l, "extension ") {
						order = append(order, l[:len("extension xxxx")])
					}
					if strings.HasPrefix(l, "extension fe0d") && !echs[l] {
						t.Errorf("ECH %q is none of the captures'", l)
					}
				}
				orders[strings.Join(order, " ")] = true
			}
			if varies := len(orders) > 1; varies != tc.varies {
				t.Errorf("extension order varied: %v, want %v (%d orders in 8 hellos)", varies, tc.varies, len(orders))
			}
		})
	}
}

// canonicalShape is a shape with its extensions sorted and the lengths
// that vary among captures (message length, ECH) left out.
func canonicalShape(s []string) []string {
	var out []string
	for _, l := range s {
		switch {
		case strings.HasPrefix(l, "handshake message length"):
		case strings.HasPrefix(l, "extension fe0d"):
			out = append(out, l[:strings.Index(l, " suite")])
		default:
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// TestBridgeAcceptsCapturedHello proves what a user relies on: a client
// that sends a captured hello (here Chromium 156's, from the directory of
// its captures, as shipped in shared/fingerprints) is authenticated by
// the bridge and carries data, for the default fingerprint and for a name
// set to a capture of its own (Firefox's, whose key shares share a key).
func TestBridgeAcceptsCapturedHello(t *testing.T) {
	dir := t.TempDir()
	for _, f := range captureFiles(t, "chromium") {
		os.WriteFile(filepath.Join(dir, filepath.Base(f)), readFile(t, f), 0o600)
	}
	chromium, err := LoadCapturedHello(dir)
	if err != nil {
		t.Fatal(err)
	}
	firefox, err := LoadCapturedHello(captureFiles(t, "firefox")[0])
	if err != nil {
		t.Fatal(err)
	}
	useCaptured(t, "chrome", chromium)
	useCaptured(t, "firefox", firefox)
	for name, face := range faces(t) {
		b := startBridge(t, face(), echoHandler, nil)
		for _, fp := range []string{"", "firefox", "edge"} {
			t.Run(name+"/"+fp, func(t *testing.T) {
				cfg := b.clientConfig()
				cfg.Fingerprint = fp
				sess, err := Dial(context.Background(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer sess.Close()
				st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if err := roundTrip(st, payload(70000, 5)); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestRetiredFingerprintsSendChrome proves that links naming edge, ios or
// safari (utls's Edge 85, iOS 14 and Safari 16 hellos, which the client
// sent before and which are rare in 2026) still parse, and that their
// clients now send the current Chrome's hello, or a capture set for the
// name. Before, they sent the stale hellos, whose JA4 is not Chromium's.
func TestRetiredFingerprintsSendChrome(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	const chromium156 = "t13d1517h2_8daaf6152771_cb7bf5808d99"
	for _, fp := range []string{"edge", "ios", "safari"} {
		l, err := link.Parse(fmt.Sprintf("mirage://%s@192.0.2.1:443?sni=%s&fp=%s", b.params.PublicKey, testSNI, fp))
		if err != nil {
			t.Fatalf("fp=%s: %v", fp, err)
		}
		cfg := b.clientConfig()
		cfg.Fingerprint = l.Fingerprint
		raw := recordHello(t, cfg)
		_, msg, _ := hello.ReadClientHello(bytes.NewReader(raw))
		h, err := hello.Parse(msg)
		if err != nil {
			t.Fatal(err)
		}
		if got := ja4(h); got != chromium156 {
			t.Errorf("fp=%s sends JA4 %s, want Chromium 156's %s", fp, got, chromium156)
		}
	}
	// A capture for the name itself wins over the alias.
	firefox, err := ParseCapturedHello(readFile(t, captureFiles(t, "firefox")[0]))
	if err != nil {
		t.Fatal(err)
	}
	useCaptured(t, "safari", firefox)
	cfg := b.clientConfig()
	cfg.Fingerprint = "safari"
	_, msg, _ := hello.ReadClientHello(bytes.NewReader(recordHello(t, cfg)))
	h, _ := hello.Parse(msg)
	if got, want := ja4(h), "t13d1617h2_86a278354501_3cbfd9057e0d"; got != want {
		t.Errorf("fp=safari with a capture set sends JA4 %s, want the capture's %s", got, want)
	}
}

// TestCapturedHelloRefusesWhatItCannotSend proves that captures the client
// could not send faithfully fail at load, with a reason, rather than
// producing a hello unlike the browser's.
func TestCapturedHelloRefusesWhatItCannotSend(t *testing.T) {
	chrome := readFile(t, captureFiles(t, "chromium")[0])
	firefox := readFile(t, captureFiles(t, "firefox")[0])
	_, msg, err := hello.ReadClientHello(bytes.NewReader(chrome))
	if err != nil {
		t.Fatal(err)
	}
	h, err := hello.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	// extAt returns the offset in c, a copy of chrome, of extension
	// typ's header.
	extAt := func(c []byte, typ uint16) int {
		off := hello.RecordHeaderLen + 4 + 2 + 32
		off += 1 + int(c[off])
		off += 2 + int(binary.BigEndian.Uint16(c[off:]))
		off += 1 + int(c[off])
		off += 2
		for off+4 <= len(c) {
			if binary.BigEndian.Uint16(c[off:]) == typ {
				return off
			}
			off += 4 + int(binary.BigEndian.Uint16(c[off+2:]))
		}
		t.Fatalf("no extension %04x", typ)
		return 0
	}
	// retype returns chrome with extension from's type set to to.
	retype := func(from, to uint16) []byte {
		c := bytes.Clone(chrome)
		binary.BigEndian.PutUint16(c[extAt(c, from):], to)
		return c
	}
	// echSuite returns chrome with its GREASE ECH's HPKE KDF and AEAD
	// set. utls checks the first capture's; a later capture's went
	// unchecked into the choices, and utls panicked building a hello
	// for an AEAD it has no tag length for (found by
	// FuzzParseCapturedHello in CI).
	echSuite := func(kdf, aead uint16) []byte {
		c := bytes.Clone(chrome)
		d := extAt(c, 0xfe0d) + 4
		binary.BigEndian.PutUint16(c[d+1:], kdf)
		binary.BigEndian.PutUint16(c[d+3:], aead)
		return c
	}
	shortSession := func() []byte {
		// Drop the session_id: length 0, 32 bytes fewer.
		c := bytes.Clone(chrome)
		off := hello.RecordHeaderLen + h.SessionIDOffset
		c = append(c[:off-1], append([]byte{0}, c[off+32:]...)...)
		binary.BigEndian.PutUint16(c[3:], uint16(len(c)-5))
		n := len(c) - 9
		c[6], c[7], c[8] = byte(n>>16), byte(n>>8), byte(n)
		return c
	}
	// withExtension returns chrome's hello with ext added last, carried
	// in records of 16 KiB.
	withExtension := func(ext []byte) []byte {
		m := bytes.Clone(msg)
		off := 4 + 2 + 32
		off += 1 + int(m[off])
		off += 2 + int(binary.BigEndian.Uint16(m[off:]))
		off += 1 + int(m[off])
		binary.BigEndian.PutUint16(m[off:], binary.BigEndian.Uint16(m[off:])+uint16(len(ext)))
		m = append(m, ext...)
		n := len(m) - 4
		m[1], m[2], m[3] = byte(n>>16), byte(n>>8), byte(n)
		return inRecords(m, hello.MaxRecordPayload)
	}
	// huge returns chrome's hello grown past a record by an unknown
	// extension of zeros: the client's own hello, larger again (its
	// server name, the ECH payload), went past what a bridge reads, and
	// every dial failed as a wrong key.
	huge := func() []byte {
		const extra = 20 << 10
		return withExtension(append([]byte{0x12, 0x34, extra >> 8, extra & 0xff}, make([]byte, extra)...))
	}
	// resumed returns chrome's hello as a browser sends it when it
	// resumes: a pre_shared_key (one identity, one binder) last.
	resumed := func() []byte {
		ext := []byte{0x00, 0x29, 0, 47, 0, 10, 0, 4, 1, 2, 3, 4, 0, 0, 0, 9, 0, 33, 32}
		return withExtension(append(ext, bytes.Repeat([]byte{0xb1}, 32)...))
	}
	for _, tc := range []struct {
		name     string
		captures [][]byte
		want     string
	}{
		{"nothing", nil, "no captures"},
		{"larger than a record", [][]byte{huge()}, "more than a browser's hello"},
		{"not TLS", [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n")}, ""},
		{"trailing bytes", [][]byte{append(bytes.Clone(chrome), 0x17)}, "after the ClientHello"},
		{"no session_id", [][]byte{shortSession()}, "session_id"},
		{"no server_name", [][]byte{retype(0x0000, 0x00fe)}, "server_name"},
		{"resumed", [][]byte{resumed()}, "resumed"},
		{"two browsers", [][]byte{chrome, firefox}, "not of the same browser"},
		{"unknown ECH AEAD", [][]byte{echSuite(1, 0xffff)}, "AEAD"},
		{"unknown ECH KDF", [][]byte{echSuite(0x1234, 1)}, "KDF"},
		{"unknown ECH AEAD second", [][]byte{chrome, echSuite(1, 0xffff)}, "AEAD"},
		{"unknown ECH KDF second", [][]byte{chrome, echSuite(0x1234, 1)}, "KDF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCapturedHello(tc.captures...)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
	// hello/testdata holds two browsers' captures: a directory must be one.
	if _, err := LoadCapturedHello("hello/testdata"); err == nil || !strings.Contains(err.Error(), "hello/testdata") {
		t.Errorf("a directory of two browsers: %v", err)
	}
	if err := UseCapturedHello("opera", nil); err == nil {
		t.Error("UseCapturedHello accepted a name links cannot carry")
	}
}

// TestREADMECaptureRecipe proves that what the README's capture recipe
// makes loads and is sent as Chromium: testdata/chromium-156.0.8078.108
// holds its output, six hellos from eight headless runs of Debian's
// Chromium 156.0.8078.108 (a later build than shared/fingerprints'), one
// with the ECH payload length those captures lack.
func TestREADMECaptureRecipe(t *testing.T) {
	h, err := LoadCapturedHello("testdata/chromium-156.0.8078.108")
	if err != nil {
		t.Fatal(err)
	}
	useCaptured(t, "chrome", h)
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	_, msg, err := hello.ReadClientHello(bytes.NewReader(recordHello(t, b.clientConfig())))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := hello.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ja4(ch), "t13d1517h2_8daaf6152771_cb7bf5808d99"; got != want {
		t.Errorf("JA4 %s, Chromium 156's %s", got, want)
	}
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
}
