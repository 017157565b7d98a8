package transport

import (
	"encoding/binary"
	"math/big"
	"testing"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/keys"
)

// extECH is the encrypted_client_hello extension's code point.
const extECH = 0xfe0d

// TestGREASEECHSendsARealKey proves that the enc of the GREASE ECH
// extension is what a browser sends there: the public half of a fresh
// X25519 key pair (BoringSSL's X25519_keypair). Such a value is always a
// point of the curve; 32 random bytes are one only half the time, so a
// censor that checks a few of a client's hellos would know it for a
// Mirage client. Before, a client sending a captured hello (-hello-capture)
// drew random bytes there.
func TestGREASEECHSendsARealKey(t *testing.T) {
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
	}{
		{"built-in chrome", "chrome", nil},
		{"built-in firefox", "firefox", nil},
		{"captured chromium", "chrome", chromium},
		{"captured firefox", "firefox", firefox},
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
			const hellos = 24 // all 24 on the curve by chance: 2^-24
			for range hellos {
				h, err := buildHello(cfg)
				if err != nil {
					t.Fatal(err)
				}
				enc := greaseECHEnc(t, h.uc.HandshakeState.Hello.Raw)
				if len(enc) != 32 {
					t.Fatalf("GREASE ECH enc is %d bytes, want an X25519 key's 32", len(enc))
				}
				if !onCurve25519(enc) {
					t.Fatalf("GREASE ECH enc %x is not a point of Curve25519: no browser sends that", enc)
				}
				if seen[string(enc)] {
					t.Fatalf("GREASE ECH enc %x sent twice", enc)
				}
				seen[string(enc)] = true
			}
		})
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
		if e.Type != extECH {
			continue
		}
		// type(1) = outer, kdf(2), aead(2), config_id(1), enc<2>, payload<2>
		d := e.Data
		if len(d) < 8 || d[0] != 0 {
			t.Fatalf("ECH extension %x is not an outer one", d)
		}
		n := int(binary.BigEndian.Uint16(d[6:8]))
		if len(d) < 8+n {
			t.Fatalf("ECH extension %x: enc runs past its end", d)
		}
		return d[8 : 8+n]
	}
	t.Fatal("the hello has no ECH extension")
	return nil
}

// onCurve25519 reports whether the little-endian u-coordinate u is that of
// a point of Curve25519 (v² = u³ + 486662u² + u has a solution), not of
// its twist.
func onCurve25519(u []byte) bool {
	le := make([]byte, len(u))
	for i := range u {
		le[len(u)-1-i] = u[i]
	}
	x := new(big.Int).SetBytes(le)
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	x.Mod(x, p)
	x2 := new(big.Int).Mul(x, x)
	rhs := new(big.Int).Mul(x2, x)
	rhs.Add(rhs, new(big.Int).Mul(big.NewInt(486662), x2))
	rhs.Add(rhs, x)
	rhs.Mod(rhs, p)
	return rhs.Sign() == 0 || big.Jacobi(rhs, p) == 1
}
