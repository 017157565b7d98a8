package transport

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// smuxFrameOf is one smux frame as it left: command, stream, body length.
type smuxFrameOf struct {
	cmd byte
	sid uint32
	n   int
}

// sentFrames composes everything s has to send and returns the smux
// frames it carried, in the order they left.
func sentFrames(t *testing.T, s *sessionConn) []smuxFrameOf {
	t.Helper()
	c := &carrier{raw: &countingConn{}}
	var stream []byte
	for range 1000 {
		s.mu.Lock()
		s.padDue = false
		if s.next >= s.written && s.held.n == 0 {
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
				stream = append(stream, body...)
			}
		}
	}
	var frames []smuxFrameOf
	for len(stream) >= smuxHeaderLen {
		n := int(binary.LittleEndian.Uint16(stream[2:4]))
		frames = append(frames, smuxFrameOf{cmd: stream[1], sid: binary.LittleEndian.Uint32(stream[4:8]), n: n})
		stream = stream[smuxHeaderLen+n:]
	}
	if len(stream) != 0 {
		t.Fatalf("%d bytes after the last whole smux frame", len(stream))
	}
	return frames
}

// queueSmux queues one smux frame of stream sid through WriteBuffers, as
// smux itself does.
func queueSmux(t *testing.T, s *sessionConn, cmd byte, sid uint32, body []byte) {
	t.Helper()
	hdr := make([]byte, smuxHeaderLen)
	hdr[0], hdr[1] = smuxVersion, cmd
	binary.LittleEndian.PutUint16(hdr[2:], uint16(len(body)))
	binary.LittleEndian.PutUint32(hdr[4:], sid)
	v := [][]byte{hdr}
	if len(body) > 0 {
		v = append(v, body)
	}
	if _, err := s.WriteBuffers(v); err != nil {
		t.Fatal(err)
	}
}

// TestYoungStreamGoesAheadOfHeldBulk: a stream opened while another one
// downloads has its first frames sent ahead of the download's frames
// still waiting, and every stream's frames keep their order: the bulk
// stream's FIN, and an abort, leave after all its data.
func TestYoungStreamGoesAheadOfHeldBulk(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	const bulk, young, aborted = 3, 5, 7
	chunk := bytes.Repeat([]byte{1}, 16<<10)
	// The bulk stream: its first priorityBytes are young, the rest held.
	for range 16 {
		queueSmux(t, s, smuxCmdPSH, bulk, chunk)
	}
	for range 8 {
		queueSmux(t, s, smuxCmdPSH, aborted, chunk)
	}
	s.mu.Lock()
	held := s.held.n
	s.mu.Unlock()
	if want := (12 + 4) * (smuxHeaderLen + len(chunk)); held != want {
		t.Fatalf("%d bytes held, want %d: the bulk streams' frames past their first %d bytes", held, want, priorityBytes)
	}
	queueSmux(t, s, smuxCmdFIN, bulk, nil)
	s.abortStream(aborted)
	queueSmux(t, s, smuxCmdPSH, young, []byte("GET / HTTP/1.1\r\n\r\n"))
	frames := sentFrames(t, s)

	ahead, sawYoung, lastData := 0, false, map[uint32]int{}
	for i, f := range frames {
		switch {
		case f.sid == young:
			sawYoung = true
		case f.cmd == smuxCmdPSH:
			lastData[f.sid] = i
			if !sawYoung {
				ahead++
			}
		}
	}
	firstHeld := 4 + 4 // each bulk stream's first 64 KiB: 4 frames of 16 KiB
	if !sawYoung || ahead > firstHeld {
		t.Fatalf("the young stream's frame left after %d of the bulk streams' data frames; want it ahead of their held frames (after at most %d)", ahead, firstHeld)
	}
	var fin, abort int = -1, -1
	for i, f := range frames {
		if f.cmd == smuxCmdFIN && f.sid == bulk {
			fin = i
		}
		if f.cmd == smuxCmdNOP && f.sid == aborted|streamAbortFlag {
			abort = i
		}
	}
	if fin < lastData[bulk] {
		t.Fatalf("the bulk stream's FIN left %dth, before its last data (%dth)", fin, lastData[bulk])
	}
	if abort < lastData[aborted] {
		t.Fatalf("the abort left %dth, before the stream's last data (%dth)", abort, lastData[aborted])
	}
	total := 0
	for _, f := range frames {
		if f.cmd == smuxCmdPSH && f.sid != young {
			total += f.n
		}
	}
	if want := 24 * len(chunk); total != want {
		t.Fatalf("%d bytes of bulk data left, want %d", total, want)
	}
}

// TestHeldQueueStaysSmall: a queue of held frames that never empties,
// as a download keeps it, holds memory for what it holds, not for all it
// ever held.
func TestHeldQueueStaysSmall(t *testing.T) {
	var h heldQueue
	for i := range 100000 {
		h.push(heldFrame{b: []byte{1}, n: 1, sid: uint32(i % 3)})
		if i >= 10 {
			h.pop()
		}
	}
	if h.n != 10 || len(h.frames)-h.head != 10 {
		t.Fatalf("%d bytes, %d frames held; want 10", h.n, len(h.frames)-h.head)
	}
	if c := cap(h.frames); c > 256 {
		t.Fatalf("a queue of 10 frames has room for %d", c)
	}
	for range 10 {
		h.pop()
	}
	if len(h.by) != 0 {
		t.Fatalf("streams still counted after every frame left: %v", h.by)
	}
}
