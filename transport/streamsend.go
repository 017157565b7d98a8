package transport

import (
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/xtaci/smux"
)

// The direct send path. smux's Stream.Write hands each frame to its
// shaper goroutine, which hands it to its send loop, which writes it to
// the session (WriteBuffers) and hands the result back: three goroutine
// hand-offs, with their wake-ups, per frame of at most 64 KiB. Under a
// bulk send they were a tenth of the sender's CPU (perf, 8 streams down:
// the bridge's CPU per GiB fell 9.5% without them). A stream of ours
// writes its PSH frames into the session stream itself instead, from the
// writer's goroutine, as smux would have written them: the same frames,
// within the same per-stream window (smux v2's flow control, mirrored
// here from the frames that cross the session). smux still opens,
// closes and reads the streams, and still writes its own frames (SYN,
// FIN, UPD), through WriteBuffers; a stream's frames stay in the order
// its writer wrote them, since each write is queued before it returns.

// youngStreamBytes is how much of a stream counts as its start, which
// may go past the bound on what waits to be sent (frameRoom): a TLS
// handshake's flight, the head of an HTTP response. Padding counts a
// stream as young as long (padStreamBytes).
const youngStreamBytes = padStreamBytes

// smuxInitialPeerWindow is the window smux grants a stream until the
// peer's first UPD for it says otherwise (smux's own initialPeerWindow).
const smuxInitialPeerWindow = 256 << 10

var errPeerWindow = errors.New("transport: the peer acknowledged more of a stream than was sent")

// sendWindow is the flow-control state of one stream we send on, as smux
// v2 keeps it: counts modulo 2^32, as the frames carry them.
type sendWindow struct {
	sent     uint32 // bytes of PSH frames queued for the stream
	consumed uint32 // bytes the peer last said its app read
	window   uint32 // the peer's window for the stream
	// total is sent without the wrap: a stream is young (frameRoom)
	// until it reaches youngStreamBytes.
	total int64
	// asked is set once the client asked the bridge for the stream's
	// reads (askReads), until an UPD of the stream comes.
	asked bool
	// finished: our FIN is queued, and nothing more is sent; peerDone:
	// the peer's FIN came. A finished stream's window is kept, and what
	// it sent counted in flight, until the peer read it all or the
	// peer's FIN came too (its stream is closed, what it held let go):
	// a bridge holds what a client closed towards a destination that
	// does not read, and a client that forgot it at its FIN filled the
	// bridge's room with such streams (TestClosedStuckUploads).
	finished, peerDone bool
	// aborted: the peer ended the stream abortively (its NOP naming it,
	// abortStream): writes fail with ErrStreamAborted.
	aborted bool
}

// forgetSendWin drops stream sid's send window: nothing of it is held by
// the peer any more. Called with mu held.
func (s *sessionConn) forgetSendWin(sid uint32, w *sendWindow) {
	s.inflight -= int64(int32(w.sent - w.consumed))
	delete(s.sendWins, sid)
	s.spaceCond.Broadcast()
}

// addSent counts n more bytes sent on stream w (n < 0: fewer, when a fill
// read less than its room). Called with mu held.
func (s *sessionConn) addSent(w *sendWindow, n int) {
	w.sent += uint32(n)
	w.total += int64(n)
	s.inflight += int64(n)
}

// room returns how many more bytes the peer's window lets the stream
// send now, or an error if the peer's counts make no sense.
func (w *sendWindow) room() (int, error) {
	inflight := int32(w.sent - w.consumed)
	if inflight < 0 {
		return 0, errPeerWindow
	}
	return max(int(int32(w.window)-inflight), 0), nil
}

// queuedFrame keeps the send windows up to date with a frame of ours
// queued: called by queueLocked for each smux frame, with mu held.
func (s *sessionConn) queuedFrame(hdr []byte, n int) {
	if len(hdr) < smuxHeaderLen {
		return
	}
	sid := binary.LittleEndian.Uint32(hdr[4:8])
	switch hdr[1] {
	case smuxCmdSYN:
		// Our own stream: every bridge grants initialWindow at once
		// (PROTOCOL.md §6.5).
		s.sendWin(sid, initialWindow)
	case smuxCmdPSH:
		if w := s.sendWins[sid]; w != nil {
			s.addSent(w, n)
		}
	case smuxCmdFIN:
		// Nothing more is sent on the stream.
		if w := s.sendWins[sid]; w != nil {
			w.finished = true
			if w.peerDone || w.sent == w.consumed {
				s.forgetSendWin(sid, w)
			} else {
				s.spaceCond.Broadcast() // its writers fail
			}
		}
	}
}

