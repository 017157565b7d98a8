package transport

import "encoding/binary"

// Receive windows that grow with the path, as TCP's and QUIC's do.
//
// A stream's window is what its sender may have sent beyond what the
// receiving app has read: too small, and a long fast path is idle while
// the sender waits for credit (a stream gets window/RTT); too large, and
// a stream whose app or destination stopped reading holds that much at
// the receiver. A fixed 16 MiB window (what a 200 ms, 200 Mbit/s path
// needs) let two stuck uploads fill a bridge's whole session
// (sessionWindow), and froze every other stream of that user.
//
// So every stream starts with initialWindow, and the receiver grows a
// stream's window when its app reads fast enough that the window may soon
// be what limits the stream: to four round trips at the rate the app
// read, at least doubled (Chromium's QUIC and HTTP/2 double a window
// half of which was read within two round trips, the same rate). It
// grows up to streamWindow, while the session's streams together have
// grown by no more than the session's own bound and, on a bridge, while
// all its sessions together hold less than half of -max-buffer. A stream
// whose app reads slowly never grows, whatever its sender has to send,
// so a stuck upload holds initialWindow at the bridge, or less (below).
//
// initialWindow is 4 MiB, a quarter of the largest. A stream's first
// round trip carries at most that: on a 200 ms, 200 Mbit/s path (5 MB in
// flight) a stream starting at 1 MiB got 0.92 of a TCP connection's rate
// (BenchmarkLongLink, 48 MiB), at 2 MiB 0.93, at 4 MiB 0.955, with the
// fixed 16 MiB 0.99. (That TCP connection's own window never ramps up:
// the delay line runs above TCP on loopback. A real path's TCP grows its
// congestion window from ten packets, over more round trips than this.)
// The round trip is each carrier's handshake's: TCP's own estimate
// would miss the part of a path above TCP (a user-space delay line).
//
// smux announces a fixed window (its MaxStreamBuffer), and sends an UPD
// each time its app has read half of that. So our smux is told half of
// initialWindow, which makes it announce every quarter of the smallest
// window, and the session rewrites each UPD it sends with the stream's
// tuned window, and holds back those that come before a quarter of the
// tuned window was read. (A quarter, not QUIC's half: smux's UPDs come
// only at its own steps, a little past each, so at half a window the
// stream would wait a round trip for each half, and get half a window
// per round trip; BenchmarkLongLink showed it.) An UPD holds the whole
// state (bytes read, window), so a later one replaces any held back.

// A bridge also keeps its streams' windows within the session's room. Its
// smux holds at most sessionWindow for a session, and when that is full
// it stops reading the session, every stream's frames and the session's
// own (ACKs, PINGs) with them: eight uploads stuck at their initial
// window filled it, every other stream of the user froze, and the
// client, whose PINGs went unanswered, took its carriers for frozen and
// dialled new ones every two or three seconds, which froze too. So:
//
//   - the windows of the streams that hold a backlog (a reader slower
//     than its sender: holdingFrom) share half the session's room,
//     grantBudget, each cut to its share of it but not below minGrant;
//   - once the session holds more than grantBudget, every stream that
//     still sends is cut to an eighth of the room left, at most minGrant
//     and at least pressureGrant: a stuck one stops, a new or fast one
//     goes on a small window, smaller the fuller the session, until
//     the readers have drained the rest.
//
// The bridge cuts a window with an UPD of its own as soon as a frame of
// the stream shows the need, and then announces the stream's reads
// itself (sessionRead): smux does only every initialWindow/4 read, more
// than a cut window, so the stream would never hear of them. What was
// sent before the cut arrives is held: the other half of the room
// absorbs it, since the client keeps what all its streams have in flight
// within clientInflight, and within clientMostInflight with each
// stream's floor (streamsend.go, sessionRoom). A stream the client's
// bound holds asks for its reads (a NOP naming it), and the bridge
// announces them too (sessionRead, sessionConn.readsAsked). The client
// honours every UPD's window, smaller ones too (PROTOCOL.md §6.5).
// However many uploads are stuck at the same moment, the session stays
// usable, and their windows grow again once their destinations read
// (TestStuckUploadsDoNotStallTheSession).
//
// A client keeps the windows of its downloads within the same room, by
// the same rules, so that downloads its apps stopped reading take a
// bounded share of its memory (on a phone, a VPN's whole allowance can
// be 50 MB): each new stream's window, granted with its SYN, counts as
// held until its bytes come, for promiseFor at most
// (streamAcct.newWindow), so that streams opened at the same moment are
// not each granted initialWindow before any of them arrives. Only its
// smux's own cap is larger (clientSessionWindow, mux.go).
const (
	grantBudget   = sessionWindow / 2
	minGrant      = 256 << 10
	pressureGrant = maxFrameSize
	// clientInflight bounds what a client has sent on all its streams
	// that the bridge's streams have not read (streamsend.go,
	// sessionRoom), so that its uploads cannot outrun the bridge's cuts.
	clientInflight = grantBudget
	// clientStreamFloor is what each stream may have in flight while
	// the others hold clientInflight, and clientFloorsInflight what
	// all may have so; clientStreamLeast is what each may have in
	// flight while all hold less than clientMostInflight
	// (streamsend.go, sessionRoom). A bridge takes maxStreamsPerSession
	// streams of a session at most, so clientMostInflight stays below
	// the room of its smux, sessionWindow, and the bridge goes on
	// reading the session however many streams are stuck.
	clientStreamFloor    = minGrant
	clientFloorsInflight = sessionWindow * 3 / 4
	clientStreamLeast    = 4 << 10
	clientMostInflight   = clientFloorsInflight + maxStreamsPerSession*clientStreamLeast
	// askedStep is how much of a stream whose client asked for its
	// reads (a NOP naming it) the bridge's reader takes before the
	// bridge announces them, unless it took all it held sooner: half a
	// stream's floor, so that a stream held at its floor hears of its
	// reads at least twice per round trip.
	askedStep = clientStreamFloor / 2
)

