package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
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

// TestTailPadding checks the arithmetic of tail padding for every length
// a write's last record can have: the PAD frame fits, brings the last
// record to a length in the bucket above what it carries (so padding
// lands in the record it hides), costs at most that bucket, and never
// spills a record unless the record had no room for a PAD header. And a
// bulk write cut by wholeRecords ends exactly on a record boundary.
func TestTailPadding(t *testing.T) {
	data := make([]byte, 5*maxTLSRecord)
	buf := make([]byte, 0, 6*maxTLSRecord)
	if bucketEdges[0] != minBucket || bucketEdges[len(bucketEdges)-1] != maxTLSRecord {
		t.Fatalf("bucket edges %v", bucketEdges)
	}
	for n := 1; n <= 3*maxTLSRecord; n++ {
		pad := tailPad(n)
		r := n % maxTLSRecord
		switch {
		case r == 0:
			if pad != 0 {
				t.Fatalf("%d bytes end a record, padded with %d", n, pad)
			}
			continue
		case pad < frameHeaderLen:
			t.Fatalf("%d bytes: %d of padding holds no PAD header", n, pad)
		}
		last := r + pad
		if r > maxTLSRecord-frameHeaderLen {
			last -= maxTLSRecord // a record of its own
			r = 0
		}
		if last > maxTLSRecord || last <= minBucket {
			t.Fatalf("%d bytes padded with %d: a last record of %d", n, pad, last)
		}
		// The bucket above r+3: its upper edge bounds the cost.
		i := 0
		for bucketEdges[i] < r+frameHeaderLen {
			i++
		}
		hi := maxTLSRecord
		if i+1 < len(bucketEdges) {
			hi = bucketEdges[i+1]
			if last <= bucketEdges[i] {
				t.Fatalf("%d bytes: last record %d below the bucket (%d, %d]", n, last, bucketEdges[i], hi)
			}
		}
		if last > hi {
			t.Fatalf("%d bytes: last record %d above the bucket's edge %d", n, last, hi)
		}
		// The cost PROTOCOL.md states.
		if float64(last) > max(38, math.Sqrt2*float64(r+frameHeaderLen)) {
			t.Fatalf("%d bytes: last record %d, more than 2^(1/2) times %d", n, last, r+frameHeaderLen)
		}
		// appendPad writes exactly that much, in frames a reader takes.
		if got := len(appendPad(buf[:0], pad)); got != pad {
			t.Fatalf("appendPad(%d) wrote %d bytes", pad, got)
		}
	}
	for _, pre := range []int{0, 3, 11, 22, 100} {
		for n := 1; n <= len(data); n += 13 {
			m, fill := wholeRecords(pre, n)
			total := pre + framedLen(m) + fill
			if fill < 0 {
				if m != n || pre+framedLen(n) >= maxTLSRecord+frameHeaderLen {
					t.Fatalf("pre %d, %d bytes: not cut though they fill a record", pre, n)
				}
				continue
			}
			if m > n || m <= 0 || (fill != 0 && fill != frameHeaderLen) || total%maxTLSRecord != 0 ||
				pre+framedLen(n)-total >= maxTLSRecord {
				t.Fatalf("pre %d, %d bytes: cut to %d with %d of padding: %d bytes", pre, n, m, fill, total)
			}
			if got := len(appendPad(appendFrames(buf[:pre], data[:m], 0), fill)); got != total {
				t.Fatalf("pre %d, %d bytes cut to %d: wrote %d, want %d", pre, n, m, got, total)
			}
		}
	}
}
