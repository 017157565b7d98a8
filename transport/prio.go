package transport

import "encoding/binary"

// A session's streams share one queue, in the order smux and the streams
// queue their frames: a new stream's first bytes (a web page's answer, a
// chat message) waited behind every byte a download had queued before
// them, the bounds' worth (backlog.go: the queue's 10 ms and the socket's
// 5 ms at the path's rate). Over a link of 60 ms and 100 Mbit/s (the
// bench's delay line), a new stream's first byte took 25 ms longer while
// a download ran than without it; over a connection of its own, as
// shadowsocks gives each stream, 5 ms. In front of the queue: 16 ms.
//
// So a stream that is not itself waiting behind the queue puts its frames
// in front of the bytes not yet sent, behind those that went in front
// before it: its first youngStreamBytes of data, every smux frame but data
// (SYN, FIN, UPD, and the NOP of its abort), and one frame of up to a
// record's worth of data at a time (a reply on a long-lived connection,
// as a chat app keeps). A stream with bytes at the back still waiting
// puts its own at the back too, so each stream's frames keep their
// order, and a download, which always has bytes waiting, never overtakes
// another. Only bytes not yet sent on any carrier move: what a carrier
// took keeps its offset, so a resend after a freeze sends the same bytes
// again. The peer sees smux frames of different streams in another order,
// which smux allows.

// streamPlace is where a stream's queued frames went.
type streamPlace struct {
	psh      int    // data bytes queued so far
	backEnd  uint64 // the end of its last frame at the back, less s.inserted then; 0: none
	frontEnd uint64 // the end of the last that went in front
}

// frontAt returns where a frame put in front of the bytes not yet sent
// goes: behind every frame that went in front before, and behind the
// frame a carrier last took bytes of (frames go whole; a carrier's write
// may end inside one). Called with mu held.
func (s *sessionConn) frontAt() uint64 {
	at := s.frontEnd
	if s.sentMax > at {
		// Past the front frames: the end of the back frame that holds
		// what was sent last, or that ends there.
		for s.backHead < len(s.backEnds) && s.backEnds[s.backHead]+s.inserted < s.sentMax {
			s.backHead++
		}
		at = s.written
		if s.backHead < len(s.backEnds) {
			at = s.backEnds[s.backHead] + s.inserted
		}
	}
	return min(at, s.written)
}

// placeFrame returns the offset at which the smux frame with header hdr,
// n bytes of data and size bytes in all goes in the send queue: s.written
// (the back, where it is appended), or frontAt (where it is inserted). The
// caller queues it there (queueAt), then calls queued. Called with mu held.
func (s *sessionConn) placeFrame(hdr []byte, n, size int) uint64 {
	back := s.written
	var sid uint32
	var cmd byte
	if len(hdr) >= smuxHeaderLen {
		sid, cmd = binary.LittleEndian.Uint32(hdr[4:8]), hdr[1]
	}
	switch {
	case cmd == smuxCmdNOP && sid&streamAbortFlag != 0:
		// A stream's abort (abortStream) is a frame of the stream, placed
		// as its FIN is: the FIN that follows it must not go in front
		// of it, or the peer takes the stream for ended cleanly (and a
		// download cut by its destination for a whole one).
		sid &^= streamAbortFlag
	case sid == 0 || (cmd != smuxCmdSYN && cmd != smuxCmdFIN && cmd != smuxCmdPSH && cmd != smuxCmdUPD):
		s.atBack(size)
		return back
	}
	front := s.frontAt()
	st := s.places[sid]
	// Bytes of the stream at the back, still waiting: it waits too.
	// (backEnd may be past where the frame is, never before: a frame in
	// front of an insert does not move.)
	waiting := st != nil && st.backEnd > 0 && st.backEnd+s.inserted > front
	ahead := !waiting
	if cmd == smuxCmdPSH && st != nil && st.psh >= youngStreamBytes {
		// Past its start: one frame in front at a time, of a record's
		// worth at most.
		ahead = ahead && st.frontEnd <= s.sentMax && n <= maxFrameBody
	}
	if st == nil && (cmd == smuxCmdSYN || cmd == smuxCmdPSH) {
		// (A FIN or an UPD in front needs no record: what comes after
		// it of the stream goes behind it anyway. An UPD may follow
		// the stream's FIN, which forgot it.)
		if s.places == nil {
			s.places = make(map[uint32]*streamPlace)
		}
		st = &streamPlace{}
		s.places[sid] = st
	}
	off := back
	if ahead {
		off = front
		if off < back {
			// The back frames that end by off do not move; those
			// after it move by size.
			for s.backHead < len(s.backEnds) && s.backEnds[s.backHead]+s.inserted <= off {
				s.backHead++
			}
			s.inserted += uint64(size)
		}
		s.frontEnd = off + uint64(size)
		if st != nil {
			st.frontEnd = s.frontEnd
		}
	} else {
		s.atBack(size)
		st.backEnd = back + uint64(size) - s.inserted
	}
	switch cmd {
	case smuxCmdFIN:
		// Nothing more of the stream but UPDs, which may go in front
		// of anything of its own.
		delete(s.places, sid)
	case smuxCmdPSH:
		st.psh += n
	}
	return off
}

// atBack notes a frame of size bytes appended to the queue: its end is a
// place frontAt may put frames.
func (s *sessionConn) atBack(size int) {
	if s.backHead > 64 && s.backHead > len(s.backEnds)/2 {
		s.backEnds = append(s.backEnds[:0], s.backEnds[s.backHead:]...)
		s.backHead = 0
	}
	s.backEnds = append(s.backEnds, s.written+uint64(size)-s.inserted)
}

// queueAt queues the parts of one frame at offset off (placeFrame's): at
// the back (a push) or inserted. Called with mu held.
func (s *sessionConn) queueAt(off uint64, parts ...[]byte) {
	at := int(off - s.acked)
	for _, p := range parts {
		s.sendq.insert(at, p)
		at += len(p)
	}
}
