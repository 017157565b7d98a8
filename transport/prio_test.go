package transport

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"
)

// TestNewStreamGoesAheadOfQueuedBulk: while a download has bytes queued
// that no carrier took yet, a new stream's first frames, and any frame of
// a stream with nothing of its own waiting at the back, go in front of
// them, in the order they came, right behind the frame a carrier last took
// bytes of (a carrier's write ends inside one here); the download's frames
// keep their order, and a frame of the download's own stream stays behind
// them. Every byte arrives once, unchanged.
func TestNewStreamGoesAheadOfQueuedBulk(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	c := &carrier{raw: &countingConn{}}
	psh := func(sid uint32, n int, mark byte) {
		t.Helper()
		hdr := make([]byte, smuxHeaderLen)
		hdr[0], hdr[1] = smuxVersion, smuxCmdPSH
		binary.LittleEndian.PutUint16(hdr[2:], uint16(n))
		binary.LittleEndian.PutUint32(hdr[4:], sid)
		if _, err := s.WriteBuffers([][]byte{hdr, bytes.Repeat([]byte{mark}, n)}); err != nil {
			t.Fatal(err)
		}
	}
	var sent []byte
	flush := func(all bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for s.next < s.written {
			fr := &frameReader{r: bytes.NewReader(s.compose(nil, c))}
			for {
				typ, body, err := fr.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if typ == frameData {
					sent = append(sent, body...)
				}
			}
			if !all {
				return
			}
		}
	}

	// The download: stream 1, four frames of 32 KiB (its first is young).
	for k := range 4 {
		psh(1, 32<<10, byte(k))
	}
	flush(false) // one carrier write: it ends inside the download's second frame
	s.mu.Lock()
	if s.sentMax <= 32<<10+smuxHeaderLen || s.sentMax >= 2*(32<<10+smuxHeaderLen) {
		t.Fatalf("the first write took %d bytes: the test wants it to end inside the second frame", s.sentMax)
	}
	s.mu.Unlock()
	psh(3, 100, 'a') // a new stream's answer
	psh(1, 32<<10, 4)
	psh(5, 200, 'b')
	s.mu.Lock()
	s.queueUPD(1, 1000, 1<<20) // the download's stream has bytes waiting: behind them
	s.queueUPD(9, 1000, 1<<20) // a stream with nothing queued: in front
	s.mu.Unlock()
	flush(true)

	var got []string
	for len(sent) > 0 {
		if len(sent) < smuxHeaderLen {
			t.Fatalf("%d bytes left over after the last whole frame", len(sent))
		}
		cmd, n, sid := sent[1], int(binary.LittleEndian.Uint16(sent[2:])), binary.LittleEndian.Uint32(sent[4:])
		if cmd == smuxCmdUPD {
			n = 8
		}
		body := sent[smuxHeaderLen : smuxHeaderLen+n]
		desc := fmt.Sprintf("UPD %d", sid)
		if cmd == smuxCmdPSH {
			desc = fmt.Sprintf("PSH %d:%d×%d", sid, n, body[0])
			if bytes.Count(body, body[:1]) != n {
				t.Fatalf("%s: its bytes were mixed with others", desc)
			}
		}
		got = append(got, desc)
		sent = sent[smuxHeaderLen+n:]
	}
	want := []string{
		"PSH 1:32768×0", "PSH 1:32768×1", // the second was partly sent
		"PSH 3:100×97", "PSH 5:200×98", "UPD 9", // in front, in order
		"PSH 1:32768×2", "PSH 1:32768×3", "PSH 1:32768×4", "UPD 1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("frames went out as\n%q\nwant\n%q", got, want)
	}
}
