package transport

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/link"
)

// A client's ClientHello must be, byte for byte, a browser's: its JA3/JA4
// fingerprint is the first thing DPI checks. utls v1.8.2 knows Chrome up to
// 133; the Chromium that Debian ships now (156, captures in
// transport/hello/testdata) differs from it in two places only, which
// chromeSpec adds:
//
//   - the trust_anchors extension (0xca34) listing the trust anchor IDs
//     Chrome supports; and
//   - a GREASE value and the ML-DSA schemes 0x0904-0x0906 at the front of
//     signature_algorithms.
//
// TestChromeMatchesCapturedJA4 checks the result against the captures.

// extTrustAnchors is the trust_anchors extension's code point.
const extTrustAnchors = 0xca34

// chromeTrustAnchors is the body of Chromium 156's trust_anchors extension,
// the same on every captured connection.
var chromeTrustAnchors = mustHex("00b80582df1302010582df1302060582df13020d0582df13020e0582df13020f0582df1302120582df1302130582df13021408839a648c9b2d010708839a648c9b2d010808839a648c9b2d010908839a648c9b2d010a08839a648c9b2d010b08839a648c9b2d010c08839a648c9b2d010d08839a648c9b2d011208839a648c9b2d011304d679090104d679090404d679090504d679090604d679090704d679090804d679090a04d679090b04d679090c04d679090d04d679090f")

