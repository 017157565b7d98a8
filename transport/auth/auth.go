// Package auth computes Mirage's handshake secrets: the authentication tag a
// client hides in its ClientHello's session_id, the server's proof that it
// holds the bridge key, and the signature that binds a per-connection
// certificate to a handshake. It is pure: bytes in, bytes or an error out.
//
// Layout of the tag (transport/PROTOCOL.md, "The authentication tag"):
//
//	auth key  = HKDF-SHA256(IKM = X25519(client x25519 share, bridge key),
//	                        salt = ClientHello.random,
//	                        info = "mirage v1 auth" || bridge public key)      32 bytes
//	plaintext = version(1) = 0x01 | reserved(3) = 0 | unix seconds(4, BE) | short id(8)   16 bytes
//	tag       = ChaCha20-Poly1305(auth key, nonce = random[20:32],
//	                              plaintext, AAD = ClientHello with session_id zeroed)   32 bytes
package auth

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// Sizes of the values this package works with, in bytes.
const (
	KeyLen       = 32                                       // auth key, X25519 keys and shares
	RandomLen    = 32                                       // ClientHello.random
	PlaintextLen = 16                                       // version, reserved, time, short id
	TagLen       = PlaintextLen + chacha20poly1305.Overhead // fills the 32-byte session_id exactly
	ProofLen     = sha256.Size                              // the server proof
	ShortIDLen   = 8
	nonceOffset  = RandomLen - chacha20poly1305.NonceSize // the nonce is the last 12 bytes of random
)

// Version is the protocol version carried in the tag. A server refuses any
// other value, so a future version can change everything after the tag.
// Version 2: the server opening is the proof alone, then a STATUS frame,
// in records the sizes of the face's (PROTOCOL.md, "Openings").
const Version = 2

// Labels used for key derivation and the TLS exporter. They are part of the
// wire protocol: changing one breaks compatibility.
const (
	keyInfo     = "mirage v1 auth"
	proofLabel  = "mirage v1 server proof"
	certLabel   = "mirage v1 certificate"
	ExportLabel = "EXPORTER-mirage-v1-server-proof" // RFC 8446 7.5 exporter label for the server proof
)

// ErrBadTag means the tag did not open under the derived key: the sender
// does not know the bridge key, or the hello was altered in transit.
var ErrBadTag = errors.New("auth: tag does not verify")

// Payload is what the tag carries.
type Payload struct {
	Version uint8
	Time    uint32 // unix seconds when the client built the hello
	ShortID [ShortIDLen]byte
}

// ClientKey derives the auth key on the client side from its ephemeral
// X25519 private key (the one behind its key_share), the bridge's public key
// and the ClientHello random.
//
// Both sides take keys as *ecdh.PrivateKey, which carry their public key:
// X25519 from raw scalar bytes computes the public key first, a second
// scalar multiplication that doubled the cost of every handshake here,
// and of every stranger's hello the bridge reads.
func ClientKey(ephemeral *ecdh.PrivateKey, bridgePublic, random []byte) ([KeyLen]byte, error) {
	shared, err := x25519(ephemeral, bridgePublic)
	if err != nil {
		return [KeyLen]byte{}, fmt.Errorf("auth: x25519 with bridge key: %w", err)
	}
	return deriveKey(shared, random, bridgePublic)
}

// ServerKey derives the auth key on the server side from its static private
// key, its public key and the client's x25519 key share and random.
func ServerKey(bridge *ecdh.PrivateKey, bridgePublic, clientShare, random []byte) ([KeyLen]byte, error) {
	shared, err := x25519(bridge, clientShare)
	if err != nil {
		// A low-order share yields an all-zero secret, which ECDH refuses.
		return [KeyLen]byte{}, fmt.Errorf("auth: x25519 with client share: %w", err)
	}
	return deriveKey(shared, random, bridgePublic)
}

// x25519 is X25519(priv, peer), refusing an all-zero result.
func x25519(priv *ecdh.PrivateKey, peer []byte) ([]byte, error) {
	if priv == nil || priv.Curve() != ecdh.X25519() {
		return nil, errors.New("not an X25519 private key")
	}
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, err
	}
	return priv.ECDH(pub)
}

func deriveKey(shared, random, bridgePublic []byte) ([KeyLen]byte, error) {
	var key [KeyLen]byte
	if len(random) != RandomLen {
		return key, fmt.Errorf("auth: random is %d bytes, want %d", len(random), RandomLen)
	}
	info := make([]byte, 0, len(keyInfo)+len(bridgePublic))
	info = append(append(info, keyInfo...), bridgePublic...)
	if _, err := io.ReadFull(hkdf.New(sha256.New, shared, random, info), key[:]); err != nil {
		return key, fmt.Errorf("auth: hkdf: %w", err)
	}
	return key, nil
}

// Seal returns the tag for p. aad is the whole ClientHello handshake message
// with its session_id bytes zeroed.
func Seal(key [KeyLen]byte, random, aad []byte, p Payload) ([TagLen]byte, error) {
	var tag [TagLen]byte
	if len(random) != RandomLen {
		return tag, fmt.Errorf("auth: random is %d bytes, want %d", len(random), RandomLen)
	}
	var plain [PlaintextLen]byte
	plain[0] = p.Version
	binary.BigEndian.PutUint32(plain[4:8], p.Time)
	copy(plain[8:], p.ShortID[:])
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return tag, err
	}
	aead.Seal(tag[:0], random[nonceOffset:], plain[:], aad)
	return tag, nil
}

// Open verifies tag and returns what it carries. It does not judge the
// payload (version, time, short id): that is the caller's policy.
func Open(key [KeyLen]byte, random, aad, tag []byte) (Payload, error) {
	var p Payload
	if len(random) != RandomLen || len(tag) != TagLen {
		return p, ErrBadTag
	}
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return p, err
	}
	var buf [PlaintextLen]byte
	plain, err := aead.Open(buf[:0], random[nonceOffset:], tag, aad)
	if err != nil {
		return p, ErrBadTag
	}
	if plain[1]|plain[2]|plain[3] != 0 {
		// Reserved for a later version, which will say how to use them.
		return p, ErrBadTag
	}
	p.Version = plain[0]
	p.Time = binary.BigEndian.Uint32(plain[4:8])
	copy(p.ShortID[:], plain[8:])
	return p, nil
}

// ServerProof is the value the server sends as its first application data:
// HMAC-SHA256(auth key, label || exporter), where exporter is the TLS
// exporter value for ExportLabel. It binds the proof to this TLS session, so
// it cannot be replayed into another one.
func ServerProof(key [KeyLen]byte, exporter []byte) [ProofLen]byte {
	return mac(key, proofLabel, exporter)
}

// VerifyServerProof reports, in constant time, whether proof is right.
func VerifyServerProof(key [KeyLen]byte, exporter, proof []byte) bool {
	want := ServerProof(key, exporter)
	return subtle.ConstantTimeCompare(want[:], proof) == 1
}

// CertSignature is the signature field of a certificate bound to a
// handshake: HMAC-SHA256(auth key, label || tbsCertificate).
func CertSignature(key [KeyLen]byte, tbs []byte) [sha256.Size]byte {
	return mac(key, certLabel, tbs)
}

func mac(key [KeyLen]byte, label string, data []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, key[:])
	h.Write([]byte(label))
	h.Write(data)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}