// peerFinished notes the peer's FIN of stream sid. Called with mu held.
func (s *sessionConn) peerFinished(sid uint32) {
	if w := s.sendWins[sid]; w != nil {
		w.peerDone = true
		if w.finished {
			s.forgetSendWin(sid, w)
		}
	}
}

// peerAborted notes that the peer ended stream sid abortively: its
// writers fail, and its reader gets ErrStreamAborted where it would have
// read EOF (countedStream). Called with mu held.
func (s *sessionConn) peerAborted(sid uint32) {
	if w := s.sendWins[sid]; w != nil {
		w.aborted = true
		s.spaceCond.Broadcast()
	}
	if s.acct != nil {
		// For the reader, also once the send window is gone.
		s.acct.setAborted(sid)
	}
}

// abortStream tells the peer that stream sid ends abortively, as a reset
// would (PROTOCOL.md §7): an smux NOP frame naming the stream with
// streamAbortFlag set, which smux takes for a keepalive. It goes before
// the stream's FIN, which follows as the stream closes. A stream the peer
// aborted needs none: the peer knows.
func (s *sessionConn) abortStream(sid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.sendWins[sid]; w != nil && w.aborted {
		return
	}
	var f [smuxHeaderLen]byte
	f[0], f[1] = smuxVersion, smuxCmdNOP
	binary.LittleEndian.PutUint32(f[4:], sid|streamAbortFlag)
	s.queueFrame(f[:])
}

// abortedByPeer reports whether the peer aborted stream sid: its send
// window remembers it while it lasts, the session's count while the
// stream is open here.
func (s *sessionConn) abortedByPeer(sid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.sendWins[sid]
	return w != nil && w.aborted || s.acct != nil && s.acct.aborted(sid)
}

// closedHere forgets the tuned receive window of stream sid, which this
// end closed, and on a bridge its send window too (a client counts what
// its closed streams have in flight: Close).
func (s *sessionConn) closedHere(sid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.sendWins[sid]; w != nil && !s.client {
		s.forgetSendWin(sid, w)
	}
	// On either end: a window ended by the peer's FIN is started again
	// by the first UPD our smux sends after it (windowTuner.update).
	s.windows.ended(sid)
}

// sendWin starts the send window of a new stream. Called with mu held.
func (s *sessionConn) sendWin(sid uint32, window uint32) {
	if s.sendWins == nil {
		s.sendWins = make(map[uint32]*sendWindow)
	}
	s.sendWins[sid] = &sendWindow{window: window}
}

// peerUpdate notes the peer's UPD for a stream: what its app read, and
// its window. Called with mu held, as smux is handed the frame.
func (s *sessionConn) peerUpdate(sid, consumed, window uint32) {
	if w := s.sendWins[sid]; w != nil {
		if d := int32(consumed - w.consumed); d > 0 {
			s.inflight -= int64(d)
			w.consumed = consumed
		}
		w.window = window
		w.asked = false
		if w.finished && w.sent == w.consumed {
			s.forgetSendWin(sid, w)
		}
		s.spaceCond.Broadcast()
	}
}

// sessionRoom returns how many bytes more stream w may send now as far
// as the client's own bound goes. A bridge's smux holds at most
// sessionWindow of a session and stops reading it when that is full
// (window.go): a client that used every stream's window at once, stuck
// uploads' included, could fill it before the bridge's UPDs cutting
// their windows came back. So all the client's streams together keep at
// most clientInflight sent and not yet announced read by the bridge.
// Beyond that, so that a stream can still send while others are stuck,
// each stream may have clientStreamFloor in flight while all of them
// together have less than clientFloorsInflight, and clientStreamLeast (a
// request, a message) while they have less than clientMostInflight:
// however many streams there are (a bridge takes at most
// maxStreamsPerSession of a session), they never hold the bridge's whole
// room for the session, and however many are stuck, the others go on, if
// slowly. A stream held by these bounds asks the bridge for its reads
// (askReads): a bridge announces them only at its smux's steps of 1 MiB
// otherwise, which a stream held below that would never reach. Only the
// client bounds itself so: what the bridge sends is bounded by what the
// client reads. Called with mu held.
func (s *sessionConn) sessionRoom(w *sendWindow) int {
	if !s.client {
		return math.MaxInt
	}
	own := int64(int32(w.sent - w.consumed))
	room := clientInflight - s.inflight
	room = max(room, min(clientStreamFloor-own, clientFloorsInflight-s.inflight))
	room = max(room, min(clientStreamLeast-own, clientMostInflight-s.inflight))
	return int(max(room, 0))
}

