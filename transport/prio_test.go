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
	psh := func(sid uint32, n int, mark byte) { queuePSH(t, s, sid, n, mark) }
	var sent []byte
	flush := func(all bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for s.next < s.written {
			sent = append(sent, composeData(t, s, c)...)
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
	for _, f := range smuxFrames(t, sent) {
		desc := fmt.Sprintf("UPD %d", f.sid)
		if f.cmd == smuxCmdPSH {
			desc = fmt.Sprintf("PSH %d:%d×%d", f.sid, len(f.body), f.body[0])
			if bytes.Count(f.body, f.body[:1]) != len(f.body) {
				t.Fatalf("%s: its bytes were mixed with others", desc)
			}
		}
		got = append(got, desc)
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
			sent = append(sent, composeData(t, s, c)...)
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
				queuePSH(t, s, sid, n, mark)
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
		frames := smuxFrames(t, sent)
		for _, f := range frames {
			if f.cmd == smuxCmdUPD {
				continue
			}
			want := next[f.sid]
			var q *frame
			for i := range queued {
				if queued[i].sid == f.sid && queued[i].seq == want {
					q = &queued[i]
					break
				}
			}
			if q == nil || q.cmd != f.cmd {
				t.Fatalf("seed %d: stream %d's frame %d went out as command %d, not as queued", seed, f.sid, want, f.cmd)
			}
			if f.cmd == smuxCmdPSH && (len(f.body) != q.n || bytes.Count(f.body, []byte{q.mark}) != q.n) {
				t.Fatalf("seed %d: stream %d's frame %d went out changed (%d bytes, want %d of %d)", seed, f.sid, want, len(f.body), q.n, q.mark)
			}
			next[f.sid]++
		}
		if len(frames) != len(queued) {
			t.Fatalf("seed %d: %d frames went out, %d were queued", seed, len(frames), len(queued))
		}
		for sid, n := range seqs {
			if next[sid] != n {
				t.Fatalf("seed %d: stream %d: %d of its %d frames went out", seed, sid, next[sid], n)
			}
		}
	}
}

// queuePSH queues, as smux writes, a PSH frame of stream sid with n bytes
// of mark.
func queuePSH(t *testing.T, s *sessionConn, sid uint32, n int, mark byte) {
	t.Helper()
	hdr := make([]byte, smuxHeaderLen)
	hdr[0], hdr[1] = smuxVersion, smuxCmdPSH
	binary.LittleEndian.PutUint16(hdr[2:], uint16(n))
	binary.LittleEndian.PutUint32(hdr[4:], sid)
	if _, err := s.WriteBuffers([][]byte{hdr, bytes.Repeat([]byte{mark}, n)}); err != nil {
		t.Fatal(err)
	}
}

// composeData composes one write of s for carrier c and returns the
// session bytes its DATA frames carry. Called with s.mu held.
func composeData(t *testing.T, s *sessionConn, c *carrier) []byte {
	t.Helper()
	var data []byte
	fr := &frameReader{r: bytes.NewReader(s.compose(nil, c))}
	for {
		typ, body, err := fr.next()
		if err == io.EOF {
			return data
		}
		if err != nil {
			t.Fatal(err)
		}
		if typ == frameData {
			data = append(data, body...)
		}
	}
}

// smuxFrame is one smux frame of a session's bytes.
type smuxFrame struct {
	cmd  byte
	sid  uint32
	body []byte
}

// smuxFrames splits session bytes into whole smux frames, and fails the
// test if any bytes are left over.
func smuxFrames(t *testing.T, b []byte) []smuxFrame {
	t.Helper()
	var frames []smuxFrame
	for len(b) > 0 {
		if len(b) < smuxHeaderLen {
			t.Fatalf("%d bytes left over after the last whole frame", len(b))
		}
		n := int(binary.LittleEndian.Uint16(b[2:]))
		if len(b) < smuxHeaderLen+n {
			t.Fatalf("a frame says %d bytes, %d are left", n, len(b)-smuxHeaderLen)
		}
		frames = append(frames, smuxFrame{b[1], binary.LittleEndian.Uint32(b[4:]), b[smuxHeaderLen : smuxHeaderLen+n]})
		b = b[smuxHeaderLen+n:]
	}
	return frames
}

// TestPlacementForgetsFinishedStreams: what the placement keeps of a
// stream goes with its FIN, even when an UPD of the stream comes after
// (its reads go on after its writes end): a session that opens thousands
// of streams over a day keeps nothing of those that ended.
func TestPlacementForgetsFinishedStreams(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	for sid := uint32(1); sid < 200; sid += 2 {
		queuePSH(t, s, sid, 100, 'x')
		fin := make([]byte, smuxHeaderLen)
		fin[0], fin[1] = smuxVersion, smuxCmdFIN
		binary.LittleEndian.PutUint32(fin[4:], sid)
		if _, err := s.WriteBuffers([][]byte{fin}); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.queueUPD(sid, 100, 1<<20)
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.places); n != 0 {
		t.Errorf("the placement keeps %d streams of the 100 that ended", n)
	}
}

// TestAbortGoesBeforeItsStreamsFIN: a stream ended abortively (a
// destination's reset) sends its abort, then its FIN (abortStream, then
// smux's Close), and they must reach the peer in that order: the peer takes
// a FIN that comes first for a clean end, and closes its app's connection
// as after a complete download (TestDestinationResetReachesTheApp failed
// so when the FIN went in front of the abort, which waited at the back).
// Whether or not a download has bytes waiting, and whether or not a
// carrier took the stream's last bytes, the abort goes first, and in
// front of the download's bytes when its stream has none of its own
// waiting.
func TestAbortGoesBeforeItsStreamsFIN(t *testing.T) {
	for _, tc := range []struct {
		name     string
		download bool // stream 1 has bytes queued that no carrier took
		sentAll  bool // a carrier took stream 3's bytes before the abort
	}{
		{"alone, sent", false, true},
		{"alone, unsent", false, false},
		{"beside a download, sent", true, true},
		{"beside a download, unsent", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSessionConn(false, time.Minute, testLogger(t))
			defer s.Close()
			c := &carrier{raw: &countingConn{}}
			var sent []byte
			flush := func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				for s.next < s.written {
					sent = append(sent, composeData(t, s, c)...)
				}
			}
			queuePSH(t, s, 3, 100, 'a')
			if tc.sentAll {
				flush()
			}
			if tc.download {
				for k := range 4 {
					queuePSH(t, s, 1, 32<<10, byte(k))
				}
			}
			s.abortStream(3)
			fin := make([]byte, smuxHeaderLen)
			fin[0], fin[1] = smuxVersion, smuxCmdFIN
			binary.LittleEndian.PutUint32(fin[4:], 3)
			if _, err := s.WriteBuffers([][]byte{fin}); err != nil {
				t.Fatal(err)
			}
			flush()
			// Stream 3's frames in the order they went, and whether the
			// download had frames left after its abort.
			var got []string
			downloadAfter := false
			for _, f := range smuxFrames(t, sent) {
				switch {
				case f.cmd == smuxCmdNOP && f.sid == 3|streamAbortFlag:
					got = append(got, "abort")
				case f.sid == 3 && f.cmd == smuxCmdFIN:
					got = append(got, "FIN")
				case f.sid == 3 && f.cmd == smuxCmdPSH:
					got = append(got, "PSH")
				case f.sid == 1:
					downloadAfter = slices.Contains(got, "abort")
				default:
					t.Fatalf("an unexpected frame: cmd %d of stream %#x", f.cmd, f.sid)
				}
			}
			if want := []string{"PSH", "abort", "FIN"}; !slices.Equal(got, want) {
				t.Errorf("stream 3's frames went out as %q, want %q", got, want)
			}
			if tc.download && !downloadAfter {
				t.Errorf("the abort waited behind all of the download's bytes")
			}
		})
	}
}
