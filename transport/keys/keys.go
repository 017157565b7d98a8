// Package keys holds a Mirage bridge's identity: its static X25519 key pair,
// the short ids it hands out, their text encodings, and the state file that
// keeps them across restarts.
//
// Keys are written as unpadded base64url (RFC 4648 §5), 43 characters, so
// that they survive URLs, torrc lines and copy-paste without escaping. Short
// ids are 16 hex digits. The parsers are strict: a key that parses is one
// the bridge could really have, so a mistyped key fails here, with a message
// naming the field, instead of later as a silent authentication failure.
package keys

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// Sizes of the values in this package, in bytes.
const (
	KeySize     = 32 // X25519 private and public keys
	ShortIDSize = 8
)

// encodedKeyLen is the length of a key's text form: 32 bytes of unpadded
// base64 are 43 characters.
var encodedKeyLen = keyEncoding.EncodedLen(KeySize)

// keyEncoding is strict so that every key has exactly one text form: the
// last character carries two spare bits, and a lenient decoder would let
// four spellings of one key through. Links and bridge lines are compared as
// strings (the pt client pools connections by their arguments), so two
// spellings of one key would be two bridges.
var keyEncoding = base64.RawURLEncoding.Strict()

// PrivateKey is a bridge's static X25519 private key. Any 32 bytes are a
// valid key (X25519 clamps them); GenerateKey stores them clamped.
//
// Its String method does not reveal the key, so that printing a config or
// state by accident does not leak it; Encode gives the text form.
type PrivateKey [KeySize]byte

// PublicKey is a bridge's static X25519 public key, the KEY of its links and
// bridge lines.
type PublicKey [KeySize]byte

// ShortID is an optional 8-byte id a bridge hands out with its links, so it
// can tell (and revoke) groups of users. The zero value means "no short id".
type ShortID [ShortIDSize]byte

// orCryptoRand lets callers pass nil for the system's random source while
// tests pass a fixed reader.
func orCryptoRand(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

// GenerateKey makes a new private key from 32 bytes of rand, or of
// crypto/rand when rand is nil. The same bytes give the same key, which the
// tests rely on.
func GenerateKey(rand io.Reader) (PrivateKey, error) {
	var k PrivateKey
	if _, err := io.ReadFull(orCryptoRand(rand), k[:]); err != nil {
		return PrivateKey{}, fmt.Errorf("keys: reading random bytes for a private key: %w", err)
	}
	// Clamp as RFC 7748 §5 does when it uses a scalar. X25519 would do it
	// anyway; storing the clamped form makes the file show the key that is
	// really used.
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64
	return k, nil
}

// Public returns the public key of k: X25519(k, 9).
func (k PrivateKey) Public() PublicKey {
	pub, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// X25519 fails only when the result is all zeros, which a clamped
		// scalar times the base point never is.
		panic("keys: X25519 with the base point failed: " + err.Error())
	}
	var p PublicKey
	copy(p[:], pub)
	return p
}

// Encode returns k as 43 unpadded base64url characters, the form the state
// file keeps. It is not String so that fmt never prints a secret key.
func (k PrivateKey) Encode() string { return keyEncoding.EncodeToString(k[:]) }

// String returns a placeholder, not the key: fmt calls String for %v, %s and
// %x, and a private key in a log line or an error would let anyone who sees
// it impersonate the bridge. Use Encode for the key's text.
func (k PrivateKey) String() string { return "keys.PrivateKey(redacted)" }

// GoString hides the key from %#v for the same reason as String.
func (k PrivateKey) GoString() string { return k.String() }

// String returns k as 43 unpadded base64url characters.
func (k PublicKey) String() string { return keyEncoding.EncodeToString(k[:]) }

// ParsePublicKey parses the 43-character base64url text of a public key. It
// rejects what no bridge could have: the wrong length or alphabet, '='
// padding, spellings other than the canonical one, values of 2^255-19 or
// more, and the low-order points (the all-zero key among them), with which
// the key exchange's result would be known to everyone.
//
// Errors start with "key: " and say what to do.
func ParsePublicKey(s string) (PublicKey, error) {
	b, err := decodeKey(s, quote(s), copyAgain)
	if err != nil {
		return PublicKey{}, fmt.Errorf("key: %w", err)
	}
	var k PublicKey
	copy(k[:], b)
	if err := checkPublic(k); err != nil {
		return PublicKey{}, fmt.Errorf("key: %s %w; %s", quote(s), err, copyAgain)
	}
	return k, nil
}

// ParsePrivateKey parses the text Encode writes. It rejects the all-zero
// key, which no generator produces, so that a zeroed-out file is noticed.
//
// Errors start with "private key: ".
func ParsePrivateKey(s string) (PrivateKey, error) {
	b, err := decodeKey(s, "the text", "")
	if err != nil {
		return PrivateKey{}, fmt.Errorf("private key: %w", err)
	}
	var k PrivateKey
	copy(k[:], b)
	if k == (PrivateKey{}) {
		return PrivateKey{}, errors.New("private key: is all zeros, which is not a key any generator makes")
	}
	return k, nil
}

// copyAgain is the advice for a damaged public key: users get keys by
// copy-paste, and a fresh copy is nearly always the fix.
const copyAgain = "copy the key again from the bridge's link or bridge line"