// askReads asks the bridge for the reads of stream sid, which the
// client's bound holds (sessionRoom): an smux NOP frame that names the
// stream. smux takes it for a keepalive; a bridge announces the reads of
// every stream it has read since (PROTOCOL.md §6.5), and of this one as
// soon as its reader takes what it was sent. Called with mu held.
func (s *sessionConn) askReads(sid uint32, w *sendWindow) {
	if w.asked {
		return
	}
	w.asked = true
	var f [smuxHeaderLen]byte
	f[0], f[1] = smuxVersion, smuxCmdNOP
	binary.LittleEndian.PutUint32(f[4:], sid)
	s.queueFrame(f[:])
}

// writeWait is what a stream's write does before it waits: it fails if
// the stream is closed or its write deadline passed, and otherwise makes
// sure the deadline wakes the wait.
type writeWait struct {
	d     *directStream
	s     *sessionConn
	timer *time.Timer
}

func (w *writeWait) before() error {
	if w.d.closed.Load() {
		return io.ErrClosedPipe
	}
	dl := w.d.deadline.Load()
	if dl == 0 {
		return nil
	}
	wait := time.Duration(dl - time.Now().UnixNano())
	if wait <= 0 {
		return os.ErrDeadlineExceeded
	}
	if w.timer == nil {
		w.timer = time.AfterFunc(wait, w.s.wakeWriters)
	} else {
		w.timer.Reset(wait)
	}
	return nil
}

// beginWrite starts a write of stream d: it locks mu and marks d as
// waiting (so that a deadline or a close wakes it). The writeWait's end
// undoes both.
func (s *sessionConn) beginWrite(d *directStream) *writeWait {
	s.mu.Lock()
	d.waiting.Store(true)
	return &writeWait{d: d, s: s}
}

// end ends the write beginWrite started.
func (w *writeWait) end() {
	w.d.waiting.Store(false)
	w.s.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
}

// frameRoom waits until stream d may queue a PSH frame, and returns how
// many bytes, up to want, the frame may carry: within the peer's window
// for the stream, the client's own bound (sessionRoom) and maxFrameSize,
// and once the bytes waiting to be sent are few enough (backlog.go).
// Called with mu held.
func (s *sessionConn) frameRoom(d *directStream, want int, wait *writeWait) (int, error) {
	for {
		if d.closed.Load() {
			return 0, io.ErrClosedPipe
		}
		if s.closed {
			return 0, s.writeErr()
		}
		w := s.sendWins[d.Stream.ID()]
		if w == nil || w.finished {
			// Closed for writing (our FIN is queued).
			return 0, io.ErrClosedPipe
		}
		if w.aborted {
			return 0, ErrStreamAborted
		}
		room, err := w.room()
		if err != nil {
			return 0, err
		}
		if sr := s.sessionRoom(w); sr < room {
			room = sr
			if room == 0 {
				s.askReads(d.Stream.ID(), w)
			}
		}
		if room == 0 {
			if err := wait.before(); err != nil {
				return 0, err
			}
			s.spaceCond.Wait()
			continue
		}
		// A frame is at most the bound itself, so that a stream alone
		// cannot put more than the bound in front of everyone else.
		n := min(want, room, maxFrameSize, s.maxUnsent)
		bound := s.maxUnsent
		if w.total < youngStreamBytes {
			// A young stream's first bytes may go past the bound, up
			// to twice it: the bulk streams' bytes keep the queue at
			// the bound, and a new stream's answer would otherwise
			// wait for a drain, then race them for the room it left.
			n = min(n, int(youngStreamBytes-w.total))
			bound = 2 * s.maxUnsent
		}
		if u := int(s.written-s.next) + s.reserved; u > 0 && u+n > bound {
			// What fits goes now, so the queue refills as the carrier
			// drains it, not once it ran empty: with frames as large
			// as the bound, the carrier had nothing to send while the
			// writers woke (8 downloads at 20 Mbit/s got 0.94 of what
			// TCP got, now 1.00: BenchmarkThinLink). Not at the floor:
			// there the bound is 13 ms of the link or more, time
			// enough for the writers, and a queue kept full put 33 KB
			// more of a download ahead of a new stream at 2 Mbit/s
			// (TestSlowLinkNewStreamWaitsLittle). Room for less than a
			// quarter of the bound is left to the next drain, rather
			// than spent on small frames.
			if fit := bound - u - smuxHeaderLen; s.maxUnsent > minUnsent && fit >= s.maxUnsent/4 {
				return fit, nil
			}
			// Enough waits to be sent (backlog.go): this stream's
			// bytes wait here, not in the queue ahead of everyone
			// else's.
			if err := wait.before(); err != nil {
				return 0, err
			}
			s.unsentWaiters++
			s.spaceCond.Wait()
			s.unsentWaiters--
			continue
		}
		return n, nil
	}
}

