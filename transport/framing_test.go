package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// dataOf reads frames until the end and returns the DATA bodies, in order,
// and every control frame's type.
func dataOf(r io.Reader) ([]byte, []byte, error) {
	fr := &frameReader{r: r}
	var data, ctl []byte
	for {
		typ, body, err := fr.next()
		if err == io.EOF {
			return data, ctl, nil
		}
		if err != nil {
			return data, ctl, err
		}
		if typ == frameData {
			data = append(data, body...)
		} else {
			ctl = append(ctl, typ)
		}
	}
}

// TestFramesRoundTrip proves DATA bodies come out of frameReader as the
// byte stream that went in, whatever the padding and control frames and
// however the reads are cut, and that truncation is an error, not a short
// stream.
func TestFramesRoundTrip(t *testing.T) {
	var wire []byte
	var want []byte
	for i, n := range []int{1, 8, 517, maxFrameBody, maxFrameBody + 1, 70000} {
		d := payload(n, uint64(i))
		want = append(want, d...)
		wire = appendFrames(wire, d, i*300)
		wire = appendOffsetFrame(wire, frameAck, uint64(i))
	}
	wire = appendDropFrame(appendEmptyFrame(wire, frameRetire), 7)
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(wire),
		"one-byte": iotest.OneByteReader(bytes.NewReader(wire)),
		"half":     iotest.HalfReader(bytes.NewReader(wire)),
	} {
		got, ctl, err := dataOf(r)
		if err != nil || !bytes.Equal(got, want) || len(ctl) != 8 {
			t.Fatalf("%s: %d bytes, %d control frames, err %v; want %d bytes", name, len(got), len(ctl), err, len(want))
		}
	}
	if _, _, err := dataOf(bytes.NewReader(wire[:len(wire)-1])); err == nil {
		t.Fatal("truncated frame stream read without error")
	}
	// Found by FuzzFrameReader's seed: a PAD frame cut short read as a
	// clean end of stream.
	if _, _, err := dataOf(bytes.NewReader([]byte{framePad, 0x3f, 0xff})); err == nil {
		t.Fatal("truncated PAD frame read as a clean end")
	}
	for _, bad := range [][]byte{
		{0x7f, 0, 1, 0},              // unknown type
		{frameAck, 0, 4, 1, 2, 3, 4}, // control frame of the wrong length
		{frameData, 0xff, 0xff},      // longer than a record
	} {
		if _, _, err := dataOf(bytes.NewReader(bad)); !errors.Is(err, errBadFrame) {
			t.Fatalf("% x: err = %v, want errBadFrame", bad, err)
		}
	}
}

// FuzzFrameReader: the frame parser never panics, never returns more bytes
// than the input holds, and what it returns is exactly the DATA bodies.
func FuzzFrameReader(f *testing.F) {
	f.Add(appendFrames(nil, []byte("hello"), 3))
	f.Add(appendFrames(nil, make([]byte, 20000), 0))
	f.Add([]byte{framePad, 0xff, 0xff})
	f.Add([]byte{frameData, 0, 5, 'a'})
	f.Add(appendOffsetFrame(nil, frameSeek, 1<<40))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, _, err := dataOf(bytes.NewReader(in))
		if len(got) > len(in) {
			t.Fatalf("read %d bytes from %d", len(got), len(in))
		}
		if err == nil {
			// Re-parse by hand: the DATA bodies, in order.
			var want []byte
			for b := in; len(b) >= 3; {
				n := int(binary.BigEndian.Uint16(b[1:]))
				if b[0] == frameData {
					want = append(want, b[3:3+n]...)
				}
				b = b[3+n:]
			}
			if !bytes.Equal(got, want) {
				t.Fatal("frameReader returned other bytes than the DATA bodies")
			}
		}
	})
}

// recordSizes forwards one connection to target and records the lengths
// of the TLS application-data records the client sends.
func recordSizes(t *testing.T, target string) (string, func() []int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var sizes []int
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(c, up)
		var hdr [5]byte
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				up.(*net.TCPConn).CloseWrite()
				return
			}
			n := int(binary.BigEndian.Uint16(hdr[3:]))
			body := make([]byte, n)
			if _, err := io.ReadFull(c, body); err != nil {
				return
			}
			if hdr[0] == 0x17 {
				mu.Lock()
				sizes = append(sizes, n)
				mu.Unlock()
			}
			up.Write(append(hdr[:], body...))
		}
	}()
	return ln.Addr().String(), func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), sizes...)
	}
}

// TestInnerSizesDoNotShow proves the point of padding: when an app sends
// the first bytes of new streams in fixed-size writes (as a TLS client
// sends its ClientHello), no outer TLS record has the size those writes
// would have without padding.
func TestInnerSizesDoNotShow(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	addr, sizes := recordSizes(t, b.addr)
	cfg := b.clientConfig()
	cfg.Address = addr
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	const inner = 517 // a browser's ClientHello
	for i := range 20 {
		st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
		if err != nil {
			t.Fatal(err)
		}
		st.Write(payload(inner, uint64(i)))
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(st, make([]byte, inner)); err != nil {
			t.Fatal(err)
		}
		st.Close()
	}
	// An unpadded record carrying one such write: TLS 1.3 adds 17 bytes
	// (content type and tag), our frame 3, smux 8.
	bare := inner + smuxHeaderLen + frameHeaderLen + 17
	got := sizes()
	distinct := map[int]bool{}
	hits := 0
	for _, n := range got {
		if n == bare {
			hits++
		}
		distinct[n] = true
	}
	// Unpadded, nearly all 20 writes would show as records of exactly
	// that size. Padded, a record of other bytes and a random pad lands
	// on it by chance about once in a thousand records.
	if hits > 2 {
		t.Fatalf("%d outer records of %d bytes show inner writes of %d: %v", hits, bare, inner, got)
	}
	if len(got) < 20 || len(distinct) < 10 {
		t.Fatalf("record sizes %v: too few, or too few different ones", got)
	}
}