// decodeKey turns a key's text into its 32 bytes, explaining the commonest
// ways such text gets damaged. shown is how the message names s: quoted
// for a public key, but never a private key's text, which must not end up
// in a log. again, if not empty, is appended as advice.
func decodeKey(s, shown, again string) ([]byte, error) {
	padding := ""
	if again != "" {
		padding = "; remove the '=' characters"
		again = "; " + again
	}
	switch {
	case s == "" && again == "":
		return nil, errors.New("missing")
	case s == "":
		return nil, errors.New("missing (it is the bridge's public key, 43 base64url characters)")
	case strings.Contains(s, "="):
		// Padding is the usual damage done by a generic base64 tool.
		return nil, fmt.Errorf("%s ends in '=' padding, which Mirage keys do not have%s", shown, padding)
	case strings.ContainsAny(s, "+/"):
		return nil, fmt.Errorf("%s uses standard base64 ('+' or '/'); Mirage keys are base64url, with '-' and '_' instead%s", shown, again)
	case len(s) != encodedKeyLen:
		return nil, fmt.Errorf("%s is %d characters, not %d base64url characters%s", shown, len(s), encodedKeyLen, again)
	}
	b, err := keyEncoding.DecodeString(s)
	if err != nil {
		var bad base64.CorruptInputError
		if errors.As(err, &bad) && int(bad) == encodedKeyLen-1 {
			// Strict decoding refuses a last character whose spare bits
			// are set: a typo in it, since a real key never has them.
			return nil, fmt.Errorf("%s has a wrong last character (not the canonical encoding of any key)%s", shown, again)
		}
		return nil, fmt.Errorf("%s has characters outside base64url (A-Z a-z 0-9 - _)%s", shown, again)
	}
	return b, nil
}

// lowOrderPoints are the u-coordinates of every point of small order that
// X25519 takes, written as canonical little-endian field elements: the
// points of order dividing 8 on Curve25519 and dividing 4 on its twist. X25519
// sends exactly these (and their non-canonical spellings at and above p,
// refused before the list is consulted) to zero with any clamped scalar,
// since clamping makes every scalar a multiple of 8; every other point
// gives a non-zero result. TestLowOrderPointsAreExactlyTheZeroOutputs checks
// the list against the scalar multiplication it replaces, which cost a
// fresh client 0.2 ms of its cold start (the first call pays for the code's
// page faults too). Zero, the point of order 2 (and the identity's
// encoding), is not listed: checkPublic refuses it first, as all zeros.
var lowOrderPoints = [...]PublicKey{
	{1}, // 1: order 4, on the twist
	// p-1: order 4, on the curve.
	{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
	// The two u-coordinates of the four points of order 8.
	{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
		0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
	{0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
		0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
}

// checkPublic rejects public keys whose use would be insecure or which no
// X25519 implementation outputs.
func checkPublic(k PublicKey) error {
	// Field elements are little-endian and below p = 2^255-19. A set top
	// bit or a value in [p, 2^255) is a non-canonical spelling that X25519
	// would silently reduce, but the handshake's key derivation mixes in
	// the key's bytes as written, so such a key could never authenticate.
	if k[31]&0x80 != 0 {
		return errors.New("is not an X25519 public key (its top bit is set)")
	}
	if k[31] == 0x7f && k[0] >= 0xed && bytes.Count(k[1:31], []byte{0xff}) == 30 {
		return errors.New("is not an X25519 public key (it is not below 2^255-19)")
	}
	if k == (PublicKey{}) {
		return errors.New("is all zeros, which is not a usable key")
	}
	for _, low := range lowOrderPoints {
		if k == low {
			return errors.New("is a low-order point, with which anyone could compute the shared secret")
		}
	}
	return nil
}

// NewShortID makes a random short id from rand, or crypto/rand when rand is
// nil.
func NewShortID(rand io.Reader) (ShortID, error) {
	var id ShortID
	if _, err := io.ReadFull(orCryptoRand(rand), id[:]); err != nil {
		return ShortID{}, fmt.Errorf("keys: reading random bytes for a short id: %w", err)
	}
	if id.IsZero() {
		// All zeros means "no short id"; from a real random source it
		// happens with probability 2^-64, so the source is broken.
		return ShortID{}, errors.New("keys: the random source gave an all-zero short id")
	}
	return id, nil
}

// IsZero reports whether id is the zero value, meaning "no short id".
func (id ShortID) IsZero() bool { return id == ShortID{} }

// String returns id as 16 lowercase hex digits, or "" for the zero value so
// that links and bridge lines simply leave it out.
func (id ShortID) String() string {
	if id.IsZero() {
		return ""
	}
	return hex.EncodeToString(id[:])
}

// ParseShortID parses 16 hex digits, of either case. The empty string is the
// zero value, "no short id", and not an error.
//
// Errors start with "id: ".
func ParseShortID(s string) (ShortID, error) {
	var id ShortID
	if s == "" {
		return id, nil
	}
	if len(s) != hex.EncodedLen(ShortIDSize) {
		return ShortID{}, fmt.Errorf("id: %s is %d characters, not %d hex digits; copy the id again, or leave it out if the bridge gave none",
			quote(s), len(s), hex.EncodedLen(ShortIDSize))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return ShortID{}, fmt.Errorf("id: %s has characters other than hex digits (0-9 a-f); copy the id again", quote(s))
	}
	return id, nil
}

// quote quotes user input for an error message, cut short so that a huge
// paste does not become a huge message.
func quote(s string) string {
	const limit = 64
	if len(s) > limit {
		// Cut on a rune boundary so %q does not show a broken rune.
		cut := limit
		for cut > 0 && !startsRune(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q…", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}

// startsRune reports whether b can begin a UTF-8 sequence.
func startsRune(b byte) bool { return b&0xc0 != 0x80 }
