package transport

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// writeLog records the writes a session makes to its carrier: their
// lengths, and whether each was a record framed in place in the send
// queue (its bytes are the queue's own), so that the session's data went
// to TLS without a copy of ours.
type writeLog struct {
	net.Conn
	s *sessionConn

	mu      sync.Mutex
	lens    []int
	inPlace []bool
}

func (w *writeLog) Write(p []byte) (int, error) {
	// The flusher writes without the session's lock, so the queue's
	// buffer can be looked at meanwhile.
	w.s.mu.Lock()
	q := w.s.sendq.buf
	in := len(p) > 0 && len(q) > 0 &&
		uintptr(unsafe.Pointer(&p[0])) >= uintptr(unsafe.Pointer(&q[0])) &&
		uintptr(unsafe.Pointer(&p[0])) < uintptr(unsafe.Pointer(&q[0]))+uintptr(len(q))
	w.s.mu.Unlock()
	w.mu.Lock()
	w.lens = append(w.lens, len(p))
	w.inPlace = append(w.inPlace, in)
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// TestBulkRecordsFramedInPlace: in bulk, the sender writes each full TLS
// record (16 KiB of frames) from its send queue, framed in place, without
// copying the data into a write buffer of its own; every write between
// the first (a young session's, padded) and the last (the burst's tail)
// is one such record. And the bytes arrive intact, also when the peer
// asks for them again from an offset in the middle of a record: framing
// a record in place writes its headers over the bytes before its data,
// bytes that a resend sends again.
func TestBulkRecordsFramedInPlace(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	const total = 40*maxFrameBody + 1234
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	// Queued before a carrier joins: then it goes in one burst.
	hdr := []byte{2, smuxCmdPSH, 0, 0, 3, 0, 0, 0}
	if _, err := s.WriteBuffers([][]byte{hdr, data[smuxHeaderLen:]}); err != nil {
		t.Fatal(err)
	}
	copy(data, hdr)

	ours, peer := net.Pipe()
	defer peer.Close()
	log := &writeLog{Conn: ours, s: s}
	c := &carrier{seq: 1, conn: log, raw: &countingConn{Conn: ours}}
	if !s.attach(c, 0) {
		t.Fatal("session refused the carrier")
	}
	go s.readLoop(c)

	peer.SetDeadline(time.Now().Add(20 * time.Second))
	fr := &frameReader{r: peer}
	// receive reads frames until the data up to total has come, checks
	// each DATA body against what was sent at its offset, and returns
	// the writes the sender made meanwhile.
	var rpos uint64
	receive := func(what string) ([]int, []bool) {
		for rpos < total {
			typ, body, err := fr.next()
			if err != nil {
				t.Fatalf("%s: %v after %d bytes", what, err, rpos)
			}
			switch typ {
			case frameSeek:
				rpos = binary.BigEndian.Uint64(body)
			case frameData:
				if rpos+uint64(len(body)) > total || !bytes.Equal(body, data[rpos:rpos+uint64(len(body))]) {
					t.Fatalf("%s: DATA at offset %d (%d bytes) differs from what was sent", what, rpos, len(body))
				}
				rpos += uint64(len(body))
			}
		}
		log.mu.Lock()
		defer log.mu.Unlock()
		lens, in := log.lens, log.inPlace
		log.lens, log.inPlace = nil, nil
		return lens, in
	}
	check := func(what string, lens []int, in []bool, skipFirst bool) {
		first := 0
		if skipFirst {
			first = 1
		}
		if len(lens) < first+10 {
			t.Fatalf("%s: only %d writes: %v", what, len(lens), lens)
		}
		for i := first; i < len(lens)-1; i++ {
			if lens[i] != maxTLSRecord || !in[i] {
				t.Fatalf("%s: write %d of %d is %d bytes, framed in place: %v; want each a full record (%d) framed in place (lengths %v)",
					what, i, len(lens), lens[i], in[i], maxTLSRecord, lens)
			}
		}
	}
	lens, in := receive("first burst")
	check("first burst", lens, in, true)

	// Ask for the bytes again from the middle of a record.
	const from = 3*maxFrameBody + 5000
	if _, err := peer.Write(appendOffsetFrame(nil, frameResend, from)); err != nil {
		t.Fatal(err)
	}
	rpos = 0
	lens, in = receive("resend")
	check("resend", lens, in, false)
}
