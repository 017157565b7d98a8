package transport

import (
	"errors"

	utls "github.com/refraction-networking/utls"
	"github.com/refraction-networking/utls/dicttls"
)

// Firefox's ClientHello. utls v1.8.2 knows Firefox up to 120; the Firefox
// ESR that Debian ships now (153, captures in transport/hello/testdata)
// differs from it in its cipher suites (no ECDHE_ECDSA_WITH_AES_128_CBC_SHA),
// its groups and key shares (X25519MLKEM768 first, sharing its x25519 half
// with the separate x25519 share), and three extensions
// (signed_certificate_timestamp and compress_certificate are new, ECH's
// payload is unchanged). So firefoxSpec spells the whole hello out, in the
// order Firefox sends it: unlike Chrome, Firefox does not shuffle its
// extensions. TestFirefoxMatchesCapturedJA4 checks it against the captures.

// firefoxSpec returns a fresh ClientHello spec of Firefox ESR 153. The
// x25519 key must then be shared by firefoxShareX25519 after ApplyPreset.
func firefoxSpec() (*utls.ClientHelloSpec, error) {
	return &utls.ClientHelloSpec{
		TLSVersMin: utls.VersionTLS12,
		TLSVersMax: utls.VersionTLS13,
		CipherSuites: []uint16{
			utls.TLS_AES_128_GCM_SHA256,
			utls.TLS_CHACHA20_POLY1305_SHA256,
			utls.TLS_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
			utls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			utls.TLS_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_RSA_WITH_AES_256_CBC_SHA,
		},
		CompressionMethods: []uint8{0}, // null
		Extensions: []utls.TLSExtension{
			&utls.SNIExtension{},
			&utls.ExtendedMasterSecretExtension{},
			&utls.RenegotiationInfoExtension{Renegotiation: utls.RenegotiateOnceAsClient},
			&utls.SupportedCurvesExtension{Curves: []utls.CurveID{
				utls.X25519MLKEM768,
				utls.X25519,
				utls.CurveP256,
				utls.CurveP384,
				utls.CurveP521,
				utls.FakeCurveFFDHE2048,
				utls.FakeCurveFFDHE3072,
			}},
			&utls.SupportedPointsExtension{SupportedPoints: []uint8{0}}, // uncompressed
			&utls.SessionTicketExtension{},
			&utls.ALPNExtension{AlpnProtocols: []string{"h2", "http/1.1"}},
			&utls.StatusRequestExtension{},
			&utls.FakeDelegatedCredentialsExtension{SupportedSignatureAlgorithms: []utls.SignatureScheme{
				utls.ECDSAWithP256AndSHA256,
				utls.ECDSAWithP384AndSHA384,
				utls.ECDSAWithP521AndSHA512,
				utls.ECDSAWithSHA1,
			}},
			&utls.SCTExtension{},
			// Empty Data: ApplyPreset generates every share. The first
			// non-hybrid one, x25519, becomes KeyShareKeys.Ecdhe, which
			// is where x25519Share looks for the key the tag derives from.
			&utls.KeyShareExtension{KeyShares: []utls.KeyShare{
				{Group: utls.X25519MLKEM768},
				{Group: utls.X25519},
				{Group: utls.CurveP256},
			}},
			&utls.SupportedVersionsExtension{Versions: []uint16{
				utls.VersionTLS13,
				utls.VersionTLS12,
			}},
			&utls.SignatureAlgorithmsExtension{SupportedSignatureAlgorithms: []utls.SignatureScheme{
				utls.ECDSAWithP256AndSHA256,
				utls.ECDSAWithP384AndSHA384,
				utls.ECDSAWithP521AndSHA512,
				utls.PSSWithSHA256,
				utls.PSSWithSHA384,
				utls.PSSWithSHA512,
				utls.PKCS1WithSHA256,
				utls.PKCS1WithSHA384,
				utls.PKCS1WithSHA512,
				utls.ECDSAWithSHA1,
				utls.PKCS1WithSHA1,
			}},
			&utls.PSKKeyExchangeModesExtension{Modes: []uint8{utls.PskModeDHE}},
			&utls.FakeRecordSizeLimitExtension{Limit: 0x4001},
			&utls.UtlsCompressCertExtension{Algorithms: []utls.CertCompressionAlgo{
				utls.CertCompressionZlib,
				utls.CertCompressionBrotli,
				utls.CertCompressionZstd,
			}},
			// GREASE ECH as Firefox sends it: HKDF-SHA256 with AES-128-GCM
			// or ChaCha20-Poly1305 (the captures have both), a random
			// config_id, a 32-byte enc of random bytes, not a public key
			// (greaseECHEncs), and a 239-byte payload (223 bytes sealed,
			// plus the 16-byte tag).
			&utls.GREASEEncryptedClientHelloExtension{
				CandidateCipherSuites: []utls.HPKESymmetricCipherSuite{
					{KdfId: dicttls.HKDF_SHA256, AeadId: dicttls.AEAD_AES_128_GCM},
					{KdfId: dicttls.HKDF_SHA256, AeadId: dicttls.AEAD_CHACHA20_POLY1305},
				},
				CandidatePayloadLens: []uint16{223},
			},
		},
	}, nil
}

// firefoxShareX25519 makes uc's hello carry one x25519 key in both its
// X25519MLKEM768 share (the last 32 bytes) and its x25519 share, as
// Firefox (and Go's crypto/tls) do. utls generates a separate key for
// each, which an observer comparing the two shares would tell from Firefox.
// The key kept is the hybrid's; it becomes KeyShareKeys.Ecdhe, so the
// handshake completes whichever of the two groups the server picks and
// the tag is derived from the key on the wire.
func firefoxShareX25519(uc *utls.UConn) error {
	keys := uc.HandshakeState.State13.KeyShareKeys
	if keys == nil || keys.MlkemEcdhe == nil || keys.Ecdhe == nil {
		return errors.New("transport: Firefox hello lacks its X25519MLKEM768 or X25519 key")
	}
	for _, ext := range uc.Extensions {
		ks, ok := ext.(*utls.KeyShareExtension)
		if !ok {
			continue
		}
		for i := range ks.KeyShares {
			if ks.KeyShares[i].Group == utls.X25519 {
				// The extension and HandshakeState.Hello share this
				// slice, so both see the new data.
				ks.KeyShares[i].Data = keys.MlkemEcdhe.PublicKey().Bytes()
				keys.Ecdhe = keys.MlkemEcdhe
				return nil
			}
		}
	}
	return errors.New("transport: Firefox hello has no X25519 key share")
}