// The client's bounds must leave the bridge's smux room to read the
// session: a compile-time check (a negative constant overflows uint).
const _ = uint(sessionWindow - clientMostInflight - 1)

// grantLimit returns the most a stream's window may be while the session
// holds held bytes and holding of its streams hold a backlog.
func grantLimit(held int64, holding int) uint32 {
	if held > grantBudget {
		return uint32(min(max((sessionWindow-held)/8, pressureGrant), minGrant))
	}
	return uint32(max(grantBudget/int64(max(holding, 1)), minGrant))
}

// tunedWindow is the window of one stream we receive.
type tunedWindow struct {
	win       uint32 // the window tuned to the stream's reader
	announced uint32 // the window last announced: win, or less (grantLimit)
	consumed  uint32 // the bytes read, as last announced
	at        int64  // monoNow when last announced
}

// windowTuner tunes the receive windows of a session's streams. Not safe
// for concurrent use: the session calls it under its lock.
type windowTuner struct {
	streams map[uint32]*tunedWindow
	grown   int64 // the windows' growth beyond initialWindow, all streams
	limit   int64 // the most grown may be
}

// opened notes that we announced stream sid's window at now, the initial
// window or less (the client does, with the SYN).
func (t *windowTuner) opened(sid, announced uint32, now int64) {
	t.track(sid, &tunedWindow{win: initialWindow, announced: announced, at: now})
}

// track keeps w for sid. Past maxTrackedStreams, the tuner starts over:
// the streams' next UPDs announce initialWindow again (a cut stream's
// next read does: sessionRead), which only slows them. Only thousands of
// streams open at once get there: an app that opens them faster than the
// bridge refuses those past its limit a session.
func (t *windowTuner) track(sid uint32, w *tunedWindow) {
	if t.streams == nil || len(t.streams) >= maxTrackedStreams {
		t.streams = make(map[uint32]*tunedWindow)
		t.grown = 0
	}
	t.streams[sid] = w
}

// start tracks stream sid afresh, its reader having taken consumed bytes
// at now, and returns the window to announce: initialWindow, or limit if
// less.
func (t *windowTuner) start(sid, consumed, limit uint32, now int64) uint32 {
	w := &tunedWindow{win: initialWindow, consumed: consumed, at: now}
	w.announced = min(w.win, limit)
	t.track(sid, w)
	return w.announced
}

// ended notes that the peer will send no more on stream sid (its FIN).
func (t *windowTuner) ended(sid uint32) {
	if w, ok := t.streams[sid]; ok {
		t.grown -= int64(w.win - initialWindow)
		delete(t.streams, sid)
	}
}

