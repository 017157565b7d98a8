package keys

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseState proves parseState never panics on a state file's bytes;
// that what it refuses gets a nil State and an error that, when it is
// about the private key, does not show the key's text (it goes to a log);
// and that what it accepts is an identity this code could have written:
// a non-zero key, non-zero short ids, the file's own private_key and
// public_key spellings, and a marshal that parses back to the same State
// and is a fixed point.
func FuzzParseState(f *testing.F) {
	var alice PrivateKey
	copy(alice[:], must32(f, alicePrivateHex))
	other, err := GenerateKey(bytes.NewReader(bytes.Repeat([]byte{1}, 32)))
	if err != nil {
		f.Fatal(err)
	}
	good := (&State{PrivateKey: alice, ShortIDs: []ShortID{{1, 2, 3, 4, 5, 6, 7, 8}}}).marshal()
	f.Add(good)
	f.Add((&State{PrivateKey: other, ShortIDs: []ShortID{{1}, {0xff, 0xfe, 0, 0, 0, 0, 0, 9}}}).marshal())
	f.Add((&State{PrivateKey: other}).marshal()) // "short_ids": []
	f.Add(good[:len(good)/2])
	f.Add(append(bytes.Clone(good), "{}"...))
	f.Add(bytes.Replace(good, []byte(`"version"`), []byte(`"extra": 1, "version"`), 1))
	f.Add(bytes.Replace(good, []byte(alice.Encode()), []byte(strings.Repeat("A", 43)), 1))
	f.Add(bytes.Replace(good, []byte(alice.Public().String()), []byte(other.Public().String()), 1))
	f.Add(bytes.Replace(good, []byte("0102030405060708"), []byte("0000000000000000"), 1))
	f.Add([]byte(`{"version": 2, "private_key": "x"}`))
	f.Add([]byte(`{"version":1,"private_key":"","public_key":"","short_ids":null}`))
	f.Add([]byte(`{"version": 1e400}`))
	f.Add([]byte(`[1, 2, {"a": "\ud800"}]`))
	f.Add([]byte("\x00\x01garbage"))
	f.Add([]byte(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseState(data)
		if err != nil {
			if st != nil {
				t.Fatal("a State returned with an error")
			}
			if err.Error() == "" {
				t.Fatal("an empty error")
			}
			var newer *newerVersionError
			if errors.As(err, &newer) && newer.version <= stateVersion {
				t.Fatalf("version %d called newer than %d", newer.version, stateVersion)
			}
			// Key-like text is never shown by ParsePrivateKey's errors
			// (their own words have no run of 16 base64url characters).
			var file stateFile
			if json.Unmarshal(data, &file) == nil && strings.HasPrefix(err.Error(), "private key: ") &&
				len(file.PrivateKey) >= 16 && strings.Trim(file.PrivateKey, base64URLChars) == "" &&
				strings.Contains(err.Error(), file.PrivateKey) {
				t.Fatalf("the error shows the private key: %v", err)
			}
			return
		}
		if st == nil {
			t.Fatal("nil State without an error")
		}
		if st.PrivateKey == (PrivateKey{}) {
			t.Fatal("accepted the all-zero private key")
		}
		for _, id := range st.ShortIDs {
			if id.IsZero() {
				t.Fatal("accepted the zero short id")
			}
		}
		// What was accepted is exactly what the file says, as written.
		var file stateFile
		if err := json.Unmarshal(data, &file); err != nil {
			t.Fatalf("accepted what encoding/json does not: %v", err)
		}
		if file.PrivateKey != st.PrivateKey.Encode() || file.PublicKey != st.PrivateKey.Public().String() ||
			file.ShortIDs == nil || len(*file.ShortIDs) != len(st.ShortIDs) {
			t.Fatalf("accepted a state other than the file's: %q", data)
		}
		// Written back, it reads back the same, and writes the same.
		out := st.marshal()
		st2, err := parseState(out)
		if err != nil {
			t.Fatalf("marshal of an accepted state does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(st, st2) {
			t.Fatalf("round trip: %v, want %v", st2.ShortIDs, st.ShortIDs)
		}
		if out2 := st2.marshal(); !bytes.Equal(out, out2) {
			t.Fatalf("marshal is not a fixed point:\n%s\n%s", out, out2)
		}
	})
}

// base64URLChars is the alphabet of a key's text.
const base64URLChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// must32 decodes a 32-byte test vector for a fuzz target's seeds.
func must32(f *testing.F, s string) []byte {
	f.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		f.Fatalf("bad test vector %q", s)
	}
	return b
}
