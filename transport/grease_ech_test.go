package transport

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/keys"
)

// extECH is the encrypted_client_hello extension's code point.
const extECH = 0xfe0d

// TestGREASEECHEncAsTheBrowserSendsIt proves that the enc of the GREASE
// ECH extension is drawn as the browser draws it. Chrome sends the
// public half of a fresh X25519 key pair there (every Chromium 156
// capture's is a point of the curve), Firefox random bytes (one of three
// Firefox ESR 153 captures' is no point of the curve, which no public
// key is). Half of all random values are no point of the curve, so the
// wrong kind would show within a few hellos to a censor who checks.
// Before, a captured Chromium hello sent random bytes, and the built-in
// Firefox hello a public key.
func TestGREASEECHEncAsTheBrowserSendsIt(t *testing.T) {
	chromium, err := LoadCapturedHello(captureFiles(t, "chromium")[0])
	if err != nil {
		t.Fatal(err)
	}
	firefox, err := LoadCapturedHello(captureFiles(t, "firefox")[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, fp string
		capture  *CapturedHello
		keyPair  bool
	}{
		{"built-in chrome", "chrome", nil, true},
		{"built-in firefox", "firefox", nil, false},
		{"captured chromium", "chrome", chromium, true},
		{"captured firefox", "firefox", firefox, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.capture != nil {
				useCaptured(t, tc.fp, tc.capture)
			}
			priv, err := keys.GenerateKey(nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg := &ClientConfig{Address: "127.0.0.1:1"}
			cfg.PublicKey = priv.Public()
			cfg.ServerName = "example.com"
			cfg.Fingerprint = tc.fp
			seen := map[string]bool{}
			on := 0
			const hellos = 24 // random bytes all on the curve by chance: 2^-24
			for range hellos {
				h, err := buildHello(cfg, nil)
				if err != nil {
					t.Fatal(err)
				}
				enc := greaseECHEnc(t, h.uc.HandshakeState.Hello.Raw)
				if len(enc) != x25519EncLen {
					t.Fatalf("GREASE ECH enc is %d bytes, want an X25519 key's %d", len(enc), x25519EncLen)
				}
				if seen[string(enc)] {
					t.Fatalf("GREASE ECH enc %x sent twice", enc)
				}
				seen[string(enc)] = true
				if onCurve25519(enc) {
					on++
				}
			}
			switch {
			case tc.keyPair && on < hellos:
				t.Errorf("%d of %d GREASE ECH encs are no point of the curve: %s sends public keys", hellos-on, hellos, tc.fp)
			case !tc.keyPair && on == hellos:
				t.Errorf("all %d GREASE ECH encs are points of the curve: %s sends random bytes", hellos, tc.fp)
			}
		})
	}
}

// TestOnCurve25519 checks the check: public keys are points of the
// curve, and of random values some are not.
func TestOnCurve25519(t *testing.T) {
	off := 0
	for range 64 {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if !onCurve25519(k.PublicKey().Bytes()) {
			t.Fatalf("public key %x: not on the curve", k.PublicKey().Bytes())
		}
		r := make([]byte, 32)
		rand.Read(r)
		if !onCurve25519(r) {
			off++
		}
	}
	if off == 0 || off == 64 {
		t.Errorf("%d of 64 random values off the curve, want about half", off)
	}
}

// greaseECHEnc returns the enc field of the outer ECH extension of the
// ClientHello handshake message msg.
func greaseECHEnc(t *testing.T, msg []byte) []byte {
	t.Helper()
	ch, err := hello.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ch.Extensions {
		if e.Type == extECH {
			c, err := parseGREASEECH(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			return c.enc
		}
	}
	t.Fatal("the hello has no ECH extension")
	return nil
}
