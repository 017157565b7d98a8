package transport

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/transport/hello"
)

func isGREASE(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }

// ja4 computes the JA4 TLS client fingerprint (FoxIO's JA4 spec, TCP,
// ja4_a_b_c with hashed b and c) of a parsed ClientHello.
func ja4(h *hello.ClientHello) string {
	var ciphers []string
	for _, c := range h.CipherSuites {
		if !isGREASE(c) {
			ciphers = append(ciphers, fmt.Sprintf("%04x", c))
		}
	}
	var exts []string
	var sigalgs []string
	nExt := 0
	sni := "i"
	for _, e := range h.Extensions {
		if isGREASE(e.Type) {
			continue
		}
		nExt++
		switch e.Type {
		case 0x0000:
			sni = "d"
			continue
		case 0x0010:
			continue
		case 0x000d:
			for i := 2; i+1 < len(e.Data); i += 2 {
				if v := binary.BigEndian.Uint16(e.Data[i:]); !isGREASE(v) {
					sigalgs = append(sigalgs, fmt.Sprintf("%04x", v))
				}
			}
		}
		exts = append(exts, fmt.Sprintf("%04x", e.Type))
	}
	version := "12"
	for _, v := range h.SupportedVersions {
		if v == 0x0304 {
			version = "13"
		}
	}
	alpn := "00"
	if len(h.ALPN) > 0 {
		a := h.ALPN[0]
		alpn = a[:1] + a[len(a)-1:]
	}
	sort.Strings(ciphers)
	sort.Strings(exts)
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])[:12]
	}
	c := strings.Join(exts, ",")
	if len(sigalgs) > 0 {
		c += "_" + strings.Join(sigalgs, ",")
	}
	return fmt.Sprintf("t%s%s%02d%02d%s_%s_%s", version, sni, len(ciphers), nExt, alpn,
		hash(strings.Join(ciphers, ",")), hash(c))
}

func parseCapture(t *testing.T, path string) *hello.ClientHello {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, msg, err := hello.ReadClientHello(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	h, err := hello.Parse(msg)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return h
}

// TestChromeMatchesCapturedJA4 proves that the ClientHello a default
// client sends has the JA4 fingerprint of the Chromium that Debian ships
// (captured in hello/testdata), the same as real Chrome users, and keeps
// Chrome's per-connection variation (extension order).
func TestChromeMatchesCapturedJA4(t *testing.T) {
	captures, _ := filepath.Glob("hello/testdata/chromium-*.bin")
	if len(captures) == 0 {
		t.Fatal("no Chromium captures")
	}
	const published = "t13d1517h2_8daaf6152771_cb7bf5808d99" // shared/fingerprints/README.md
	for _, c := range captures {
		if got := ja4(parseCapture(t, c)); got != published {
			t.Fatalf("%s: JA4 %s, want %s (the JA4 code is wrong)", c, got, published)
		}
	}
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	var orders []string
	for range 4 {
		raw := recordHello(t, b.clientConfig())
		_, msg, err := hello.ReadClientHello(strings.NewReader(string(raw)))
		if err != nil {
			t.Fatal(err)
		}
		h, err := hello.Parse(msg)
		if err != nil {
			t.Fatal(err)
		}
		if got := ja4(h); got != published {
			t.Fatalf("our Chrome hello has JA4 %s, Chromium 156 has %s", got, published)
		}
		var order []string
		for _, e := range h.Extensions {
			order = append(order, fmt.Sprintf("%04x", e.Type))
		}
		orders = append(orders, strings.Join(order, " "))
	}
	slices.Sort(orders)
	if len(slices.Compact(orders)) == 1 {
		t.Fatalf("four hellos had the same extension order; Chrome shuffles it per connection")
	}
}