// ML-DSA signature schemes (draft-ietf-tls-mldsa) Chrome offers.
const (
	mldsa44 utls.SignatureScheme = 0x0904
	mldsa65 utls.SignatureScheme = 0x0905
	mldsa87 utls.SignatureScheme = 0x0906
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// chromeSpec returns a fresh ClientHello spec of current Chrome, with the
// extension order shuffled as Chrome shuffles it on every connection.
func chromeSpec() (*utls.ClientHelloSpec, error) {
	spec, err := utls.UTLSIdToSpec(utls.HelloChrome_133)
	if err != nil {
		return nil, err
	}
	var grease [1]byte
	if _, err := rand.Read(grease[:]); err != nil {
		return nil, err
	}
	// GREASE values are 0x?a?a (RFC 8701); Chrome draws one per connection.
	g := utls.SignatureScheme(uint16(grease[0]&0xf0|0x0a)<<8 | uint16(grease[0]&0xf0|0x0a))
	found := false
	for i, ext := range spec.Extensions {
		if sa, ok := ext.(*utls.SignatureAlgorithmsExtension); ok {
			sa.SupportedSignatureAlgorithms = append([]utls.SignatureScheme{g, mldsa44, mldsa65, mldsa87},
				sa.SupportedSignatureAlgorithms...)
			// Put trust_anchors next to it; the order is shuffled anyway.
			spec.Extensions = append(spec.Extensions[:i+1], append([]utls.TLSExtension{
				&utls.GenericExtension{Id: extTrustAnchors, Data: chromeTrustAnchors},
			}, spec.Extensions[i+1:]...)...)
			found = true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("transport: utls's Chrome spec has no signature_algorithms")
	}
	return &spec, nil
}

// fingerprintAliases are fp= names whose built-in hello is another's.
// utls's Edge 85, iOS 14 and Safari 16 hellos, which these names used to
// send, are rare in 2026, and a censor that scores hellos bans stale
// ones: a client sending one stood out more than one sending the current
// Chrome. Edge is Chromium, and its hello is Chrome's. There is no capture
// of a current Safari to build one from, so safari and ios send Chrome's
// hello too, until a capture of Safari is set for them (UseCapturedHello).
// The names stay valid so that links naming them keep working.
var fingerprintAliases = map[string]string{
	"edge":   "chrome",
	"ios":    "chrome",
	"safari": "chrome",
}

// newUConn returns a utls client connection that will send the ClientHello
// of the browser fp names: a captured hello set for fp (UseCapturedHello),
// else for the name it is an alias of, else the built-in one.
func newUConn(raw net.Conn, cfg *utls.Config, fp string) (*utls.UConn, error) {
	// With no ticket to offer (no ClientSessionCache, or nothing in it),
	// the hello has no pre_shared_key, as a browser's first visit has
	// none; utls would fail instead. A captured hello without one (a
	// first visit's capture) makes full handshakes, tickets or not:
	// utls panicked, taking the client down, on the first carrier that
	// had a ticket (TestCapturedHelloCarriersFullHandshake).
	cfg.OmitEmptyPsk = true
	cfg.PreferSkipResumptionOnNilExtension = true
	if fp == "" {
		fp = link.DefaultFingerprint
	}
	h := capturedFor(fp)
	if alias, ok := fingerprintAliases[fp]; ok {
		fp = alias
		if h == nil {
			h = capturedFor(fp)
		}
	}
	if h != nil {
		uc := utls.UClient(raw, cfg, utls.HelloCustom)
		if err := h.apply(uc); err != nil {
			return nil, err
		}
		return uc, nil
	}
	var spec *utls.ClientHelloSpec
	var err error
	switch fp {
	case "chrome":
		spec, err = chromeSpec()
	case "firefox":
		spec, err = firefoxSpec()
	default:
		return nil, fmt.Errorf("transport: unknown fingerprint %q", fp)
	}
	if err != nil {
		return nil, err
	}
	// A browser offers a ticket it holds in pre_shared_key, the last
	// extension (RFC 8446, 4.2.11), when cfg has a session cache with
	// one in it (tickets.go); with none (OmitEmptyPsk) the extension is
	// left out, as on a first visit.
	spec.Extensions = append(spec.Extensions, &utls.UtlsPreSharedKeyExtension{})
	// Chrome's GREASE ECH enc is a key pair's public key, Firefox's
	// random bytes (greaseECHEncs).
	if err := greaseECHEncs(spec, fp == "chrome"); err != nil {
		return nil, err
	}
	uc := utls.UClient(raw, cfg, utls.HelloCustom)
	if err := uc.ApplyPreset(spec); err != nil {
		return nil, fmt.Errorf("transport: applying %s's ClientHello: %w", fp, err)
	}
	if fp == "firefox" {
		if err := firefoxShareX25519(uc); err != nil {
			return nil, err
		}
	}
	return uc, nil
}

// greaseECHEncs draws the enc of every GREASE ECH extension of spec as
// the browser does: with keyPair, the public half of a fresh X25519 key
// pair, as Chrome does (BoringSSL's X25519_keypair: each of eight
// captures of Chromium 156 is a point of the curve), else 32 random
// bytes, as Firefox does (one of three captures of Firefox ESR 153 is no
// point of the curve, which no public key is). Half of all random values
// are no point of the curve, so the wrong one of the two would tell a
// censor who checks a few hellos a Mirage client from the browser. Left
// to itself, utls runs a whole HPKE encapsulation in its own specs (a
// key pair, and a Diffie-Hellman with a dummy key nobody sees), and
// draws random bytes in a spec parsed from a capture, whatever the
// browser.
func greaseECHEncs(spec *utls.ClientHelloSpec, keyPair bool) error {
	for _, ext := range spec.Extensions {
		e, ok := ext.(*utls.GREASEEncryptedClientHelloExtension)
		if !ok || (len(e.EncapsulatedKey) != 0 && len(e.EncapsulatedKey) != x25519EncLen) {
			// A capture whose enc is not X25519's is left as it is.
			continue
		}
		if keyPair {
			k, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				return fmt.Errorf("transport: GREASE ECH key: %w", err)
			}
			e.EncapsulatedKey = k.PublicKey().Bytes()
			continue
		}
		e.EncapsulatedKey = make([]byte, x25519EncLen)
		if _, err := rand.Read(e.EncapsulatedKey); err != nil {
			return fmt.Errorf("transport: GREASE ECH enc: %w", err)
		}
	}
	return nil
}

// x25519EncLen is the length of a DHKEM(X25519) enc: a public key.
const x25519EncLen = 32

// onCurve25519 reports whether the little-endian u-coordinate u is that
// of a point of Curve25519 (v² = u³ + 486662u² + u has a solution), and
// not of its twist: what every X25519 public key is.
func onCurve25519(u []byte) bool {
	be := make([]byte, len(u))
	for i := range u {
		be[len(u)-1-i] = u[i]
	}
	x := new(big.Int).SetBytes(be)
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	x.Mod(x, p)
	x2 := new(big.Int).Mul(x, x)
	rhs := new(big.Int).Mul(x2, x)
	rhs.Add(rhs, new(big.Int).Mul(big.NewInt(486662), x2))
	rhs.Add(rhs, x)
	rhs.Mod(rhs, p)
	return rhs.Sign() == 0 || big.Jacobi(rhs, p) == 1
}
