package keys

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/curve25519"
)

// RFC 7748 §6.1: Alice's key pair.
const (
	alicePrivateHex = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
	alicePublicHex  = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
	alicePublicText = "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"
)

func fromHex(t *testing.T, s string) [32]byte {
	t.Helper()
	var k [32]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad test vector %q", s)
	}
	copy(k[:], b)
	return k
}

// TestRFC7748Vector proves Public computes X25519(k, 9) as the RFC's
// known-answer test says, even for an unclamped private key.
func TestRFC7748Vector(t *testing.T) {
	priv := PrivateKey(fromHex(t, alicePrivateHex))
	want := PublicKey(fromHex(t, alicePublicHex))
	if got := priv.Public(); got != want {
		t.Fatalf("Public() = %x, want %x", got, want)
	}
	if got := want.String(); got != alicePublicText {
		t.Fatalf("String() = %q, want %q", got, alicePublicText)
	}
}

// TestGenerateKeyDeterministic proves GenerateKey uses exactly the bytes of
// the reader it is given (clamped), and Public agrees with X25519.
func TestGenerateKeyDeterministic(t *testing.T) {
	seed := bytes.Repeat([]byte{0xa5}, 32)
	k1, err := GenerateKey(bytes.NewReader(seed))
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := GenerateKey(bytes.NewReader(seed))
	if k1 != k2 {
		t.Fatal("same reader bytes gave different keys")
	}
	want := PrivateKey(bytes.Repeat([]byte{0xa5}, 32))
	want[0] &= 248
	want[31] = want[31]&127 | 64
	if k1 != want {
		t.Fatalf("key = %x, want the clamped seed %x", k1[:], want[:])
	}
	pub, err := curve25519.X25519(k1[:], curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	if p := k1.Public(); !bytes.Equal(p[:], pub) {
		t.Fatalf("Public() = %x, X25519 gives %x", p, pub)
	}
}

// TestGenerateKeyShortReader proves a failing random source is an error,
// not a weak key.
func TestGenerateKeyShortReader(t *testing.T) {
	if _, err := GenerateKey(bytes.NewReader(make([]byte, 31))); err == nil {
		t.Fatal("GenerateKey with 31 random bytes succeeded")
	}
	if _, err := NewShortID(bytes.NewReader(make([]byte, 7))); err == nil {
		t.Fatal("NewShortID with 7 random bytes succeeded")
	}
}

// TestGeneratedKeysParse proves every key GenerateKey makes (nil reader:
// crypto/rand) passes ParsePublicKey's checks and round-trips as text.
func TestGeneratedKeysParse(t *testing.T) {
	for range 200 {
		priv, err := GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		pub := priv.Public()
		got, err := ParsePublicKey(pub.String())
		if err != nil || got != pub {
			t.Fatalf("ParsePublicKey(%q) = %x, %v", pub.String(), got, err)
		}
		gotPriv, err := ParsePrivateKey(priv.Encode())
		if err != nil || gotPriv != priv {
			t.Fatalf("ParsePrivateKey(Encode()) = %v", err)
		}
	}
}

// TestParsePublicKeyErrors proves each way a key's text can be wrong is
// refused with an error that starts with "key: " and says what is wrong.
func TestParsePublicKeyErrors(t *testing.T) {
	b64 := func(h string) string {
		k := fromHex(t, h)
		return keyEncoding.EncodeToString(k[:])
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "missing"},
		{"padding", alicePublicText + "=", "padding"},
		{"std base64 plus", "+" + alicePublicText[1:], "standard base64"},
		{"std base64 slash", alicePublicText[:10] + "/" + alicePublicText[11:], "standard base64"},
		{"short", alicePublicText[:42], "42 characters, not 43"},
		{"long", alicePublicText + "A", "44 characters, not 43"},
		{"bad character", alicePublicText[:10] + "!" + alicePublicText[11:], "outside base64url"},
		{"space", alicePublicText[:10] + " " + alicePublicText[11:], "outside base64url"},
		// 'p' and 'o' differ only in the spare low bits of the last character.
		{"non-canonical last char", alicePublicText[:42] + "p", "last character"},
		{"all zero", strings.Repeat("A", 43), "all zeros"},
		{"one (order 1)", b64("0100000000000000000000000000000000000000000000000000000000000000"), "low-order"},
		{"p-1 (order 2)", b64("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "low-order"},
		{"order 8 point", b64("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "low-order"},
		{"other order 8 point", b64("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "low-order"},
		{"p (zero, non-canonical)", b64("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "below 2^255-19"},
		{"p+1 (non-canonical)", b64("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "below 2^255-19"},
		{"top bit set", b64("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4eea"), "top bit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParsePublicKey(tc.in)
			if err == nil {
				t.Fatalf("ParsePublicKey(%q) = %x, want an error", tc.in, k)
			}
			if !strings.HasPrefix(err.Error(), "key: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q: want prefix \"key: \" and %q", err, tc.want)
			}
		})
	}
}

// TestLowOrderPointsAreExactlyTheZeroOutputs proves the list of low-order
// points refuses exactly the keys that the scalar multiplication it
// replaced refused: those X25519 sends to zero under a clamped scalar that
// is a multiple of 8 but of neither prime subgroup's order (2^254 + 8).
// It checks the listed points, every small value and every value just
// below p, values next to each listed point, and random keys and strings.
func TestLowOrderPointsAreExactlyTheZeroOutputs(t *testing.T) {
	scalar := [KeySize]byte{8}
	scalar[31] = 0x40
	zeroOutput := func(k PublicKey) bool {
		_, err := curve25519.X25519(scalar[:], k[:])
		return err != nil
	}
	listed := func(k PublicKey) bool {
		err := checkPublic(k)
		return err != nil && strings.Contains(err.Error(), "low-order")
	}
	var cases []PublicKey
	for _, low := range lowOrderPoints {
		if !zeroOutput(low) {
			t.Errorf("%x is listed but X25519 does not send it to zero", low[:])
		}
		for d := -3; d <= 3; d++ {
			k := low
			k[0] += byte(d)
			cases = append(cases, k)
		}
	}
	for i := range 4096 {
		var small PublicKey
		small[0], small[1] = byte(i), byte(i>>8)
		below := PublicKey{0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
			0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}
		// p-1-i, little-endian: subtract from p's low bytes.
		v := uint16(below[0]) | uint16(below[1])<<8 - uint16(i) - 1
		below[0], below[1] = byte(v), byte(v>>8)
		cases = append(cases, small, below)
	}
	for range 2000 {
		var r PublicKey
		if _, err := rand.Read(r[:]); err != nil {
			t.Fatal(err)
		}
		r[31] &= 0x7f
		cases = append(cases, r)
		k, err := GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, k.Public())
	}
	for _, k := range cases {
		if k[31] == 0x7f && k[0] >= 0xed && bytes.Count(k[1:31], []byte{0xff}) == 30 {
			continue // at or above p: refused as non-canonical first
		}
		if k == (PublicKey{}) {
			continue // refused as all zeros first
		}
		if got, want := listed(k), zeroOutput(k); got != want {
			t.Errorf("key %x: refused as low-order %v, X25519 sends it to zero %v", k[:], got, want)
		}
	}
}

// TestQuoteTruncates proves a huge paste does not make a huge error, and
// the cut never splits a UTF-8 character.
func TestQuoteTruncates(t *testing.T) {
	_, err := ParsePublicKey(strings.Repeat("é", 1000))
	if err == nil || len(err.Error()) > 300 {
		t.Fatalf("error for a 2000-byte key is %d bytes: %v", len(err.Error()), err)
	}
	if strings.Contains(err.Error(), `\x`) {
		t.Fatalf("error shows a split character: %v", err)
	}
}

// TestParsePrivateKey proves the state file's key text round-trips and
// that damage to it (including an all-zero key) is refused.
func TestParsePrivateKey(t *testing.T) {
	priv := PrivateKey(fromHex(t, alicePrivateHex))
	got, err := ParsePrivateKey(priv.Encode())
	if err != nil || got != priv {
		t.Fatalf("round trip: %x, %v", got, err)
	}
	for _, in := range []string{"", strings.Repeat("A", 43), priv.Encode()[:40], priv.Encode() + "="} {
		if _, err := ParsePrivateKey(in); err == nil || !strings.HasPrefix(err.Error(), "private key: ") {
			t.Errorf("ParsePrivateKey(%q) error = %v, want one starting \"private key: \"", in, err)
		}
	}
}

// TestPrivateKeyNotPrinted proves fmt does not reveal a private key.
func TestPrivateKeyNotPrinted(t *testing.T) {
	priv := PrivateKey(fromHex(t, alicePrivateHex))
	st := State{PrivateKey: priv}
	for _, s := range []string{
		priv.String(),
		fmt.Sprintf("%v %s %x %+v %#v", priv, priv, priv, st, st),
	} {
		if strings.Contains(s, priv.Encode()) || strings.Contains(s, alicePrivateHex) || strings.Contains(s, "119 7 109") {
			t.Fatalf("private key printed: %s", s)
		}
	}
}

// TestShortID proves the short id's text form: 16 lowercase hex digits,
// upper case accepted, "" for and from the zero value.
func TestShortID(t *testing.T) {
	id, err := NewShortID(bytes.NewReader([]byte{1, 2, 3, 4, 5, 6, 7, 0xab}))
	if err != nil {
		t.Fatal(err)
	}
	if got := id.String(); got != "01020304050607ab" {
		t.Fatalf("String() = %q", got)
	}
	for _, in := range []string{"01020304050607ab", "01020304050607AB"} {
		got, err := ParseShortID(in)
		if err != nil || got != id {
			t.Fatalf("ParseShortID(%q) = %v, %v", in, got, err)
		}
	}
	zero, err := ParseShortID("")
	if err != nil || !zero.IsZero() || zero.String() != "" {
		t.Fatalf(`ParseShortID("") = %v, %v`, zero, err)
	}
	if id.IsZero() {
		t.Fatal("non-zero id IsZero")
	}
}

// TestNewShortIDRefusesZero proves a random source that gives zeros cannot
// produce the id that means "none".
func TestNewShortIDRefusesZero(t *testing.T) {
	if _, err := NewShortID(bytes.NewReader(make([]byte, 8))); err == nil {
		t.Fatal("NewShortID returned the zero id")
	}
}

// TestParseShortIDErrors proves bad ids are refused with errors starting
// "id: " that say what is wrong.
func TestParseShortIDErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0123456789abcde", "15 characters, not 16"},
		{"0123456789abcdef0", "17 characters"},
		{"0123456789abcdeg", "hex digits"},
		{"0123456789abcd f", "hex digits"},
		{"ｆ123456789abcd", "hex digits"}, // 16 bytes, but not ASCII
	} {
		_, err := ParseShortID(tc.in)
		if err == nil || !strings.HasPrefix(err.Error(), "id: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseShortID(%q) error = %v, want \"id: \" and %q", tc.in, err, tc.want)
		}
	}
}
