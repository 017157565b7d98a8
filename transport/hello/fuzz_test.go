package hello

import (
	"bytes"
	"errors"
	"testing"
)

// malformedSeeds are streams that fail in different places, so the fuzzer
// starts from inside each error path as well as from the real hellos.
func malformedSeeds() [][]byte {
	good := goodParts().build()
	return [][]byte{
		nil,
		[]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
		{0x16, 0x03, 0x01, 0x00, 0x00},
		{0x16, 0x03, 0x01, 0x4e, 0x20},
		appendRecord(nil, 0x16, 0x0301, append(bytes.Clone(good), 0)),
		appendRecord(nil, 0x16, 0x0301, append([]byte{2}, good[1:]...)),
		frame(good, 2),
		frameEvery(good, 7),
		appendRecord(nil, 0x16, 0x0301, withExts(ext(0x0015, nil), ext(0x0015, nil)).build()),
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts
// satisfies every promise of its documentation (see checkHello): slices
// inside Raw, SessionIDOffset pointing at SessionID, no duplicates, and a
// byte-exact re-encoding.
func FuzzParse(f *testing.F) {
	for _, c := range loadCaptures(f) {
		f.Add(c.stream) // as recorded: fails at once, but mutations may strip the framing
		f.Add(captureMsg(f, c))
	}
	f.Add(goodParts().build())
	// A resuming browser's hello: pre_shared_key last, binders at the end.
	f.Add(withExts(sniExt("example.com"), ext(0x0033, vec16(keyShareEntry(0x001d, bytes.Repeat([]byte{7}, 32)))), pskExt(120, 32)).build())
	for _, s := range malformedSeeds() {
		if len(s) > RecordHeaderLen {
			f.Add(s[RecordHeaderLen:])
		}
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, err := Parse(msg)
		if err != nil {
			if h != nil {
				t.Fatal("a hello returned with an error")
			}
			return
		}
		checkHello(t, msg, h)
	})
}

// FuzzReadClientHello checks that ReadClientHello never panics, that
// consumed is always a prefix of the input and exactly what was taken from
// the reader, that the result does not depend on how the input is
// segmented, and that a message it returns is one whole, bounded handshake
// message carried by the records it consumed.
func FuzzReadClientHello(f *testing.F) {
	for _, c := range loadCaptures(f) {
		f.Add(c.stream, uint8(0))
		f.Add(frame(captureMsg(f, c), 100), uint8(9))
	}
	for i, s := range malformedSeeds() {
		f.Add(s, uint8(i))
	}
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		r := &countingReader{r: &chunkReader{b: stream, size: int(chunk) + 1}}
		consumed, msg, err := ReadClientHello(r)
		if len(consumed) > len(stream) || !bytes.Equal(consumed, stream[:len(consumed)]) {
			t.Fatalf("consumed %x is not a prefix of the input", consumed)
		}
		if r.n != len(consumed) {
			t.Fatalf("read %d bytes, consumed reports %d", r.n, len(consumed))
		}

		// Reading the same bytes in one piece must give the same answer.
		consumed2, msg2, err2 := ReadClientHello(bytes.NewReader(stream))
		if !bytes.Equal(consumed, consumed2) || !bytes.Equal(msg, msg2) || (err == nil) != (err2 == nil) {
			t.Fatalf("segmenting changed the result: %v vs %v", err, err2)
		}

		if err != nil {
			if msg != nil {
				t.Fatal("a message returned with an error")
			}
			if errors.Is(err, ErrNotTLS) && len(stream) > 0 && stream[0] == 0x16 && len(stream) > 1 && stream[1] == 3 {
				t.Fatalf("ErrNotTLS for a stream starting like TLS: %v", err)
			}
			return
		}
		if len(msg) < handshakeHeaderLen || len(msg) > MaxHelloLen || msg[0] != 1 {
			t.Fatalf("returned a %d-byte message of type %d", len(msg), msg[0])
		}
		if n := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]); n+handshakeHeaderLen != len(msg) {
			t.Fatalf("message length field %d, message %d bytes", n, len(msg))
		}
		if !bytes.Equal(msg, deframe(t, consumed)) {
			t.Fatal("msg is not the payload of the records consumed")
		}
		if h, err := Parse(msg); err == nil {
			checkHello(t, msg, h)
		}
	})
}
