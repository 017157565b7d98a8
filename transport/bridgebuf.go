package transport

import (
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// What a bridge holds for its clients' streams, all sessions together,
// is bounded. smux bounds one session (MaxReceiveBuffer, sessionWindow),
// but a client that uploads towards destinations that do not read (its
// own, say) fills one session's buffers, then opens another session:
// without a bound of the whole, thousands of sessions of 32 MiB each
// would take the bridge's memory, and every user with it.
//
// So the bridge counts, per session, the bytes it has handed smux for
// streams that are open (PSH bodies, seen by a tracker of smux's frames
// in sessionConn.Read) less those the streams' readers took (the
// request, then egress's copy: countedStream); a stream's remainder is
// let go when it closes. While all sessions together hold more than half
// the bound, a session holding more than its fair share (that half
// divided among the sessions holding anything) is not read: its smux
// stops, as at its own cap, and TCP pushes back on its client. A session
// within its share goes on, so one client's stuck uploads cannot stall
// others.

// DefaultMaxBuffered bounds what a bridge holds for streams whose
// destinations are slower than their clients, all sessions together.
const DefaultMaxBuffered = 256 << 20

// bufferPoll is how often a paused session checks whether it may go on.
const bufferPoll = 5 * time.Millisecond

// bridgeBuffers is the bridge's count, shared by its sessions.
type bridgeBuffers struct {
	limit   int64
	held    atomic.Int64 // bytes held, all sessions
	holders atomic.Int64 // sessions holding any
}

// target is half the bound: past it, sessions over their share wait,
// while those within it may still grow to it. So the paused sessions
// hold at most target between them, the others at most target too
// (holders × share), and the whole stays within the bound, two frames
// per session aside: smux reads a frame at once, and each session may
// have read one past its check as the bridge crossed target, and one
// more as it crossed its share.
func (b *bridgeBuffers) target() int64 { return b.limit / 2 }

// share is what one session may hold while the bridge is past target.
func (b *bridgeBuffers) share() int64 { return b.target() / max(b.holders.Load(), 1) }

// streamAcct is one session's count.
type streamAcct struct {
	bb      *bridgeBuffers
	mu      sync.Mutex
	held    int64
	streams map[uint32]*streamCount // open streams
	ended   bool
	// holding is how many of the streams hold at least holdingFrom:
	// those whose readers are slower than their senders. Their windows
	// share the session's room (window.go, grantLimit).
	holding int
	// read lists the streams whose readers took bytes since the
	// client last asked for reads (asked); reads is asked's answer,
	// kept for the next. A client's count (unasked) keeps no list: a
	// bridge never asks.
	read    []uint32
	reads   []streamRead
	unasked bool
	// promised is, on a client, what the windows its new streams were
	// granted with their SYNs in the last promiseFor let the bridge send
	// that has not come yet: counted as if held (grantLimit, newWindow),
	// so that downloads opened at the same moment cannot each be granted
	// a whole initial window before any of them arrives. promises lists
	// those streams, oldest first.
	promised int64
	promises []uint32
}

// streamRead is what the reader of stream sid took, all told.
type streamRead struct{ sid, read uint32 }

// streamCount is one open stream's count.
type streamCount struct {
	held int64  // bytes handed smux and not taken
	read uint32 // bytes its reader took, all told (smux's numRead)
	cut  bool   // its window is cut: the session announces its reads
	// owed: its client asked for its reads, and the session announces
	// them once its reader took them (sessionConn.streamRead).
	owed bool
	// listed: it is on the session's list of streams read (read).
	listed bool
	// promised is what of the window the client granted with its SYN
	// has not come yet, within promiseFor of promisedAt (monoNow)
	// (streamAcct.promised).
	promised   int64
	promisedAt int64
	// aborted: the peer aborted it (sessionConn.peerAborted). Kept here,
	// for as long as the stream is open, and not only in its send
	// window, which is forgotten once its writing ended and was read.
	aborted bool
}

// promiseFor is how long the window a client grants a new stream with its
// SYN counts as held until its bytes come: a round trip, long enough for
// the bridge to have sent it, or to have heard of a cut. A stream whose
// answer takes longer (a long poll, an idle connection) stops counting
// then, so that it does not shrink the windows of the streams that come
// after it.
const promiseFor = int64(time.Second)

// holdingFrom is what a stream must hold to count as holding: a few
// frames a reader has not taken yet are any upload's, a backlog is a
// slow reader's.
const holdingFrom = 256 << 10

func newStreamAcct(bb *bridgeBuffers) *streamAcct {
	return &streamAcct{bb: bb, streams: map[uint32]*streamCount{}}
}

// newClientAcct returns the count of a client's session. A client counts
// what its streams hold as a bridge does, so that downloads its apps
// stopped reading share half of sessionWindow and the others go on in
// the rest (window.go, grantLimit): without it, each held its whole
// window, for as many as the apps paused, in the memory of a phone. Its
// smux's own cap stays far above (clientSessionWindow), so that what the
// bridge sent before a cut came does not stop it. There is no bound of
// the whole: a client has one session.
func newClientAcct() *streamAcct {
	a := newStreamAcct(&bridgeBuffers{limit: math.MaxInt64})
	a.unasked = true
	return a
}

// add changes the count by d. Called with mu held.
func (a *streamAcct) add(d int64) {
	if d == 0 {
		return
	}
	before := a.held
	a.held += d
	a.bb.held.Add(d)
	switch {
	case before == 0 && a.held > 0:
		a.bb.holders.Add(1)
	case before > 0 && a.held == 0:
		a.bb.holders.Add(-1)
	}
}

// setHeld sets what stream c holds to v, keeping holding and the
// session's count up to date. Called with mu held.
func (a *streamAcct) setHeld(c *streamCount, v int64) {
	switch {
	case c.held < holdingFrom && v >= holdingFrom:
		a.holding++
	case c.held >= holdingFrom && v < holdingFrom:
		a.holding--
	}
	a.add(v - c.held)
	c.held = v
}

// frame notes a frame header handed to smux. For a PSH it returns what
// the stream holds now; and it returns what the session holds.
func (a *streamAcct) frame(cmd byte, sid uint32, n int) (held, session int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch cmd {
	case smuxCmdSYN:
		if _, ok := a.streams[sid]; !ok && !a.ended {
			a.streams[sid] = &streamCount{}
		}
	case smuxCmdPSH:
		// Only for open streams: smux drops what comes for a closed one.
		if c, ok := a.streams[sid]; ok {
			if c.promised > 0 {
				d := min(int64(n), c.promised)
				c.promised -= d
				a.promised -= d
			}
			a.setHeld(c, c.held+int64(n))
			return c.held, a.held
		}
	}
	return 0, a.held
}

// grantLimit returns the most the window of any of the session's
// streams may be now (window.go): what was promised counts as held.
func (a *streamAcct) grantLimit() uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire(monoNow())
	return grantLimit(a.held+a.promised, a.holding)
}

