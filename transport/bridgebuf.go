package transport

import (
	"io"
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
	streams map[uint32]int64 // open streams: bytes handed smux and not taken
	ended   bool
}

func newStreamAcct(bb *bridgeBuffers) *streamAcct {
	return &streamAcct{bb: bb, streams: map[uint32]int64{}}
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

// frame notes a frame header handed to smux.
func (a *streamAcct) frame(cmd byte, sid uint32, n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch cmd {
	case smuxCmdSYN:
		if _, ok := a.streams[sid]; !ok && !a.ended {
			a.streams[sid] = 0
		}
	case smuxCmdPSH:
		// Only for open streams: smux drops what comes for a closed one.
		if v, ok := a.streams[sid]; ok {
			a.streams[sid] = v + int64(n)
			a.add(int64(n))
		}
	}
}

// took notes that a stream's reader took n bytes.
func (a *streamAcct) took(sid uint32, n int) {
	if n <= 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if v, ok := a.streams[sid]; ok {
		d := min(int64(n), v)
		a.streams[sid] = v - d
		a.add(-d)
	}
}

// closed lets go of what a stream still held: smux frees it.
func (a *streamAcct) closed(sid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if v, ok := a.streams[sid]; ok {
		delete(a.streams, sid)
		a.add(-v)
	}
}

// end lets go of everything: the session is over.
func (a *streamAcct) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ended = true
	clear(a.streams)
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
	c.acct.took(c.Stream.ID(), n)
	return n, err
}

// WriteTo hands smux's buffers to w as smux does, counting what w took.
func (c *countedStream) WriteTo(w io.Writer) (int64, error) {
	return c.Stream.WriteTo(&tookWriter{w: w, c: c})
}

func (c *countedStream) Close() error {
	err := c.directStream.Close()
	c.acct.closed(c.Stream.ID())
	return err
}

type tookWriter struct {
	w io.Writer
	c *countedStream
}

func (t *tookWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	// smux lets go of its buffer whatever the writer took.
	t.c.acct.took(t.c.Stream.ID(), len(p))
	return n, err
}
