package auth

import (
	"bytes"
	"crypto/ecdh"
	"encoding/hex"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// fixed returns n bytes counting up from start, for reproducible vectors.
func fixed(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

type vector struct {
	clientPriv, serverPriv, random, aad []byte
	payload                             Payload
}

func testVector(t *testing.T) (v vector, serverPub, clientPub []byte) {
	t.Helper()
	v = vector{
		clientPriv: fixed(32, 0x01),
		serverPriv: fixed(32, 0x40),
		random:     fixed(32, 0x80),
		aad:        []byte("client hello with zeroed session id"),
		payload:    Payload{Version: Version, Time: 1764000000, ShortID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}},
	}
	var err error
	serverPub, err = curve25519.X25519(v.serverPriv, curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	clientPub, err = curve25519.X25519(v.clientPriv, curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	return v, serverPub, clientPub
}

// TestKnownAnswer pins the derivation and sealing to fixed bytes, so an
// accidental change of label, salt, nonce or layout (which would break every
// deployed client) fails here. PROTOCOL.md repeats these vectors.
func TestKnownAnswer(t *testing.T) {
	v, serverPub, _ := testVector(t)
	key, err := ClientKey(x25519Key(t, v.clientPriv), serverPub, v.random)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := Seal(key, v.random, v.aad, v.payload)
	if err != nil {
		t.Fatal(err)
	}
	proof := ServerProof(key, fixed(32, 0xc0))
	const (
		wantKey   = "0b993263aa7d35418669f6cc35bd7b16d52a2de967068a43e9be033b9d931567"
		wantTag   = "13e897cc06d1dd938f205285989fc243c869ee2167bf12463fe237cc8d7b41a5"
		wantProof = "f8a611f78c645149c6c270b035973a2efb4e2ba784c81289407fe0106adb455a"
	)
	if got := hex.EncodeToString(key[:]); got != wantKey {
		t.Errorf("auth key = %s, want %s", got, wantKey)
	}
	if got := hex.EncodeToString(tag[:]); got != wantTag {
		t.Errorf("tag = %s, want %s", got, wantTag)
	}
	if got := hex.EncodeToString(proof[:]); got != wantProof {
		t.Errorf("proof = %s, want %s", got, wantProof)
	}
}

// TestBothSidesAgree proves the client and the server derive the same key
// from opposite halves of the X25519 exchange, and the server opens what the
// client sealed.
func TestBothSidesAgree(t *testing.T) {
	v, serverPub, clientPub := testVector(t)
	ck, err := ClientKey(x25519Key(t, v.clientPriv), serverPub, v.random)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := ServerKey(x25519Key(t, v.serverPriv), serverPub, clientPub, v.random)
	if err != nil {
		t.Fatal(err)
	}
	if ck != sk {
		t.Fatal("client and server keys differ")
	}
	tag, err := Seal(ck, v.random, v.aad, v.payload)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(sk, v.random, v.aad, tag[:])
	if err != nil {
		t.Fatal(err)
	}
	if got != v.payload {
		t.Fatalf("opened %+v, want %+v", got, v.payload)
	}
}

// TestTamperingFails proves that any change to the tag, the hello it is
// bound to, the random, or the key makes Open fail.
func TestTamperingFails(t *testing.T) {
	v, serverPub, clientPub := testVector(t)
	key, _ := ClientKey(x25519Key(t, v.clientPriv), serverPub, v.random)
	tag, _ := Seal(key, v.random, v.aad, v.payload)
	for i := range tag {
		bad := tag
		bad[i] ^= 0x01
		if _, err := Open(key, v.random, v.aad, bad[:]); err != ErrBadTag {
			t.Fatalf("flipped tag byte %d: err = %v, want ErrBadTag", i, err)
		}
	}
	for i := range v.aad {
		aad := bytes.Clone(v.aad)
		aad[i] ^= 0x80
		if _, err := Open(key, v.random, aad, tag[:]); err != ErrBadTag {
			t.Fatalf("flipped aad byte %d: err = %v", i, err)
		}
	}
	// Another random means another key and nonce on the server side.
	random := bytes.Clone(v.random)
	random[0] ^= 1
	sk, _ := ServerKey(x25519Key(t, v.serverPriv), serverPub, clientPub, random)
	if _, err := Open(sk, random, v.aad, tag[:]); err != ErrBadTag {
		t.Fatalf("changed random: err = %v", err)
	}
	// A client that has the wrong bridge key.
	otherPub, _ := curve25519.X25519(fixed(32, 0x55), curve25519.Basepoint)
	wrong, _ := ClientKey(x25519Key(t, v.clientPriv), otherPub, v.random)
	wrongTag, _ := Seal(wrong, v.random, v.aad, v.payload)
	goodKey, _ := ServerKey(x25519Key(t, v.serverPriv), serverPub, clientPub, v.random)
	if _, err := Open(goodKey, v.random, v.aad, wrongTag[:]); err != ErrBadTag {
		t.Fatalf("wrong bridge key: err = %v", err)
	}
	if _, err := Open(key, v.random[:31], v.aad, tag[:]); err != ErrBadTag {
		t.Fatal("short random accepted")
	}
	if _, err := Open(key, v.random, v.aad, tag[:31]); err != ErrBadTag {
		t.Fatal("short tag accepted")
	}
}

// TestLowOrderShareRefused proves a client share that forces an all-zero
// secret (which anyone could compute) is refused instead of yielding a key.
func TestLowOrderShareRefused(t *testing.T) {
	v, serverPub, _ := testVector(t)
	if _, err := ServerKey(x25519Key(t, v.serverPriv), serverPub, make([]byte, 32), v.random); err == nil {
		t.Fatal("all-zero share accepted")
	}
}

func TestServerProof(t *testing.T) {
	v, serverPub, _ := testVector(t)
	key, _ := ClientKey(x25519Key(t, v.clientPriv), serverPub, v.random)
	exp := fixed(32, 9)
	proof := ServerProof(key, exp)
	if !VerifyServerProof(key, exp, proof[:]) {
		t.Fatal("valid proof refused")
	}
	other := bytes.Clone(exp)
	other[3]++
	if VerifyServerProof(key, other, proof[:]) {
		t.Fatal("proof accepted for another TLS session")
	}
	if VerifyServerProof(key, exp, proof[:31]) {
		t.Fatal("truncated proof accepted")
	}
	if c := CertSignature(key, exp); bytes.Equal(c[:], proof[:]) {
		t.Fatal("certificate signature and proof share a domain")
	}
}

// TestReservedBytesMustBeZero proves a tag whose reserved bytes are not
// zero does not open, so a later version can give them a meaning without
// old bridges misreading them.
func TestReservedBytesMustBeZero(t *testing.T) {
	v, serverPub, _ := testVector(t)
	key, _ := ClientKey(x25519Key(t, v.clientPriv), serverPub, v.random)
	plain := make([]byte, PlaintextLen)
	plain[0], plain[2] = Version, 1
	aead, _ := chacha20poly1305.New(key[:])
	tag := aead.Seal(nil, v.random[nonceOffset:], plain, v.aad)
	if _, err := Open(key, v.random, v.aad, tag); err != ErrBadTag {
		t.Fatalf("non-zero reserved bytes: err = %v, want ErrBadTag", err)
	}
}

// x25519Key is b as an X25519 private key.
func x25519Key(t testing.TB, b []byte) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().NewPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