// expire ends the promises older than promiseFor at now. Called with mu
// held.
func (a *streamAcct) expire(now int64) {
	for len(a.promises) > 0 {
		c, ok := a.streams[a.promises[0]]
		if ok && c.promised > 0 && now-c.promisedAt < promiseFor {
			return
		}
		if ok {
			a.promised -= c.promised
			c.promised = 0
		}
		a.promises = a.promises[1:]
	}
	a.promises = nil // let the list's memory go
}

// newWindow starts the count of a client's new stream sid, and chooses
// the window the client grants it with the SYN: at most initialWindow,
// less while the session's streams hold, or were promised, much
// (window.go, grantLimit), and then cut, so that the session announces
// its reads. The window counts as promised. It returns the window.
func (a *streamAcct) newWindow(sid uint32) uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended {
		return initialWindow
	}
	now := monoNow()
	a.expire(now)
	win := min(initialWindow, grantLimit(a.held+a.promised, a.holding))
	a.streams[sid] = &streamCount{cut: win < initialWindow, promised: int64(win), promisedAt: now}
	a.promised += int64(win)
	a.promises = append(a.promises, sid)
	return win
}

// isOpen reports whether stream sid is open.
func (a *streamAcct) isOpen(sid uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.streams[sid]
	return ok
}

// setAborted notes that the peer aborted stream sid, if it is open.
func (a *streamAcct) setAborted(sid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.streams[sid]; ok {
		c.aborted = true
	}
}

// aborted reports whether the peer aborted open stream sid.
func (a *streamAcct) aborted(sid uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.streams[sid]
	return ok && c.aborted
}

// setCut notes whether stream sid's window is cut (window.go).
func (a *streamAcct) setCut(sid uint32, cut bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.streams[sid]; ok {
		c.cut = cut
	}
}

// setOwed notes whether the session owes stream sid's client an
// announcement of its reads.
func (a *streamAcct) setOwed(sid uint32, owed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.streams[sid]; ok {
		c.owed = owed
	}
}