// update decides on an UPD our smux sends for stream sid, saying its app
// has read consumed bytes, at now, on a session whose round trip is rtt
// (nanoseconds; 0: unknown). It returns the window to announce, and
// whether to send the UPD at all. mayGrow is false while the bridge as a
// whole holds too much; limit is the most the window may be now
// (grantLimit).
func (t *windowTuner) update(sid, consumed uint32, now, rtt int64, mayGrow bool, limit uint32) (win uint32, send bool) {
	w, ok := t.streams[sid]
	if !ok {
		// The stream's first UPD (the bridge's first read of a stream):
		// it states the window the peer could assume.
		return t.start(sid, consumed, limit, now), true
	}
	read := consumed - w.consumed // modular, as smux counts
	if int32(read) < 0 {
		// The session announced later reads of this stream itself
		// (sessionRead) while smux's UPD was on its way: stale.
		return w.announced, false
	}
	if read < w.announced/4 && w.announced >= min(w.win, limit) {
		return w.announced, false
	}
	if elapsed := now - w.at; mayGrow && w.win < streamWindow && rtt > 0 && elapsed > 0 {
		// The app read at rate read/elapsed. If a window of four
		// rounds trips at that rate is more than the window, the
		// window may soon be what limits the stream: grow it to that,
		// at least doubled (as Chromium doubles a window half of
		// which was read within two round trips).
		if want := float64(read) / float64(elapsed) * float64(4*rtt); want > float64(w.win) {
			target := min(max(want, 2*float64(w.win)), streamWindow)
			if grow := min(int64(target)-int64(w.win), t.limit-t.grown); grow > 0 {
				w.win += uint32(grow)
				t.grown += grow
			}
		}
	}

	w.consumed, w.at = consumed, now
	w.announced = min(w.win, limit)
	return w.announced, true
}

// sessionRead decides on an UPD of the session's own for stream sid, now
// that its reader has taken read bytes all told: smux announces reads
// only every initialWindow/4, more than a cut window, so without these a
// stream cut below that, or held by its client's bound, would never hear
// that its reader went on. It returns the window to announce, and whether
// to send the UPD at all: once a quarter of the window was read since the
// last UPD, or step if less (a stream whose client asked for its reads),
// and only if anything was.
func (t *windowTuner) sessionRead(sid, read, limit uint32, now int64, step uint32) (win uint32, send bool) {
	w, ok := t.streams[sid]
	if !ok {
		// The tuner started over (track) while the stream was open:
		// announce its reads as its first UPD would (update). Without
		// this a stream whose window was cut never heard of its reads
		// again (smux announces them only every half of its buffer,
		// above a cut window), and stalled. The session asks only for
		// open streams (announceRead).
		return t.start(sid, read, limit, now), true
	}
	d := read - w.consumed
	if int32(d) <= 0 || d < min(w.announced/4, step) {
		return 0, false
	}
	w.consumed, w.at = read, now
	w.announced = min(w.win, limit)
	return w.announced, true
}

// isCut reports whether stream sid's window is announced smaller than
// its reader's pace would have it.
func (t *windowTuner) isCut(sid uint32) bool {
	w, ok := t.streams[sid]
	return ok && w.announced < w.win
}

// shrink decides whether stream sid's window must be cut to limit now,
// and if so records it and returns the bytes read to announce with it
// (the last announced: what the peer knows). A window is cut only when it
// is a quarter more than limit, so that the count of streams that hold
// a backlog going up and down by one does not send an UPD each time.
func (t *windowTuner) shrink(sid, limit uint32, now int64) (consumed uint32, cut bool) {
	w, ok := t.streams[sid]
	if !ok {
		// No UPD sent yet: the peer assumes initialWindow.
		w = &tunedWindow{win: initialWindow, announced: initialWindow, at: now}
		t.track(sid, w)
	}
	if uint64(w.announced) <= uint64(limit)+uint64(limit)/4 {
		return 0, false
	}
	w.announced = limit
	return w.consumed, true
}

// parseSmuxUPD returns the stream and the bytes read that an smux UPD
// frame, given as header and body, states.
func parseSmuxUPD(hdr, body []byte) (sid, consumed uint32, ok bool) {
	if len(hdr) != smuxHeaderLen || hdr[1] != smuxCmdUPD || len(body) != 8 ||
		binary.LittleEndian.Uint16(hdr[2:4]) != 8 {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint32(hdr[4:8]), binary.LittleEndian.Uint32(body[:4]), true
}