// frameAndQueueRoom is frameRoom once the send queue has room for the
// frame too (waitQueueRoom). A wait lets go of mu, and meanwhile the
// stream may be closed and its window forgotten (the bridge's Close, the
// peer's FIN after ours) or its window may change: so after a wait for
// the queue the stream's room is asked again. (A fill that went on with
// the window it had looked up before the wait found none, and crashed
// the bridge: TestSendOnAStreamClosedWhileTheQueueWasFull.) Called with
// mu held; it is held from the last check to the return.
func (s *sessionConn) frameAndQueueRoom(d *directStream, want int, wait *writeWait) (int, error) {
	for {
		n, err := s.frameRoom(d, want, wait)
		if err != nil || !s.queueFull(smuxHeaderLen+n) {
			return n, err
		}
		if err := s.waitQueueRoom(smuxHeaderLen+n, wait.before); err != nil {
			if s.closed {
				err = s.writeErr() // as frameRoom says it
			}
			return 0, err
		}
	}
}

// pshHeader returns the header of stream d's PSH frame of n bytes.
func pshHeader(d *directStream, n int) [smuxHeaderLen]byte {
	var hdr [smuxHeaderLen]byte
	hdr[0], hdr[1] = smuxVersion, smuxCmdPSH
	binary.LittleEndian.PutUint16(hdr[2:], uint16(n))
	binary.LittleEndian.PutUint32(hdr[4:], d.Stream.ID())
	return hdr
}

// writeStream writes p to stream d as PSH frames of at most maxFrameSize,
// each within the peer's window for the stream, as smux's Stream.Write
// would. It waits for window and for room in the send queue until d's
// write deadline passes or d is closed.
func (s *sessionConn) writeStream(d *directStream, p []byte) (int, error) {
	wait := s.beginWrite(d)
	defer wait.end()
	sent := 0
	for len(p) > 0 {
		n, err := s.frameAndQueueRoom(d, len(p), wait)
		if err != nil {
			return sent, err
		}
		hdr := pshHeader(d, n)
		if _, err := s.queueLocked([][]byte{hdr[:], p[:n]}, wait.before); err != nil {
			if s.closed {
				err = s.writeErr()
			}
			return sent, err
		}
		sent += n
		p = p[n:]
	}
	return sent, nil
}

// fillStream queues one PSH frame of stream d whose body read places
// straight into a chunk of the send queue's (sockcopy.Filler): read is
// given room for as many bytes as the frame may carry (frameRoom), and
// the chunk joins the queue with what it read (link). The queue keeps the
// bytes until the peer acknowledges them anyway; written through Write,
// each byte was copied into it from the reader's buffer (without that
// copy, 8 streams on loopback cost the sending side 1-7% less CPU per
// GiB: the bridge on a download, the client on an upload). read runs
// without mu, so that other streams, the flusher and the carriers'
// readers go on meanwhile (with mu held, the bridge spent more than it
// saved, waiting for it); until the frame is queued, its room counts in
// the stream's window and the session's bounds as if it were (reserved).
func (s *sessionConn) fillStream(d *directStream, read func([]byte) (int, error)) (int, error) {
	wait := s.beginWrite(d)
	defer wait.end()
	n, err := s.frameAndQueueRoom(d, min(sendChunk-smuxHeaderLen, maxFrameSize), wait)
	if err != nil {
		return 0, err
	}
	sid := d.Stream.ID()
	w := s.sendWins[sid]
	s.addSent(w, n)
	s.reserved += smuxHeaderLen + n
	c := s.sendq.newChunk()
	s.mu.Unlock()
	m, err := read(c[smuxHeaderLen : smuxHeaderLen+n])
	s.mu.Lock()
	s.reserved -= smuxHeaderLen + n
	// A FIN of the stream queued meanwhile ended the window: nothing
	// more goes, and if the window was dropped, the room went with it.
	// So does a close that has stopped the stream's writes and not yet
	// queued its FIN (or a session that ended): the bytes read are not
	// queued, so the window must not count them (it did, and a client
	// kept them in flight, held from its bound, until the bridge's FIN).
	kept := s.sendWins[sid] == w
	open := kept && !w.finished && !s.closed && !d.closed.Load()
	switch {
	case open:
		s.addSent(w, m-n)
	case kept:
		s.addSent(w, -n)
		if w.finished && w.sent == w.consumed {
			s.forgetSendWin(sid, w)
		}
	}
	if m < n || !open {
		s.spaceCond.Broadcast() // the unused room is free again
	}
	switch {
	case s.closed:
		err = s.writeErr()
	case !open:
		err = io.ErrClosedPipe
	case m > 0:
		hdr := pshHeader(d, m)
		copy(c[:], hdr[:])
		if s.pad.young(hdr[:], m) {
			s.padDue = true
		}
		off := s.placeFrame(hdr[:], m, smuxHeaderLen+m)
		s.sendq.insertLinked(int(off-s.acked), c, smuxHeaderLen+m)
		s.queued(smuxHeaderLen + m)
		return m, err
	}
	s.sendq.freeChunk(c)
	return 0, err
}