// took notes that a stream's reader took n bytes. It returns what the
// reader took all told; whether the session announces the reads itself
// (sessionConn.streamRead), because the stream's window is cut or its
// client asked (owed); and whether the reader took all the stream held.
func (a *streamAcct) took(sid uint32, n int) (read uint32, cut, owed, drained bool) {
	if n <= 0 {
		return 0, false, false, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.streams[sid]
	if !ok {
		return 0, false, false, false
	}
	a.setHeld(c, c.held-min(int64(n), c.held))
	c.read += uint32(n)
	if !c.listed && !a.unasked {
		if len(a.read) >= 2*maxStreamsPerSession {
			a.relist()
		}
		c.listed = true
		a.read = append(a.read, sid)
	}
	return c.read, c.cut, c.owed, c.held == 0
}

// relist drops the closed streams from the list of streams read, which a
// session whose client never asks for reads would otherwise grow by one
// entry per stream. Called with mu held.
func (a *streamAcct) relist() {
	kept := a.read[:0]
	for _, sid := range a.read {
		if _, ok := a.streams[sid]; ok {
			kept = append(kept, sid)
		}
	}
	a.read = kept
}

// asked notes that the client asked for stream asker's reads (a NOP
// naming it): the session owes it an announcement once its reader took
// them, and owes one to every stream that holds bytes its reader has not
// taken yet, since the room the asker waits for may be theirs. It
// returns what the readers of the streams read since the last such ask
// took, all told, for the session to announce; the slice is reused by
// the next call.
func (a *streamAcct) asked(asker uint32) []streamRead {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.streams[asker]; ok {
		c.owed = true
	}
	if a.held > 0 {
		for _, c := range a.streams {
			if c.held > 0 {
				c.owed = true
			}
		}
	}
	a.reads = a.reads[:0]
	for _, sid := range a.read {
		if c, ok := a.streams[sid]; ok {
			c.listed = false
			a.reads = append(a.reads, streamRead{sid, c.read})
		}
	}
	a.read = a.read[:0]
	return a.reads
}

// closed lets go of what a stream still held: smux frees it.
func (a *streamAcct) closed(sid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.streams[sid]; ok {
		a.setHeld(c, 0)
		a.promised -= c.promised
		delete(a.streams, sid)
	}
}

// end lets go of everything: the session is over.
func (a *streamAcct) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ended = true
	clear(a.streams)
	a.holding = 0
	a.promised = 0
	a.promises = nil
	a.add(-a.held)
}

// mayGo reports whether the session may hand smux more bytes.
func (a *streamAcct) mayGo() bool {
	if a.bb.held.Load() <= a.bb.target() {
		return true
	}
	a.mu.Lock()
	h := a.held
	a.mu.Unlock()
	return h <= a.bb.share()
}

// wait returns once the session may hand smux more bytes, or done is
// closed.
func (a *streamAcct) wait(done <-chan struct{}) {
	for !a.mayGo() {
		select {
		case <-done:
			return
		case <-time.After(bufferPoll):
		}
	}
}

// countedStream is a bridge's smux stream whose reads are counted
// (streamAcct.took), and whose close lets go of what it held.
type countedStream struct {
	*directStream
	acct *streamAcct
}

func (c *countedStream) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	c.took(n)
	if err == io.EOF && c.sc.abortedByPeer(c.Stream.ID()) {
		err = ErrStreamAborted
	}
	return n, err
}

// took counts n bytes the stream's reader took, and has the session
// announce them if the stream's window is cut or its client asked.
func (c *countedStream) took(n int) {
	if read, cut, owed, drained := c.acct.took(c.Stream.ID(), n); cut || owed {
		c.sc.streamRead(c.Stream.ID(), read, owed, drained)
	}
}

// WriteTo hands smux's buffers to w as smux does, counting what w took.
func (c *countedStream) WriteTo(w io.Writer) (int64, error) {
	n, err := c.Stream.WriteTo(&tookWriter{w: w, c: c})
	if err == nil && c.sc.abortedByPeer(c.Stream.ID()) {
		err = ErrStreamAborted
	}
	return n, err
}

func (c *countedStream) Close() error {
	// Closed in the count first: a read racing the close then sends no
	// UPD that would track the stream's window again (queueLocked).
	c.acct.closed(c.Stream.ID())
	return c.directStream.Close()
}

// Abort closes the stream as a reset would (directStream.Abort), and lets
// go of what it held as Close does: the embedded Abort would close the
// smux stream only, and the session would count the bytes left unread
// until it ended.
func (c *countedStream) Abort() error {
	c.sc.abortStream(c.Stream.ID())
	return c.Close()
}

type tookWriter struct {
	w io.Writer
	c *countedStream
}

func (t *tookWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	// smux lets go of its buffer whatever the writer took.
	t.c.took(len(p))
	return n, err
}
