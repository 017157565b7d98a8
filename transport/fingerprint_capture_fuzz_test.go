package transport

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/hello"
)

// captureSeedFiles returns the captures matching pattern, as the capture
// tests load them.
func captureSeedFiles(f *testing.F, pattern string) [][]byte {
	f.Helper()
	names, _ := filepath.Glob(pattern)
	if len(names) < 2 {
		f.Fatalf("%d captures %s, want 2 or more", len(names), pattern)
	}
	var out [][]byte
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// reframe returns a capture's ClientHello carried in records of at most
// size bytes each, as a hello split over several records is captured.
func reframe(f *testing.F, c []byte, size int) []byte {
	f.Helper()
	_, msg, err := hello.ReadClientHello(bytes.NewReader(c))
	if err != nil {
		f.Fatal(err)
	}
	return inRecords(msg, size)
}

// inRecords returns the handshake message msg carried in handshake
// records of at most size bytes each.
func inRecords(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// FuzzParseCapturedHello proves ParseCapturedHello never panics on what a
// user may pass as -hello-capture, one capture or two: it returns a nil
// hello with an error starting "transport: ", or a hello that is usable,
// a client of which builds a ClientHello again (per-connection draws and
// all) with an x25519 key share, a 32-byte session_id for the tag, and
// bytes the bridge's own parser accepts. And that it is deterministic:
// the same captures give the same hello, or fail with the same error,
// whatever the random draws of the trial build it makes.
func FuzzParseCapturedHello(f *testing.F) {
	// shared/fingerprints' captures (copied to hello/testdata) and the
	// README recipe's.
	chromiums := captureSeedFiles(f, "hello/testdata/chromium-*.bin")
	firefoxes := captureSeedFiles(f, "hello/testdata/firefox-*.bin")
	readmes := captureSeedFiles(f, "testdata/chromium-156.0.8078.108/*.bin")
	for _, caps := range [][][]byte{chromiums, firefoxes, readmes} {
		for _, c := range caps {
			f.Add(c, []byte(nil), false)
		}
		f.Add(caps[0], caps[1], true) // two of one browser
	}
	chromium, firefox, readme := chromiums[0], firefoxes[0], readmes[0]
	f.Add(readme, chromium, true)  // two builds of one browser
	f.Add(chromium, firefox, true) // two browsers
	for _, c := range [][]byte{chromium, firefox, readme} {
		f.Add(c[:hello.RecordHeaderLen], []byte(nil), false)
		f.Add(c[:len(c)/2], []byte(nil), false)
		f.Add(c[:len(c)-1], []byte(nil), false)
		f.Add(c[hello.RecordHeaderLen:], []byte(nil), false) // no record header
		f.Add(append(bytes.Clone(c), 0x16), []byte(nil), false)
		f.Add(reframe(f, c, 300), []byte(nil), false)
		f.Add(c, c[:len(c)-1], true)
	}
	f.Fuzz(func(t *testing.T, a, b []byte, two bool) {
		captures := [][]byte{a}
		if two {
			captures = append(captures, b)
		}
		h, err := ParseCapturedHello(captures...)
		h2, err2 := ParseCapturedHello(captures...)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("parsed twice: %v, then %v", err, err2)
		}
		if err != nil {
			if h != nil {
				t.Fatal("a hello returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "transport: ") {
				t.Fatalf("error %q lacks the \"transport: \" prefix", err)
			}
			if err.Error() != err2.Error() {
				t.Fatalf("parsed twice, two errors: %q, then %q", err, err2)
			}
			return
		}
		if h == nil {
			t.Fatal("nil hello without an error")
		}
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("parsed twice, two hellos:\n%+v\n%+v", h, h2)
		}
		checkCapturedUsable(t, h)
	})
}

// checkCapturedUsable builds the hello a client dialling with h would
// send (newUConn, then sealHello's steps up to the tag) and checks that
// the bridge could read it.
func checkCapturedUsable(t *testing.T, h *CapturedHello) {
	t.Helper()
	uc := utls.UClient(nil, &utls.Config{ServerName: "fuzz.example", InsecureSkipVerify: true}, utls.HelloCustom)
	if err := h.apply(uc); err != nil {
		t.Fatalf("parsed, but a client cannot apply it: %v", err)
	}
	if err := uc.BuildHandshakeState(); err != nil {
		t.Fatalf("parsed, but a client cannot build it: %v", err)
	}
	hs := &uc.HandshakeState
	if _, err := x25519Share(hs); err != nil {
		t.Fatalf("parsed, but a client's hello: %v", err)
	}
	hs.Hello.SessionId = make([]byte, 32)
	if err := uc.MarshalClientHello(); err != nil {
		t.Fatalf("parsed, but a client cannot marshal it with a 32-byte session_id: %v", err)
	}
	raw := hs.Hello.Raw
	if len(raw) > hello.MaxHelloLen {
		t.Fatalf("a client's hello is %d bytes, more than a bridge reads (%d)", len(raw), hello.MaxHelloLen)
	}
	ch, err := hello.Parse(raw)
	if err != nil {
		t.Fatalf("a client's hello does not parse: %v", err)
	}
	if len(ch.SessionID) != 32 {
		t.Fatalf("a client's hello has a %d-byte session_id", len(ch.SessionID))
	}
	if _, ok := ch.KeyShare(0x001d); !ok {
		t.Fatal("a client's hello has no x25519 key share")
	}
}