// writeErr is a write's error once the session ended: why it ended, or
// io.ErrClosedPipe, as smux's Write says, for a session closed here.
func (s *sessionConn) writeErr() error {
	if err := s.endErr(); err != io.EOF {
		return err
	}
	return io.ErrClosedPipe
}

// wakeWriters wakes whoever waits for room: a deadline passed, a stream
// was closed.
func (s *sessionConn) wakeWriters() {
	s.mu.Lock()
	s.spaceCond.Broadcast()
	s.mu.Unlock()
}

// directStream is an smux stream of a session whose writes take the
// direct send path (writeStream); everything else is smux's.
type directStream struct {
	*smux.Stream
	sc       *sessionConn
	closed   atomic.Bool  // closed for writing, here: writes fail
	deadline atomic.Int64 // write deadline, Unix ns; 0: none
	waiting  atomic.Bool  // a Write is in progress, and may wait
}

func newDirectStream(st *smux.Stream, sc *sessionConn) *directStream {
	return &directStream{Stream: st, sc: sc}
}

// Write writes p to the stream.
func (d *directStream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return d.sc.writeStream(d, p)
}

// Fill writes to the stream what read places in the session's send
// queue (sockcopy.Filler): one frame, up to the stream's window.
func (d *directStream) Fill(read func(p []byte) (int, error)) (int, error) {
	return d.sc.fillStream(d, read)
}

// SetDeadline sets the read and write deadlines.
func (d *directStream) SetDeadline(t time.Time) error {
	d.setWriteDeadline(t)
	return d.Stream.SetDeadline(t)
}

// SetWriteDeadline sets the write deadline.
func (d *directStream) SetWriteDeadline(t time.Time) error {
	d.setWriteDeadline(t)
	return d.Stream.SetWriteDeadline(t)
}

func (d *directStream) setWriteDeadline(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = max(t.UnixNano(), 1)
	}
	if d.deadline.Swap(ns) != ns && d.waiting.Load() {
		d.sc.wakeWriters()
	}
}

// CloseWrite ends the stream's writing: the peer reads EOF, and may go on
// writing.
func (d *directStream) CloseWrite() error {
	d.stopWriting()
	return d.Stream.CloseWrite()
}

// Close closes the stream, and forgets its tuned receive window. A
// bridge forgets the stream's send window then too:
// only a client counts what its closed streams have in flight (the
// client's bound, sessionRoom), and a window kept until the client's FIN
// was kept for good when none came (a client that opens streams and never
// closes them grew the bridge's memory by one window a stream).
func (d *directStream) Close() error {
	d.stopWriting()
	err := d.Stream.Close()
	d.sc.closedHere(d.Stream.ID())
	return err
}

// Abort closes the stream as a reset would: the peer is told first
// (abortStream), and its reads and writes of the stream then fail.
func (d *directStream) Abort() error {
	d.sc.abortStream(d.Stream.ID())
	return d.Close()
}

func (d *directStream) stopWriting() {
	if !d.closed.Swap(true) && d.waiting.Load() {
		d.sc.wakeWriters()
	}
}
