package transport

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/hello"
)

// parseRecordedHello records the ClientHello cfg sends and parses it.
func parseRecordedHello(t *testing.T, cfg *ClientConfig) ([]byte, *hello.ClientHello) {
	t.Helper()
	raw := recordHello(t, cfg)
	_, msg, err := hello.ReadClientHello(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	h, err := hello.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	return raw, h
}

// extensionTypes lists a hello's extension types, sorted, GREASE values
// as one placeholder (they are random per hello).
func extensionTypes(h *hello.ClientHello) []uint16 {
	var types []uint16
	for _, e := range h.Extensions {
		if isGREASE(e.Type) {
			types = append(types, 0x0a0a)
			continue
		}
		types = append(types, e.Type)
	}
	slices.Sort(types)
	return types
}

// TestHelloWithoutServerName proves what a client of a bridge without a
// domain name sends: no server_name extension at all, as Chrome does when
// the user typed an IP address (JA4 "t13i…" with one extension fewer and
// the same cipher and extension hashes as the named hello), with nothing
// else changed, for every fingerprint; and that a bridge that accepts only
// the empty name authenticates such a client, while a client that sends a
// name meets its face. On the code before sni became optional, a client
// with no server name was refused outright ("sni: missing"), so every
// bridge had to hand out a name, and a bridge without one made up
// "localhost".
func TestHelloWithoutServerName(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.ServerNames = []string{""} })
	named := b.clientConfig()
	unnamed := b.clientConfig()
	unnamed.ServerName = ""
	// Checked first: recordHello would wait for a hello that a refused
	// config never sends.
	if err := unnamed.check(); err != nil {
		t.Fatalf("a client config with no server name is refused: %v", err)
	}

	const published = "t13d1517h2_8daaf6152771_cb7bf5808d99" // Chromium 156 to a name
	wantJA4 := "t13i1516h2" + published[len("t13d1517h2"):]  // the same Chromium to an IP
	for _, fp := range []string{"chrome", "firefox", "safari", "ios", "edge"} {
		t.Run(fp, func(t *testing.T) {
			named.Fingerprint, unnamed.Fingerprint = fp, fp
			_, withName := parseRecordedHello(t, named)
			raw, without := parseRecordedHello(t, unnamed)
			if without.ServerName != "" || slices.Contains(extensionTypes(without), 0x0000) {
				t.Fatalf("hello without a name has server_name %q", without.ServerName)
			}
			if bytes.Contains(bytes.ToLower(raw), []byte("localhost")) {
				t.Fatal("hello without a name carries \"localhost\"")
			}
			wantTypes := slices.DeleteFunc(extensionTypes(withName), func(v uint16) bool { return v == 0x0000 })
			if got := extensionTypes(without); !slices.Equal(got, wantTypes) {
				t.Fatalf("extensions without a name %04x, want those of the named hello less server_name %04x", got, wantTypes)
			}
			if !slices.Equal(noGREASE(without.CipherSuites), noGREASE(withName.CipherSuites)) {
				t.Fatalf("cipher suites differ: %04x vs %04x", without.CipherSuites, withName.CipherSuites)
			}
			if fp == "chrome" {
				if got := ja4(without); got != wantJA4 {
					t.Fatalf("JA4 without a name %s, want %s (Chromium's to an IP address)", got, wantJA4)
				}
			}

			// The bridge authenticates it and carries data.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			sess, err := Dial(ctx, unnamed)
			if err != nil {
				t.Fatalf("a client sending no server name to a bridge that has none: %v", err)
			}
			defer sess.Close()
			st, err := sess.OpenStream(ctx, Request{Command: CmdDefault})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := roundTrip(st, payload(20000, 8)); err != nil {
				t.Fatal(err)
			}
		})
	}

	// The empty name is an exact match, not "any name": a client that
	// sends a name this bridge does not have meets the face.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	named.Fingerprint = ""
	if _, err := Dial(ctx, named); !errors.Is(err, ErrNotBridge) {
		t.Fatalf("a client sending %s to a bridge that accepts no name: %v, want %v", named.ServerName, err, ErrNotBridge)
	}
}

// noGREASE returns vs without GREASE values, which are random per hello.
func noGREASE(vs []uint16) []uint16 {
	return slices.DeleteFunc(slices.Clone(vs), isGREASE)
}
