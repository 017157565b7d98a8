package transport

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
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

// TestPlacementKeepsEachStreamsOrder: whatever streams queue (data frames
// of any length, UPDs, FINs), wherever the carriers' writes end (inside a
// frame or not) and whatever the peer acknowledges meanwhile, every frame
// goes out whole and once, and each stream's frames go out in the order
// they were queued: the placement only moves frames of different streams
// past one another.
func TestPlacementKeepsEachStreamsOrder(t *testing.T) {
	var inserted uint64
	defer func() {
		if inserted == 0 && !t.Failed() {
			t.Error("no frame went in front of others: the test proved nothing")
		}
	}()
	for seed := range uint64(20) {
		s := newSessionConn(false, time.Minute, testLogger(t))
		c := &carrier{raw: &countingConn{}}
		rng := rand.New(rand.NewPCG(seed, 7))
		type frame struct {
			sid  uint32
			cmd  byte
			seq  int
			mark byte
			n    int
		}
		var queued []frame
		seqs := map[uint32]int{}
		finished := map[uint32]bool{}
		mark := byte(0)
		var sent []byte
		flushOne := func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.next >= s.written {
				return
			}
			s.writeChunk = 1 + rng.IntN(96<<10)
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
			if rng.IntN(3) == 0 {
				if err := s.ackedTo(s.acked + uint64(rng.IntN(int(s.next-s.acked)+1))); err != nil {
					t.Fatal(err)
				}
			}
		}
		for range 400 {
			sid := uint32(1 + 2*rng.IntN(6))
			switch r := rng.IntN(10); {
			case r < 6 && !finished[sid]:
				n := 1 + rng.IntN(maxFrameSize)
				if rng.IntN(2) == 0 {
					n = 1 + rng.IntN(2000)
				}
				mark++
				hdr := make([]byte, smuxHeaderLen)
				hdr[0], hdr[1] = smuxVersion, smuxCmdPSH
				binary.LittleEndian.PutUint16(hdr[2:], uint16(n))
				binary.LittleEndian.PutUint32(hdr[4:], sid)
				if _, err := s.WriteBuffers([][]byte{hdr, bytes.Repeat([]byte{mark}, n)}); err != nil {
					t.Fatal(err)
				}
				queued = append(queued, frame{sid, smuxCmdPSH, seqs[sid], mark, n})
				seqs[sid]++
			case r < 7 && !finished[sid]:
				hdr := make([]byte, smuxHeaderLen)
				hdr[0], hdr[1] = smuxVersion, smuxCmdFIN
				binary.LittleEndian.PutUint32(hdr[4:], sid)
				if _, err := s.WriteBuffers([][]byte{hdr}); err != nil {
					t.Fatal(err)
				}
				queued = append(queued, frame{sid, smuxCmdFIN, seqs[sid], 0, 0})
				seqs[sid]++
				finished[sid] = true
			case r < 8:
				s.mu.Lock()
				s.queueUPD(sid, uint32(rng.IntN(1<<20)), 1<<20)
				s.mu.Unlock()
				queued = append(queued, frame{sid, smuxCmdUPD, -1, 0, 8})
			default:
				flushOne()
			}
		}
		for {
			s.mu.Lock()
			done := s.next >= s.written
			s.mu.Unlock()
			if done {
				break
			}
			flushOne()
		}
		s.mu.Lock()
		inserted += s.inserted
		s.mu.Unlock()
		s.Close()

		next := map[uint32]int{}
		count := 0
		for len(sent) > 0 {
			if len(sent) < smuxHeaderLen {
				t.Fatalf("seed %d: %d bytes left over after the last whole frame", seed, len(sent))
			}
			cmd, n, sid := sent[1], int(binary.LittleEndian.Uint16(sent[2:])), binary.LittleEndian.Uint32(sent[4:])
			if len(sent) < smuxHeaderLen+n {
				t.Fatalf("seed %d: a frame of stream %d says %d bytes, %d are left", seed, sid, n, len(sent)-smuxHeaderLen)
			}
			body := sent[smuxHeaderLen : smuxHeaderLen+n]
			sent = sent[smuxHeaderLen+n:]
			count++
			if cmd == smuxCmdUPD {
				continue
			}
			want := next[sid]
			var f *frame
			for i := range queued {
				if q := &queued[i]; q.sid == sid && q.seq == want {
					f = q
					break
				}
			}
			if f == nil || f.cmd != cmd {
				t.Fatalf("seed %d: stream %d's frame %d went out as command %d, not as queued", seed, sid, want, cmd)
			}
			if cmd == smuxCmdPSH && (n != f.n || bytes.Count(body, []byte{f.mark}) != n) {
				t.Fatalf("seed %d: stream %d's frame %d went out changed (%d bytes, want %d of %d)", seed, sid, want, n, f.n, f.mark)
			}
			next[sid]++
		}
		if count != len(queued) {
			t.Fatalf("seed %d: %d frames went out, %d were queued", seed, count, len(queued))
		}
		for sid, n := range seqs {
			if next[sid] != n {
				t.Fatalf("seed %d: stream %d: %d of its %d frames went out", seed, sid, next[sid], n)
			}
		}
	}
}
