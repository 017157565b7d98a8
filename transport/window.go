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
// so a stuck upload holds initialWindow at the bridge: eight of them
// fill a session, not two (TestStuckUploadsDoNotStallTheSession).
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

// tunedWindow is the window of one stream we receive.
type tunedWindow struct {
	win      uint32 // the window announced
	consumed uint32 // the bytes read, as last announced
	at       int64  // monoNow when last announced
}

// windowTuner tunes the receive windows of a session's streams. Not safe
// for concurrent use: the session calls it under its lock.
type windowTuner struct {
	streams map[uint32]*tunedWindow
	grown   int64 // the windows' growth beyond initialWindow, all streams
	limit   int64 // the most grown may be
}

// opened notes that we announced stream sid's initial window at now (the
// client does, with the SYN).
func (t *windowTuner) opened(sid uint32, now int64) {
	t.track(sid, &tunedWindow{win: initialWindow, at: now})
}

// track keeps w for sid. Past maxTrackedStreams, the tuner starts over:
// the streams' next UPDs announce initialWindow again, which only slows
// them, and only a client with thousands of open streams gets there.
func (t *windowTuner) track(sid uint32, w *tunedWindow) {
	if t.streams == nil || len(t.streams) >= maxTrackedStreams {
		t.streams = make(map[uint32]*tunedWindow)
		t.grown = 0
	}
	t.streams[sid] = w
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
// whole holds too much.
func (t *windowTuner) update(sid, consumed uint32, now, rtt int64, mayGrow bool) (win uint32, send bool) {
	w, ok := t.streams[sid]
	if !ok {
		// The stream's first UPD (the bridge's first read of a stream):
		// it states the window the peer could assume.
		w = &tunedWindow{win: initialWindow, consumed: consumed, at: now}
		t.track(sid, w)
		return w.win, true
	}
	read := consumed - w.consumed // modular, as smux counts
	if read < w.win/4 {
		return w.win, false
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
	return w.win, true
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
