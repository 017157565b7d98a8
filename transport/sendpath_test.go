package transport

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// TestBulkDataFillsRecords: while more than a frame's worth of bytes is
// queued, the sender sends only full DATA frames (each one TLS record
// of the largest size), whatever the size of smux's writes; only the last
// bytes of a burst go in a shorter one. A short frame at the end of every
// write would be a record (and a syscall) more for every 32 KiB, and a
// rhythm of sizes an observer could see.
func TestBulkDataFillsRecords(t *testing.T) {
	s := newSessionConn(true, time.Minute, testLogger(t))
	defer s.Close()
	c := &carrier{raw: &countingConn{}} // no budget: compose reads nothing else
	hdr := make([]byte, smuxHeaderLen)
	hdr[0], hdr[1] = 2, smuxCmdPSH
	binary.LittleEndian.PutUint16(hdr[2:], uint16(maxFrameSize&0xffff))
	const writes = 5
	for range writes {
		if _, err := s.WriteBuffers([][]byte{hdr, bytes.Repeat([]byte{7}, maxFrameSize)}); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	for {
		s.mu.Lock()
		s.padDue = false
		if s.next >= s.written {
			s.mu.Unlock()
			break
		}
		out := s.compose(nil, c)
		s.mu.Unlock()
		fr := &frameReader{r: bytes.NewReader(out)}
		for {
			typ, body, err := fr.next()
			if err != nil {
				break
			}
			if typ == frameData {
				sizes = append(sizes, len(body))
			}
		}
	}
	total := 0
	for i, n := range sizes {
		total += n
		if n != maxFrameBody && i != len(sizes)-1 {
			t.Fatalf("DATA frame %d of %d holds %d bytes, not %d (all frames: %v)", i, len(sizes), n, maxFrameBody, sizes)
		}
	}
	if want := writes * (smuxHeaderLen + maxFrameSize); total != want {
		t.Fatalf("sent %d bytes, want %d", total, want)
	}
}
