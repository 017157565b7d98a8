package transport

import "encoding/binary"

// A session's send queue is numbered as bytes join it (the peer
// acknowledges, and a new carrier resumes, by those numbers), so a
// stream's frame waits behind every byte queued before it. A download
// keeps its bound's worth queued (backlog.go), and every stream opened
// beside it waited behind that as well: at 5 Mbit/s and 60 ms, 41 to 57
// KB of a download arrived ahead of a new stream's answer beyond the
// round trip's own (TestSlowLinkNewStreamWaitsLittle); with frames held
// as below, 28 to 44 KB.
//
// So the frames of bulk streams, those that have sent priorityBytes, are
// held apart, not yet numbered, and join the queue only as the flusher
// takes the next write's worth (releaseHeld). A young stream's frames,
// and the session's own (SYN, UPD), join it at once: ahead of everything
// held. A stream's frames keep their order: once one is held, the
// stream's next ones (its FIN, an abort) are held behind it.

// priorityBytes is what a stream sends before its frames are held: a
// page's request or answer, a message, goes ahead of a download.
const priorityBytes = 64 << 10

// heldFrame is one smux frame held: a chunk that fillStream filled (c[:n]),
// or bytes queued by Write (b).
type heldFrame struct {
	c   *[sendChunk]byte
	b   []byte
	n   int
	sid uint32
}

// heldQueue is the frames held, oldest first. Guarded by the session's mu.
type heldQueue struct {
	frames []heldFrame
	head   int
	n      int            // bytes held
	by     map[uint32]int // frames held, by stream
}

func (h *heldQueue) push(f heldFrame) {
	if h.by == nil {
		h.by = make(map[uint32]int)
	}
	h.frames = append(h.frames, f)
	h.n += f.n
	h.by[f.sid]++
}

func (h *heldQueue) pop() heldFrame {
	f := h.frames[h.head]
	h.frames[h.head] = heldFrame{}
	h.head++
	switch {
	case h.head == len(h.frames):
		h.frames, h.head = h.frames[:0], 0
	case h.head >= 64 && 2*h.head >= len(h.frames):
		// A queue that never empties (a download that keeps it
		// full) would otherwise grow its slice for good.
		k := copy(h.frames, h.frames[h.head:])
		clear(h.frames[k:])
		h.frames, h.head = h.frames[:k], 0
	}
	h.n -= f.n
	if h.by[f.sid]--; h.by[f.sid] == 0 {
		delete(h.by, f.sid)
	}
	return f
}

// holds reports whether frames of stream sid are held.
func (h *heldQueue) holds(sid uint32) bool { return h.by[sid] > 0 }

// bulk reports whether stream sid's next data frame is held: the stream
// has sent priorityBytes, or has frames held already. Called with mu
// held.
func (s *sessionConn) bulk(sid uint32) bool {
	return s.held.holds(sid) || s.pad.streamSent[sid] >= priorityBytes
}

// frameSID returns the stream of the smux frame whose header is hdr (an
// abort's included), and false for a frame that is not a stream's own or
// must not wait (an UPD: it only lets the peer send).
func frameSID(hdr []byte) (uint32, bool) {
	if len(hdr) < smuxHeaderLen || hdr[1] == smuxCmdUPD {
		return 0, false
	}
	return binary.LittleEndian.Uint32(hdr[4:8]) &^ streamAbortFlag, true
}

// holdFrame holds the frame in v (header first), of size bytes. Called
// with mu held.
func (s *sessionConn) holdFrame(v [][]byte, size int) {
	sid, _ := frameSID(v[0])
	b := make([]byte, 0, size)
	for _, p := range v {
		b = append(b, p...)
	}
	s.held.push(heldFrame{b: b, n: size, sid: sid})
	s.heldMore()
}

// heldMore wakes the flusher for a frame just held.
func (s *sessionConn) heldMore() {
	s.lastSend = monoNow()
	s.sendCond.Signal()
	s.wake()
}

// releaseHeld moves held frames into the send queue, oldest first, while
// it holds less than a write of bytes not yet sent. Called with mu held,
// by the flusher.
func (s *sessionConn) releaseHeld() {
	for s.held.n > 0 && s.written-s.next < uint64(s.writeChunk) {
		f := s.held.pop()
		if f.c != nil {
			s.sendq.link(f.c, f.n)
		} else {
			s.sendq.push(f.b)
		}
		s.written += uint64(f.n)
	}
}

// owes reports whether the session has bytes the peer has not
// acknowledged, or frames held for sending. Called with mu held.
func (s *sessionConn) owes() bool { return s.written > s.acked || s.held.n > 0 }
