package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// A session is the durable byte stream smux runs over. It outlives the
// connections that carry it (carriers): a carrier may end because its
// byte budget is spent, because a middlebox froze it, or because the
// network changed, and the session goes on over the next one. The layers:
//
//	smux v2: streams with per-stream flow control
//	sessionConn: one reliable byte stream per direction, with offsets;
//	             bytes are kept until the peer acknowledges them
//	carriers: authenticated TLS connections, in the order they joined,
//	          each carrying frames (framing.go)
//
// Sending: every byte smux writes gets the next offset and stays in sendq
// until the peer's ACK covers it. The flusher writes on the oldest carrier
// that is neither dead nor retired; a SEEK frame says where its DATA
// starts. When a carrier dies, sending goes back to the last acknowledged
// offset on the next carrier. When a carrier's budget is nearly spent, the
// sender writes RETIRE and moves on; the peer answers RETIRE, and the
// carrier is closed.
//
// Receiving: each carrier has a reader goroutine. DATA is placed by
// offset: bytes already received are dropped, the rest are appended. DATA
// that starts beyond what was received (the carrier that held the bytes
// before them is slower, or lost them) waits a little for them, then is
// dropped and RESEND asks the sender to go back. So nothing is lost,
// duplicated or reordered, whichever carriers deliver.
type sessionConn struct {
	client bool
	log    *slog.Logger
	linger time.Duration // how long the session survives without carriers
	onEnd  func()        // called once, outside the lock, when the session ends

	mu sync.Mutex
	// Who waits for what: the flusher for something to send, smux's
	// writes for room in the send queue, smux's reads for received bytes,
	// carrier readers for room (or for the bytes before a gap). Separate
	// conditions, so that the hot paths wake only the one that waits.
	sendCond, spaceCond, readCond, rspaceCond *sync.Cond

	// Sending. sendq holds the bytes [acked, written); next is the offset
	// of the first byte not yet sent on the current carrier.
	sendq sendQueue
	// reserved is the room of the frames streams are reading into
	// chunks of their own, without mu (fillStream): counted in the
	// queue's bounds as if queued.
	reserved int
	// maxUnsent bounds the bytes of streams' data queued and not yet
	// handed to a carrier, and unsentWaiters counts the writers waiting
	// for them to shrink (backlog.go).
	maxUnsent     int
	writeChunk    int // the most data in one write to a carrier (backlog.go)
	unsentWaiters int
	lowat         int     // the bound of carriers' sockets
	rateKnown     bool    // the bounds follow a measured rate
	fixedRate     float64 // if set, the rate the bounds follow (tests)
	acked         uint64
	written       uint64
	next          uint64
	padDue        bool  // a young stream's bytes are queued: pad the next flush
	lastSend      int64 // monoNow when smux last wrote
	lastRecv      int64 // monoNow when DATA last arrived
	pad           padPolicy

	// sentMax is the end of what any carrier took (next only moves back
	// for a resend); frontEnd, inserted and places say where frames
	// went in the queue: in front of the bytes not yet sent, or at the
	// back (prio.go).
	sentMax  uint64
	frontEnd uint64
	inserted uint64
	places   map[uint32]*streamPlace
	// backEnds[backHead:] are the ends of frames appended to the
	// queue and not yet all sent, less inserted then: the places frontAt
	// may put a frame, past what carriers took.
	backEnds []uint64
	backHead int

	// Receiving. rbuf[rstart:] are received bytes smux has not read;
	// recvd is the offset of the end of them.
	rbuf          []byte
	rstart        int
	rbusy         bool  // a carrier reader is filling rbuf[len:] (readInto)
	offered       offer // a DATA body Read may read from its carrier (readInto)
	readWaiting   bool  // Read waits for bytes
	readPaused    bool  // Read waits for the bridge's bound (acct)
	recvd         uint64
	ackSent       uint64
	ackEvery      uint64
	ackDue        bool
	heldAckAt     int64 // monoNow of the last ACK tellHeld sent
	ackTimer      bool  // an ACK is scheduled
	pingDue       bool
	pongDue       bool      // the ACK due answers a PING: size it as h2's PING ACK
	pingAt        time.Time // when the outstanding PING was queued
	pingVia       *carrier  // the carrier it was queued on
	pingArrived   int64     // the watched carrier's arrived bytes when it was queued, then when it left
	resendDue     bool
	resendFrom    uint64
	resendAskedAt time.Time
	drops         []uint32 // DROP frames to send
	// pingGap is the silence after which the client's PING asks
	// whether the carrier is still there while a reply may be on its
	// way (checkFrozen): pingAfter at first, twice as long each time
	// one is answered with nothing moved since (pingForMove: the
	// outstanding PING is such a one), back to pingAfter when
	// something moves (gapMove: lastMove when it was set).
	pingGap     time.Duration
	gapMove     int64
	pingForMove bool
	// Frames of our own for our smux to read, never sent: a new
	// stream's window at the bridge (WriteBuffers). inFrame tracks where
	// smux is in the frames it reads, so that ours go between two.
	ownFrames []byte
	ownLeft   int // bytes of the own frame smux is reading
	inFrame   smuxFrameTracker
	// acct counts what the streams we receive hold (bridgebuf.go): a
	// bridge's, towards destinations slower than their clients, and a
	// client's, for apps slower than the bridge.
	acct *streamAcct
	// windows tunes the windows of the streams we receive (window.go);
	// rtt is the newest carrier's round trip, in nanoseconds.
	windows windowTuner
	rtt     int64
	// sendWins are the peer's windows for the streams we send on, for
	// the direct send path (streamsend.go).
	sendWins map[uint32]*sendWindow
	// inflight is what the send windows count as sent and not yet read
	// by the peer's streams, all together (sessionRoom).
	inflight int64

	carriers    []*carrier // attach order
	remote      net.Addr   // the peer's address on the newest carrier
	local       net.Addr
	lingerTimer *time.Timer
	closed      bool
	err         error         // why the session ended
	done        chan struct{} // closed when the session ends
	ended       chan struct{} // closed when the peer was told and every carrier closed
	flusherDone chan struct{}
	events      chan struct{} // poked on carrier changes (the client's manager listens)
	// quiet is set while the client's manager sleeps (quietWait): the
	// next write or DATA in (delivered) clears it and pokes the manager.
	quiet atomic.Bool
	// checks counts checkFrozen's calls: the wake-ups of whoever looks
	// after the session (TestIdleSessionSleeps).
	checks atomic.Int64
}

// offer is the body of a DATA frame, the next bytes in order, that Read
// reads from its carrier's TLS straight into smux's buffer. Guarded by
// the session's mu.
type offer struct {
	c       *carrier // nil: nothing on offer
	left    int      // bytes of the body not read yet
	reading bool     // Read is reading it (without the lock)
	err     error    // that read failed: the carrier's reader ends it
}

const (
	sessionIDLen = 16
	// sendLimit bounds the bytes a session keeps for resending: past it,
	// smux's writes wait for acknowledgements. It must exceed a long
	// path's bandwidth-delay product (5 MB at 200 Mbit/s and 200 ms),
	// or it, not the window, caps a stream.
	sendLimit = 8 << 20
	// recvLimit bounds received bytes smux has not read yet.
	recvLimit = 512 << 10
	// minOffer is the smallest DATA body readInto offers to Read. An
	// offer saves a copy but costs a wake-up of the carrier's reader
	// once Read has taken the body: for small bodies (requests, replies,
	// interactive traffic) the copy is cheaper (BenchmarkSession: opening
	// a stream took 10% longer with every body offered).
	minOffer = 8 << 10
	// minWriteChunk and maxWriteChunk bound the data in one write to a
	// carrier: the floor (a full TLS record) on any path, the cap on a
	// fast one (backlog.go, writeTime).
	minWriteChunk = 16 << 10
	maxWriteChunk = 256 << 10
	// defaultAckEvery and ackDelay: an ACK goes out once this many bytes
	// arrived since the last, or ackDelay after the first of them, or with
	// any frame going the other way. An ACK only frees the sender's queue
	// (TCP does the rest), so one per eighth of sendLimit keeps a sender
	// going. Each one wakes a chain of goroutines on both sides: on a
	// 60 ms, 100 Mbit/s link, ACKs every 256 KiB or 20 ms made the
	// bridge's CPU per GiB of a download three times a TLS relay's, and
	// 1 MiB or 100 ms cut it by a quarter (issue 9).
	defaultAckEvery = sendLimit / 8
	ackDelay        = 100 * time.Millisecond
	// gapWait is how long DATA that starts beyond the received bytes waits
	// for the carrier holding the bytes before it.
	gapWait = time.Second
	// Budget accounting. Each TLS record costs 22 bytes besides its
	// content (header 5, content type 1, tag 16), and early records hold
	// about 1.2 KB; retireReserve keeps room for the RETIRE frame.
	tlsRecordOverhead = 22
	retireReserve     = 64
	minBudgetChunk    = 512
	// DefaultSessionLinger is how long a session waits for a new carrier
	// after its last one ended, on both sides.
	DefaultSessionLinger = 2 * time.Minute
)

// sessionID names a session to the bridge. Random, and sent only inside
// the encrypted client opening.
type sessionID [sessionIDLen]byte

var (
	errSessionClosed = errors.New("transport: session closed")
	errPeerClosed    = errors.New("transport: the bridge ended the session")
	errNoCarrier     = errors.New("transport: no connection to the bridge for too long: check your network; the session was dropped")
	errCarrierFrozen = errors.New("transport: connection stopped making progress")
	errCarrierDrop   = errors.New("transport: the peer dropped this connection")
	errBadOffset     = errors.New("transport: peer acknowledged bytes never sent")
	errIdleNoCarrier = errors.New("transport: the session had no stream open when it lost its last connection (the bridge closes idle ones as its website would): the next stream opens a new session")
)

// countingConn counts the bytes that cross a carrier's TCP connection,
// TLS handshake and record overhead included: a budget is in these bytes.
//
// Between batch and flush (flushLoop's write), it keeps full TLS records
// and sends them with the next write that is not one, or at flush: one
// write for what crypto/tls writes record by record. A path pays per
// write (a system call, a segment, an acknowledgement, on loopback or a
// LAN) what it need not pay per record: a 64 KiB write in four took 11%
// more CPU per byte, client and bridge together, than in one. Only
// flushLoop writes full records; anything else (a close_notify, a CLOSE,
// the tail of flushLoop's own write) is small, and sends what is kept
// ahead of itself, so nothing overtakes a kept record and nothing waits
// for a flush that its writer does not make.
type countingConn struct {
	net.Conn
	read, written atomic.Int64

	mu       sync.Mutex // held while writing
	batching bool
	pending  *[]byte // full records kept, from writeBufs

	// For sealingConn: the writes so far (after the handshake, TLS
	// writes each record in one), and the next write, kept when asked
	// for (captureNext). Once the sealer took over (sealed), Write
	// refuses what TLS would still write: its record numbers, and so
	// its nonces, are the sealer's now, and a nonce used twice would
	// give away the key's authenticator (an alert TLS sends when the
	// peer's records do not open, say, which anyone on the path can
	// cause).
	writes     uint64
	capturing  bool
	captured   []byte
	capturedAt uint64 // writes, the kept one included
	sealed     bool
}

var errWriteAfterSealing = errors.New("transport: TLS wrote after the sealer took over its records")

// fullRecord is the wire size from which a record is full: a TLS 1.3
// record of 16 KiB of plaintext is 16,406 bytes.
const fullRecord = 1 << 14

// writeBufs holds the buffers of one write to a carrier: the frames the
// flusher composes, and the full records its carrier keeps (batch). A
// session holds them only while it writes, so a bridge's idle sessions
// hold none.
var writeBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxWriteWire)
	return &b
}}

// maxWriteWire is the most a flusher's write puts on the wire: its frames
// and their records' overhead.
const maxWriteWire = maxWriteChunk + maxWriteChunk/maxFrameBody*tlsRecordOverhead + 1024

// putWriteBuf returns b, holding buf's bytes, to writeBufs, unless it grew
// past twice the usual size.
func putWriteBuf(buf *[]byte, b []byte) {
	if cap(b) <= 2*maxWriteWire {
		*buf = b[:0]
		writeBufs.Put(buf)
	}
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := sockcopy.Read(c.Conn, p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sealed {
		return 0, errWriteAfterSealing
	}
	c.writes++
	if c.capturing {
		c.capturing = false
		c.captured, c.capturedAt = bytes.Clone(p), c.writes
	}
	return c.writeLocked(p)
}

// writeSealed writes records sealingConn sealed.
func (c *countingConn) writeSealed(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeLocked(p)
}

func (c *countingConn) writeLocked(p []byte) (int, error) {
	if c.batching && len(p) >= fullRecord {
		if c.pending == nil {
			c.pending = writeBufs.Get().(*[]byte)
		}
		*c.pending = append(*c.pending, p...)
		c.written.Add(int64(len(p)))
		return len(p), nil
	}
	if c.pending != nil {
		*c.pending = append(*c.pending, p...)
		c.written.Add(int64(len(p)))
		if err := c.writePendingLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n, err := sockcopy.Write(c.Conn, p)
	c.written.Add(int64(n))
	return n, err
}

// captureNext keeps a copy of the next write (see takeCaptured).
func (c *countingConn) captureNext() {
	c.mu.Lock()
	c.capturing = true
	c.mu.Unlock()
}

// takeCaptured returns the write captureNext kept (nil if none came) and the
// number of writes up to and including it.
func (c *countingConn) takeCaptured() ([]byte, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec := c.captured
	c.captured = nil
	return rec, c.capturedAt
}

// seal ends TLS's writes (Write refuses them from now) and returns how
// many it made.
func (c *countingConn) seal() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sealed = true
	return c.writes
}

// batch starts keeping full records.
func (c *countingConn) batch() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

// flush stops keeping records and sends those kept.
func (c *countingConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	return c.writePendingLocked()
}

func (c *countingConn) writePendingLocked() error {
	if c.pending == nil {
		return nil
	}
	p := c.pending
	c.pending = nil
	_, err := sockcopy.Write(c.Conn, *p)
	putWriteBuf(p, *p)
	return err
}

// closeWrite sends the records kept, then the FIN, and reports whether
// both went. It waits for a write in progress: the caller sets a write
// deadline first if the peer may have stopped reading.
func (c *countingConn) closeWrite() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batching = false
	return c.writePendingLocked() == nil && halfClose(c.Conn)
}

// (No NetConn method: readAvailable must not reach around the count.)

// monoBase anchors monoNow. The times a session keeps of its carriers'
// traffic are read from the monotonic clock alone: time.Since reads only
// that clock where time.Now reads the wall clock too (a frame cost three
// or four time.Now, 1.3% of the client's CPU in a download), and a step
// of the wall clock (NTP, a phone taking the network's time) must not
// make a carrier look frozen, or a frozen one fresh.
var monoBase = time.Now()

// monoNow returns the monotonic clock's nanoseconds since monoBase.
func monoNow() int64 { return int64(time.Since(monoBase)) }

// monoAt returns t (with its monotonic reading, as time.Now and tickers
// give) as monoNow would have at t.
func monoAt(t time.Time) int64 { return int64(t.Sub(monoBase)) }

// carrier is one authenticated TLS connection carrying a session.
type carrier struct {
	seq    uint32
	conn   net.Conn // TLS, over raw
	raw    *countingConn
	budget int // bytes each way, handshake included; 0: none
	rtt    time.Duration
	// resumed: its TLS handshake resumed an earlier carrier's session
	// (the client's view; tickets.go).
	resumed bool
	joined  int64 // monoNow when it joined the session
	// finish, when not nil, reads the rest of the server's opening
	// (proof and status), which the client did not wait for before it
	// sent (opened.finish); readLoop calls it first.
	finish func() error

	lastRecv atomic.Int64 // monoNow of the last frame received
	lastData atomic.Int64 // monoNow of the last DATA received
	lastSent atomic.Int64 // monoNow of the last DATA sent

	// readDone is closed when readLoop(c) returns (made by attach).
	readDone chan struct{}

	// Guarded by the session's mu.
	dead        bool
	sendRetired bool // we sent RETIRE
	peerRetired bool // the peer sent RETIRE
	needSeek    bool // the next DATA we send on it needs a SEEK first
	rpos        uint64
	skipGap     bool     // a gap timed out: drop DATA beyond it until a SEEK
	waitingRoom bool     // its reader waits for room (waitRoom)
	rate        sendRate // how fast it sends (backlog.go)
	// sentDrops are the carriers a client's DROPs on this one named
	// (the last maxSentDrops): if it fails, they may not have arrived,
	// and go again on the next (carrierEnded).
	sentDrops []uint32
	// fr reads c's frames: readLoop's reader, which Read borrows while
	// it reads an offered body and the DATA frames after it
	// (readOffered). next is the header of a frame Read read that way
	// and left to readLoop (any other frame), or the error reading it.
	fr   *frameReader
	next nextHeader
}

// nextHeader is a frame header read by Read for readLoop (carrier.next).
type nextHeader struct {
	set bool
	typ byte
	n   int
	err error
}

// spent returns the larger share of the budget used by either direction.
func (c *carrier) spent() float64 {
	if c.budget <= 0 {
		return 0
	}
	return float64(max(c.raw.read.Load(), c.raw.written.Load())) / float64(c.budget)
}

func newSessionConn(client bool, linger time.Duration, log *slog.Logger) *sessionConn {
	s := &sessionConn{
		client:      client,
		log:         log,
		linger:      orDefault(linger, DefaultSessionLinger),
		ackEvery:    defaultAckEvery,
		maxUnsent:   startUnsent,
		writeChunk:  startWriteChunk,
		lowat:       startLowat,
		done:        make(chan struct{}),
		ended:       make(chan struct{}),
		flusherDone: make(chan struct{}),
		events:      make(chan struct{}, 1),
	}
	s.windows.limit = sessionWindow
	if client {
		s.windows.limit = clientSessionWindow
	}
	s.inFrame.onHeader = s.peerFrame
	s.inFrame.onUpdate = s.peerUpdate
	s.sendCond = sync.NewCond(&s.mu)
	s.spaceCond = sync.NewCond(&s.mu)
	s.readCond = sync.NewCond(&s.mu)
	s.rspaceCond = sync.NewCond(&s.mu)
	// Until its first carrier joins, a session is as good as one that
	// lost its last.
	s.lingerTimer = time.AfterFunc(s.linger, func() { s.end(errNoCarrier, false) })
	go s.flushLoop()
	return s
}

// poke tells the manager something changed. Never blocks.
func (s *sessionConn) poke() {
	select {
	case s.events <- struct{}{}:
	default:
	}
}

// attach adds c, whose peer has received peerRecvd bytes of ours, and
// returns false if the session is over. The caller then runs readLoop(c).
func (s *sessionConn) attach(c *carrier, peerRecvd uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	c.needSeek = true
	// A carrier's socket starts with the bound the session's last
	// carrier ended with, or, the session's first, with the floor,
	// until its rate is known (backlog.go).
	c.rate.lowat = s.lowat
	limitUnsent(c.raw, s.lowat)
	c.readDone = make(chan struct{})
	c.joined = monoNow()
	s.remote, s.local = c.raw.RemoteAddr(), c.raw.LocalAddr()
	if c.rtt > 0 {
		s.rtt = int64(c.rtt)
	}
	c.lastRecv.Store(c.joined)
	if err := s.ackedTo(peerRecvd); err != nil {
		return false
	}
	if c.budget > 0 {
		// Acknowledge often enough that a carrier's worth of bytes is
		// never all unacknowledged when it ends.
		s.ackEvery = uint64(max(c.budget/4, 1024))
	}
	s.carriers = append(s.carriers, c)
	if s.lingerTimer != nil {
		s.lingerTimer.Stop()
		s.lingerTimer = nil
	}
	s.wakeAll()
	// A bridge's check of a session that lingered sleeps until a
	// carrier joins (quietWait).
	s.wake()
	return true
}

// ackedTo records that the peer has every byte before off.
func (s *sessionConn) ackedTo(off uint64) error {
	if off > s.written {
		return errBadOffset
	}
	if off <= s.acked {
		return nil
	}
	n := off - s.acked
	s.sendq.drop(int(n))
	s.acked = off
	if s.next < off {
		// The peer has bytes we have not sent on this carrier (another
		// carrier delivered them before it died): skip them, and tell
		// the receiver where the next DATA starts.
		s.next = off
		s.sentMax = max(s.sentMax, off)
		for _, c := range s.carriers {
			c.needSeek = true
		}
		s.sendCond.Signal()
	}
	s.spaceCond.Broadcast()
	return nil
}

// wakeAll wakes every waiter: for the rarer changes (carriers joining or
// ending, the session ending).
func (s *sessionConn) wakeAll() {
	s.sendCond.Broadcast()
	s.spaceCond.Broadcast()
	s.readCond.Broadcast()
	s.rspaceCond.Broadcast()
}

// unacked returns how many bytes wait for the peer's acknowledgement.
func (s *sessionConn) unacked() int { return s.sendq.n }

// Write queues p for sending. It blocks while sendLimit bytes are
// unacknowledged.
func (s *sessionConn) Write(p []byte) (int, error) {
	return s.WriteBuffers([][]byte{p})
}

// WriteBuffers queues one smux frame given as header and data (smux uses
// it when the conn has it, which saves it a copy).
func (s *sessionConn) WriteBuffers(v [][]byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queueLocked(v, nil)
}

// queueLocked is WriteBuffers with mu held. While the send queue is full
// it waits on spaceCond; if abort is not nil, it is asked after each
// wake-up, and a non-nil answer ends the wait with that error and
// nothing queued.
func (s *sessionConn) queueLocked(v [][]byte, abort func() error) (int, error) {
	total := 0
	for _, b := range v {
		total += len(b)
	}
	// The wait comes first: it lets go of mu, and what is decided before
	// it (the window an UPD announces) may be stale after it. An UPD
	// tuned before a wait, during which the stream's window was cut (its
	// reader stuck, the cut sent at once by queueUPD), went out after
	// the cut and undid it. A rewritten UPD is as long as smux's.
	if err := s.waitQueueRoom(total, abort); err != nil {
		return 0, err
	}
	if len(v) == 2 {
		if sid, consumed, ok := parseSmuxUPD(v[0], v[1]); ok {
			if s.closedAlready(sid) {
				// A read that raced the stream's close here: the
				// stream is gone, its window with it.
				return total, nil
			}
			// Our smux's UPD: announce the stream's tuned window, or
			// hold it back (window.go).
			win, send := s.windows.update(sid, consumed, monoNow(), s.rtt, s.mayGrowWindows(), s.grantLimit())
			if s.acct != nil {
				s.acct.setCut(sid, s.windows.isCut(sid))
			}
			if !send {
				return total, nil
			}
			var upd [smuxHeaderLen + 8]byte
			v = [][]byte{appendSmuxUPD(upd[:0], v[0][0], v[0][4:8], consumed, win)}
		}
	}
	if len(v) > 0 {
		hdr := v[0]
		if len(v) == 1 && len(hdr) >= smuxHeaderLen {
			hdr = hdr[:smuxHeaderLen]
		}
		if s.pad.young(hdr, total-smuxHeaderLen) {
			s.padDue = true
		}
	}
	if len(v) > 0 {
		s.queueAt(s.placeFrame(v[0], total-smuxHeaderLen, total), v...)
		s.queuedFrame(v[0], total-smuxHeaderLen)
	}
	s.queued(total)
	if s.client && len(v) > 0 && len(v[0]) >= smuxHeaderLen && v[0][1] == smuxCmdSYN {
		// Announce the new stream's receive window at once: smux lets
		// the bridge have only 256 KiB of it in flight until our first
		// read of the stream is announced, a round trip after the
		// reply, and a download over a long path lost that round trip
		// (BenchmarkLongLink: 0.91 of a TCP connection's rate, 0.99
		// with this). It is the initial window; it grows from there
		// (window.go); while the streams' backlogs fill the session's
		// room, it is as small as the session can give (grantLimit),
		// and the session announces the stream's reads itself: each
		// new download an app does not read would otherwise add a
		// whole initial window to the client's memory before a cut
		// could come back.
		sid := binary.LittleEndian.Uint32(v[0][4:8])
		win := uint32(initialWindow)
		if s.acct != nil {
			// Count what the new stream holds (bridgebuf.go).
			win = s.acct.newWindow(sid)
		}
		s.windows.opened(sid, win, monoNow())
		upd := appendSmuxUPD(nil, v[0][0], v[0][4:8], 0, win)
		s.queueAt(s.placeFrame(upd, len(upd)-smuxHeaderLen, len(upd)), upd)
		s.queued(len(upd))
		// And the other way: tell our smux the bridge's window for the
		// stream (every bridge of this protocol version grants at least
		// initialWindow at once, PROTOCOL.md §6.5), as if the bridge had
		// announced it. smux lets us have only 256 KiB in flight until
		// the bridge's first UPD, a round trip after the SYN; a
		// fast-open upload waited for it (BenchmarkLongLinkUpload: 0.91
		// of TCP's rate). Only our smux reads it; the bridge's own UPD,
		// later in the session stream, supersedes it.
		s.ownFrames = appendSmuxUPD(s.ownFrames, v[0][0], v[0][4:8], 0, initialWindow)
		if s.readWaiting {
			s.readCond.Signal()
		}
	}
	return total, nil
}

// waitQueueRoom waits while the send queue has no room for total bytes
// more: while sendLimit bytes are unacknowledged. If abort is not nil, it
// is asked after each wake-up, and a non-nil answer ends the wait with
// that error. Called with mu held.
func (s *sessionConn) waitQueueRoom(total int, abort func() error) error {
	for s.queueFull(total) {
		if abort != nil {
			if err := abort(); err != nil {
				return err
			}
		}
		s.spaceCond.Wait()
	}
	if s.closed {
		return s.endErr()
	}
	return nil
}

// queueFull reports whether total bytes more would take the send queue
// past sendLimit, which waitQueueRoom waits for. Called with mu held.
func (s *sessionConn) queueFull(total int) bool {
	return !s.closed && s.unacked()+s.reserved > 0 && s.unacked()+s.reserved+total > sendLimit
}

// queued notes n bytes just pushed to the send queue, and wakes the
// flusher. Called with mu held.
func (s *sessionConn) queued(n int) {
	s.written += uint64(n)
	s.lastSend = monoNow()
	s.sendCond.Signal()
	s.wake()
}

// wake pokes the client's manager if it sleeps (quietWait).
func (s *sessionConn) wake() {
	if s.quiet.Load() && s.quiet.CompareAndSwap(true, false) {
		s.poke()
	}
}

// Read returns received bytes in order: those in the receive buffer,
// else the body of a DATA frame on offer (readInto), read from its
// carrier's TLS straight into p.
func (s *sessionConn) Read(p []byte) (int, error) {
	if s.acct != nil && !s.acct.mayGo() {
		// The bridge holds more than its bound, and this session more
		// than its share: smux waits, as at its own cap. A DATA body
		// offered to Read goes back to its carrier's reader, which
		// reads on into the receive buffer (offer).
		s.mu.Lock()
		s.readPaused = true
		s.rspaceCond.Broadcast()
		s.mu.Unlock()
		s.acct.wait(s.done)
		s.mu.Lock()
		s.readPaused = false
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.read(p)
	if n > 0 {
		// The client places frames of its own between the peer's; the
		// bridge counts what its streams hold (acct).
		s.inFrame.track(p[:n])
	}
	return n, err
}

// peerFrame notes a frame of the peer's handed to smux. Called with mu
// held.
func (s *sessionConn) peerFrame(cmd byte, sid uint32, n int) {
	switch cmd {
	case smuxCmdFIN:
		s.windows.ended(sid)
		s.peerFinished(sid)
	case smuxCmdSYN:
		if !s.client {
			// The client's stream: smux's window until its UPD.
			s.sendWin(sid, smuxInitialPeerWindow)
		}
	case smuxCmdNOP:
		switch {
		case sid&streamAbortFlag != 0:
			s.peerAborted(sid &^ streamAbortFlag)
		case sid != 0 && !s.client && s.acct != nil:
			s.readsAsked(sid)
		}
	}
	if s.acct != nil {
		held, session := s.acct.frame(cmd, sid, n)
		if cmd == smuxCmdPSH && held > 0 && (held >= holdingFrom || session > grantBudget) {
			// A stream with a backlog, or a session short of room:
			// the stream's window may have to be cut (window.go).
			limit := s.acct.grantLimit()
			if consumed, cut := s.windows.shrink(sid, limit, monoNow()); cut {
				s.queueUPD(sid, consumed, limit)
				s.acct.setCut(sid, true)
			}
		}
	}
}

// grantLimit returns the most the window of a stream we receive may be
// now: what the session's room allows (grantLimit), on a bridge and on a
// client alike. Called with mu held.
func (s *sessionConn) grantLimit() uint32 {
	if s.acct == nil {
		return math.MaxUint32
	}
	return s.acct.grantLimit()
}

// streamRead announces the reads of bridge stream sid when smux would
// not (windowTuner.sessionRead): when its window is cut, or its client
// asked for them (owed; drained: its reader took all it held). read is
// what its reader took, all told.
func (s *sessionConn) streamRead(sid, read uint32, owed, drained bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	step := uint32(math.MaxUint32)
	if owed {
		step = askedStep
		if drained {
			step = 1
		}
	}
	if s.announceRead(sid, read, s.grantLimit(), monoNow(), step) && owed {
		s.acct.setOwed(sid, false)
	}
}

// readsAsked answers the client's NOP naming stream asker, which its
// client's bound holds (streamsend.go, sessionRoom): it announces the
// reads of every stream read since the last such NOP, and those of the
// asker and of every stream holding unread bytes as soon as their
// readers take them (streamAcct.asked). Called with mu held.
func (s *sessionConn) readsAsked(asker uint32) {
	limit, now := s.acct.grantLimit(), monoNow()
	for _, r := range s.acct.asked(asker) {
		s.announceRead(r.sid, r.read, limit, now, 1)
	}
}

// closedAlready reports whether stream sid, which the tuner does not
// know, was closed here: an UPD for it would start its window again,
// and nothing would end it. Called with mu held.
func (s *sessionConn) closedAlready(sid uint32) bool {
	if _, tuned := s.windows.streams[sid]; tuned || s.acct == nil {
		return false
	}
	return !s.acct.isOpen(sid)
}

// announceRead queues an UPD of the session's own announcing that bridge
// stream sid's reader took read bytes, all told, if the tuner so decides
// (windowTuner.sessionRead), and reports whether it did. Called with mu
// held.
func (s *sessionConn) announceRead(sid, read, limit uint32, now int64, step uint32) bool {
	if s.closedAlready(sid) {
		return false // closed here since its reader took the bytes
	}
	win, send := s.windows.sessionRead(sid, read, limit, now, step)
	if !send {
		return false
	}
	s.queueUPD(sid, read, win)
	if !s.windows.isCut(sid) {
		s.acct.setCut(sid, false)
	}
	return true
}

// queueUPD queues an UPD of the session's own for the peer's smux
// (stream sid: consumed bytes read, window win), whole, between the
// frames already queued. Called with mu held.
func (s *sessionConn) queueUPD(sid, consumed, win uint32) {
	s.queueFrame(appendSmuxUPD(nil, smuxVersion, binary.LittleEndian.AppendUint32(nil, sid), consumed, win))
}

// queueFrame queues a small smux frame of the session's own, whole,
// between the frames already queued, whatever the send queue holds.
// Called with mu held.
func (s *sessionConn) queueFrame(f []byte) {
	if s.closed {
		return
	}
	s.queueAt(s.placeFrame(f, len(f)-smuxHeaderLen, len(f)), f)
	s.queued(len(f))
}

// mayGrowWindows reports whether streams' windows may grow: on a bridge,
// not while all sessions together hold more than half its bound
// (bridgebuf.go). Called with mu held.
func (s *sessionConn) mayGrowWindows() bool {
	return s.acct == nil || s.acct.bb.held.Load() <= s.acct.bb.target()
}

// read is Read, but for the tracking of smux's frames. Called with mu
// held.
func (s *sessionConn) read(p []byte) (int, error) {
	for {
		if s.ownLeft == 0 && len(s.ownFrames) > 0 && s.inFrame.between() {
			// A frame of ours goes between two of the peer's, whole:
			// smux reads a header, then its body.
			s.ownLeft = smuxHeaderLen + int(binary.LittleEndian.Uint16(s.ownFrames[2:4]))
		}
		if s.ownLeft > 0 && !s.closed {
			n := copy(p[:min(len(p), s.ownLeft)], s.ownFrames)
			s.ownFrames, s.ownLeft = s.ownFrames[n:], s.ownLeft-n
			if len(s.ownFrames) == 0 {
				s.ownFrames = nil
			}
			return n, nil
		}
		if len(s.rbuf) > s.rstart {
			n := copy(p, s.rbuf[s.rstart:])
			s.rstart += n
			if s.rstart == len(s.rbuf) && !s.rbusy {
				s.rbuf, s.rstart = s.rbuf[:0], 0
			}
			s.rspaceCond.Broadcast()
			return n, nil
		}
		if o := &s.offered; o.c != nil && o.left > 0 && !o.reading && o.err == nil && !o.c.dead && !s.closed {
			if n := s.readOffered(p); n > 0 {
				return n, nil
			}
			continue
		}
		if s.closed {
			return 0, s.endErr()
		}
		s.readWaiting = true
		s.readCond.Wait()
		s.readWaiting = false
	}
}

// readOffered reads what one read of the carrier's TLS gives of the
// offered body into p, and returns how many bytes it placed. Called with
// mu held; it lets go of it while it reads (the carrier's reader waits
// for it meanwhile, so nothing else reads that TLS).
func (s *sessionConn) readOffered(p []byte) int {
	o := &s.offered
	c := o.c
	o.reading = true
	left := o.left
	s.mu.Unlock()
	n, left, next, err := chainRead(c, p, left)
	s.mu.Lock()
	o.reading = false
	now := monoNow()
	if n > 0 || next.set {
		c.lastRecv.Store(now)
	}
	if n > 0 {
		c.lastData.Store(now)
		c.rpos += uint64(n)
		s.recvd += uint64(n)
		s.delivered(now)
	}
	o.left = left
	c.next = next
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		o.err = err
	}
	if o.left == 0 || o.err != nil {
		s.rspaceCond.Broadcast() // the carrier's reader goes on
	}
	return n
}

// chainRead reads into p the offered body of which left bytes remain, and
// while p has room once it ended, the DATA frames after it on c (PAD
// frames between them are dropped): their bytes come next in order,
// since nothing else delivers while c's body is on offer. smux reads a
// frame's header and body with exact lengths, so p has room only for
// bytes smux waits for anyway: reading on here blocks no longer than its
// next Read would, and saves the carrier's reader a wake-up (and Read
// one) for each DATA frame, four per 64 KiB smux frame. It returns the
// bytes it placed, what remains of the body it stopped in, and the
// header of a frame of another kind that ended the chain (left to
// readLoop), or the error reading one. It runs without mu; c's reader
// waits meanwhile (offer), so it has c's TLS and frame reader to itself.
func chainRead(c *carrier, p []byte, left int) (int, int, nextHeader, error) {
	n := 0
	for {
		k, err := c.conn.Read(p[n : n+min(len(p)-n, left)])
		n, left = n+k, left-k
		if err != nil || n == len(p) {
			return n, left, nextHeader{}, err
		}
		if left > 0 {
			continue // the body goes on in the next record
		}
		typ, m, herr := c.fr.header()
		for herr == nil && typ == framePad {
			if _, herr = c.fr.readBody(m); herr == nil {
				typ, m, herr = c.fr.header()
			}
		}
		if herr != nil || typ != frameData || m == 0 {
			return n, 0, nextHeader{set: true, typ: typ, n: m, err: herr}, nil
		}
		left = m
	}
}

func (s *sessionConn) endErr() error {
	if s.err != nil && s.err != errSessionClosed {
		return s.err
	}
	return io.EOF
}

// sendCarrier returns the carrier to send on: the oldest one neither
// dead nor retired.
func (s *sessionConn) sendCarrier() *carrier {
	for _, c := range s.carriers {
		if !c.dead && !c.sendRetired {
			return c
		}
	}
	return nil
}

func (s *sessionConn) hasWork(c *carrier) bool {
	return s.ackDue || s.pingDue || s.resendDue || len(s.drops) > 0 ||
		s.next < s.written || c.peerRetired
}

func (s *sessionConn) flushLoop() {
	defer close(s.flusherDone)
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed {
		c := s.sendCarrier()
		if c == nil || !s.hasWork(c) {
			s.sendCond.Wait()
			continue
		}
		buf := writeBufs.Get().(*[]byte)
		out := s.compose((*buf)[:0], c)
		if s.unsentWaiters > 0 {
			// compose took bytes from the queue: writers waiting for
			// it to shrink may go on, while this write goes out.
			s.spaceCond.Broadcast()
		}
		if len(out) == 0 {
			putWriteBuf(buf, out)
			continue
		}
		s.mu.Unlock()
		err := c.writeFrames(out)
		s.mu.Lock()
		if err != nil {
			s.carrierEnded(c, err)
		} else if c.sendRetired && c.peerRetired {
			s.retireDone(c)
		} else {
			s.noteSent(c)
		}
		putWriteBuf(buf, out)
	}
}

// writeFrames writes out, the flusher's frames (its buffer, which a
// sealingConn may change while it seals), in one system call.
func (c *carrier) writeFrames(out []byte) error {
	if sc, ok := c.conn.(*sealingConn); ok {
		_, err := sc.writeOwned(out)
		return err
	}
	c.raw.batch()
	_, err := c.conn.Write(out)
	if ferr := c.raw.flush(); err == nil {
		err = ferr
	}
	return err
}

// maxPlaintext returns how many bytes of frames fit in room bytes on the
// wire, TLS record overhead counted for records as small as 1000 bytes.
func maxPlaintext(room int) int {
	if room <= tlsRecordOverhead {
		return 0
	}
	return room - tlsRecordOverhead*(room/1000+1)
}

// compose fills out (empty) with what to send on c now: control frames,
// then data, within c's budget, then padding (PROTOCOL.md §6.2): a
// write carrying a young stream's bytes gets a PAD frame of random
// length; any other write ends on a full TLS record, or is padded so
// its last record's length is drawn from a bucket (tailPad). Called
// with mu held.
func (s *sessionConn) compose(out []byte, c *carrier) []byte {
	room := math.MaxInt
	if c.budget > 0 {
		room = maxPlaintext(c.budget - int(c.raw.written.Load()) - retireReserve)
	}
	out, fill := s.composeFrames(out, c, room)
	if fill < 0 && !s.pad.youngOnly {
		// Within the budget: the last write on a nearly spent carrier
		// may be padded less (it is followed by RETIRE).
		fill = min(tailPad(len(out)), room-len(out))
	}
	if fill >= frameHeaderLen {
		out = appendPad(out, fill)
	}
	return out
}

// composeFrames appends compose's frames to out and returns it with the
// bytes of padding it needs: -1 for the tail padding, or what is already
// decided (0 once padded for a young stream, or the few bytes that bring
// a bulk write to the end of its last record). Called with mu held.
func (s *sessionConn) composeFrames(out []byte, c *carrier, room int) ([]byte, int) {
	retire := func() ([]byte, int) {
		c.sendRetired = true
		s.poke()
		s.wakeAll()
		return appendEmptyFrame(out, frameRetire), -1
	}
	if c.peerRetired || room < 64 {
		return retire()
	}
	pinging := s.pongDue || s.pingDue
	if s.ackDue || (s.recvd > s.ackSent && s.next < s.written) {
		// Due (a PING, a timer, enough bytes), or free to piggyback.
		out = appendOffsetFrame(out, frameAck, s.recvd)
		s.ackSent, s.ackDue, s.pongDue = s.recvd, false, false
	}
	if s.pingDue {
		out = appendEmptyFrame(out, framePing)
		s.pingDue, s.pingVia, s.pingArrived = false, c, arrivedOn(s.watchedCarrier())
	}
	if pinging && s.next >= s.written && !s.resendDue && len(s.drops) == 0 && len(out)+frameHeaderLen <= h2PingLen {
		// A PING or its answer alone in a record is sized as HTTP/2's
		// (a 17-byte frame either way), not as our own 3 or 11 bytes,
		// nor bucketed as other small records are: h2 PINGs have one
		// size.
		return append(out, padFrame(h2PingLen-len(out))...), 0
	}
	if s.resendDue {
		out = appendOffsetFrame(out, frameResend, s.resendFrom)
		s.resendDue = false
	}
	for _, seq := range s.drops {
		out = appendDropFrame(out, seq)
	}
	c.sentDrops = append(c.sentDrops, s.drops...)
	if n := len(c.sentDrops); n > maxSentDrops {
		c.sentDrops = append(c.sentDrops[:0], c.sentDrops[n-maxSentDrops:]...)
	}
	s.drops = s.drops[:0]
	if s.next >= s.written {
		return out, -1
	}
	c.lastSent.Store(monoNow())
	avail := room - len(out) - 11 // a SEEK may come first
	if s.padDue {
		avail -= frameHeaderLen + maxPad
	}
	avail -= frameHeaderLen * (avail/maxFrameBody + 1)
	if c.budget > 0 && avail < minBudgetChunk {
		return retire()
	}
	n := int(min(s.written-s.next, uint64(s.writeChunk), uint64(max(avail, 0))))
	if n > maxFrameBody && n < avail {
		// Whole frames only, while more than one is queued: each is one
		// full TLS record. Cut by smux's 32 KiB writes instead, every
		// write ended in a record of a few bytes, a write and a decrypt
		// more per 32 KiB (a third of the records). The rest goes next
		// time, with what smux has queued meanwhile.
		n -= n % maxFrameBody
	}
	if c.needSeek {
		out = appendOffsetFrame(out, frameSeek, s.next)
		c.needSeek = false
	}
	pad, fill := 0, -1
	switch {
	case s.padDue:
		pad, fill, s.padDue = padLen(), 0, false
	case uint64(n) < s.written-s.next && !s.pad.youngOnly:
		// More is queued than this write takes: it ends on a record
		// boundary, and the rest goes in the next write (at once, so
		// nothing waits), so bulk data goes in full records.
		n, fill = wholeRecords(len(out), n)
	}
	out = appendQueuedFrames(out, &s.sendq, int(s.next-s.acked), n, pad)
	s.next += uint64(n)
	s.sentMax = max(s.sentMax, s.next)
	return out, fill
}

// readLoop reads c's frames until it ends.
func (s *sessionConn) readLoop(c *carrier) {
	if c.readDone != nil {
		defer close(c.readDone)
	}
	if c.finish != nil {
		if err := c.finish(); err != nil {
			// Only a new session's first carrier sends before the
			// proof: without it, the session is not there.
			s.log.Debug("bridge opening failed", "error", safelog.Error(err, false))
			s.end(err, false)
			return
		}
	}
	// Read borrows c.fr only once offered a body (offer, under mu),
	// after this.
	c.fr = &frameReader{r: c.conn}
	fr := c.fr
	for {
		typ, n, err := c.next.typ, c.next.n, c.next.err
		if c.next.set {
			// Read read this header after the DATA it was offered
			// (readOffered), and left the frame to us. (Ordered by
			// mu: offer returned after Read had set it.)
			c.next = nextHeader{}
		} else {
			typ, n, err = fr.header()
		}
		var body []byte
		switch {
		case err != nil:
		case typ == frameData:
			// In order, the common case: straight to smux, or into the
			// receive buffer (readInto); otherwise through the frame
			// buffer.
			var done bool
			if done, err = s.readInto(c, n); done || err != nil {
				if err == nil {
					continue
				}
				break
			}
			body, err = fr.readBody(n)
		default:
			body, err = fr.readBody(n)
			if typ == framePad && err == nil {
				c.lastRecv.Store(monoNow())
				continue
			}
		}
		if err != nil {
			s.mu.Lock()
			s.carrierEnded(c, err)
			s.mu.Unlock()
			return
		}
		now := monoNow()
		c.lastRecv.Store(now)
		s.mu.Lock()
		if c.dead || s.closed {
			ended := s.closed
			s.mu.Unlock()
			if ended {
				// The session ended: read on to the peer's close, as
				// after a RETIRE (endLocked closes as closeRetired).
				drainRetired(c)
			}
			return
		}
		stop, drain := false, false
		switch typ {
		case frameData:
			c.lastData.Store(now)
			s.receive(c, body, now)
		case frameSeek:
			c.rpos = binary.BigEndian.Uint64(body)
			c.skipGap = false
		case frameAck:
			if err := s.ackedTo(binary.BigEndian.Uint64(body)); err != nil {
				s.carrierEnded(c, err)
				stop = true
			}
		case framePing:
			s.ackDue, s.pongDue = true, true
			s.sendCond.Signal()
		case frameResend:
			off := binary.BigEndian.Uint64(body)
			if err := s.ackedTo(off); err != nil {
				s.carrierEnded(c, err)
				stop = true
			} else if off < s.next {
				s.rewind(off)
			}
		case frameRetire:
			c.peerRetired = true
			stop, drain = true, true
			if c.sendRetired {
				s.retireDone(c)
			}
			s.poke()
			s.wakeAll()
		case frameDrop:
			seq := binary.BigEndian.Uint32(body)
			for _, d := range s.carriers {
				if d.seq == seq && d != c {
					s.carrierEnded(d, errCarrierDrop)
					break
				}
			}
		case frameClose:
			s.endLocked(errPeerClosed, false)
			stop, drain = true, true
		case frameStatus:
			// Only ever the first frame of a carrier, read by the
			// handshake.
			s.carrierEnded(c, errBadFrame)
			stop = true
		}
		s.mu.Unlock()
		if drain {
			drainRetired(c)
		}
		if stop {
			return
		}
	}
}

// drainRetiredWait bounds how long a carrier the peer retired is read
// after its RETIRE: our own RETIRE, the peer's close, and a slow path.
const drainRetiredWait = 10 * time.Second

// drainRetired reads what follows the peer's RETIRE on c, which should be
// nothing but its close_notify, until c ends. The socket is then closed
// (closeRetired) with nothing unread and nothing more to come: closed with
// the peer's close_notify on its way, the kernel answered it with a reset.
func drainRetired(c *carrier) { readToEnd(c.conn, drainRetiredWait) }

// readToEnd reads and drops what c delivers until it ends (the peer's
// close, an error) or for wait.
func readToEnd(c net.Conn, wait time.Duration) {
	c.SetReadDeadline(time.Now().Add(wait))
	var buf [512]byte
	for {
		if _, err := c.Read(buf[:]); err != nil {
			return
		}
	}
}

// receive places DATA that c carried at c.rpos, which arrived at now (a
// monoNow). Called with mu held; may wait (releasing it) for room, or for
// the bytes before it.
func (s *sessionConn) receive(c *carrier, data []byte, now int64) {
	off := c.rpos
	c.rpos += uint64(len(data))
	if off > s.recvd {
		// Bytes before these are still on their way on another carrier,
		// or were lost with it. Wait for them a little.
		if c.skipGap {
			// Already asked to resend: wait for the SEEK, asking again
			// now and then in case the request was lost.
			if time.Since(s.resendAskedAt) > gapWait {
				s.resendDue, s.resendFrom, s.resendAskedAt = true, s.recvd, time.Now()
				s.sendCond.Signal()
			}
			return
		}
		deadline := time.Now().Add(gapWait)
		t := time.AfterFunc(gapWait, func() {
			s.mu.Lock()
			s.rspaceCond.Broadcast()
			s.mu.Unlock()
		})
		for off > s.recvd && !c.dead && !s.closed && time.Now().Before(deadline) {
			s.rspaceCond.Wait()
		}
		t.Stop()
		if off > s.recvd {
			c.skipGap = true
			if !c.dead && !s.closed && (s.resendFrom != s.recvd || time.Since(s.resendAskedAt) > gapWait) {
				s.resendDue, s.resendFrom, s.resendAskedAt = true, s.recvd, time.Now()
				s.sendCond.Signal()
			}
			return
		}
	}
	if end := off + uint64(len(data)); end <= s.recvd {
		return // a copy of bytes already received
	}
	data = data[s.recvd-off:]
	for len(data) > 0 {
		for !c.dead && !s.closed && (s.rbusy || s.offered.c != nil || len(s.rbuf)-s.rstart >= recvLimit) {
			s.waitRoom(c)
		}
		if c.dead || s.closed {
			return
		}
		if c.rpos-uint64(len(data)) != s.recvd {
			return // another carrier delivered these meanwhile
		}
		n := min(len(data), recvLimit-(len(s.rbuf)-s.rstart))
		s.rbufRoom(n)
		s.rbuf = append(s.rbuf, data[:n]...)
		s.recvd += uint64(n)
		data = data[n:]
	}
	s.delivered(now)
}

// waitRoom waits, for c's reader, until the receive buffer may have room
// (rspaceCond), and marks c meanwhile (waitingRoom): the frames behind
// c's DATA then wait unread in its socket, and its peer, its socket's
// buffers full, may be unable to send anything, an answer to a PING
// too, so the freeze detector does not judge c (checkFrozen). Called
// with mu held.
func (s *sessionConn) waitRoom(c *carrier) {
	c.waitingRoom = true
	s.rspaceCond.Wait()
	c.waitingRoom = false
}

// readInto reads the body of a DATA frame of n bytes that c carries, if
// it is the next data in order (the common case), without the frame
// buffer's copy: if Read is waiting for bytes, it offers the body to
// Read, which reads it from c's TLS straight into smux's buffer (no copy
// of ours at all), and the DATA frames after it while smux waits for
// more (chainRead); otherwise it reads it into the receive buffer. It
// reports whether it did; if not, the caller reads the body and calls
// receive. While it does, other carriers' data waits (rbusy, offered).
func (s *sessionConn) readInto(c *carrier, n int) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	taken := false // Read took part of the body, and n is the rest
	for {
		for !c.dead && !s.closed && c.rpos == s.recvd &&
			(s.rbusy || s.offered.c != nil || (!s.readWaiting && len(s.rbuf)-s.rstart+n > recvLimit)) {
			s.waitRoom(c)
		}
		if c.dead || s.closed || c.rpos != s.recvd || n == 0 {
			if !taken {
				return false, nil // the caller reads the body (receive)
			}
			return true, s.dropRest(c, n)
		}
		if !s.readWaiting || n < minOffer {
			break
		}
		// (Only when Read waits: when smux does not read, because its
		// buffers are full, the receive buffer still takes recvLimit
		// bytes, and the frames after them, ACKs and all, are handled.)
		left, err := s.offer(c, n)
		if err != nil || left == 0 {
			return true, err
		}
		// Read paused (the bridge's bound) before it took it all: the
		// rest goes to the receive buffer.
		n, taken = left, true
	}
	s.rbufRoom(n)
	start := len(s.rbuf)
	dst := s.rbuf[start : start+n]
	s.rbusy = true
	s.mu.Unlock()

	err := c.fr.bodyInto(dst)

	s.mu.Lock()
	s.rbusy = false
	s.rspaceCond.Broadcast()
	if err != nil {
		return true, err
	}
	now := monoNow()
	c.lastRecv.Store(now)
	c.lastData.Store(now)
	c.rpos += uint64(n)
	if c.dead || s.closed {
		return true, nil
	}
	// Nothing moved the buffer or its end meanwhile (rbusy), so the
	// bytes are where they belong.
	s.rbuf = s.rbuf[:start+n]
	s.recvd += uint64(n)
	s.delivered(now)
	return true, nil
}

// dropRest reads the last n bytes of the DATA body c's reader is in, and
// drops them: after Read took the body's start, c or the session ended,
// or another carrier delivered the rest. Called with mu held.
func (s *sessionConn) dropRest(c *carrier, n int) error {
	s.mu.Unlock()
	_, err := c.fr.readBody(n)
	s.mu.Lock()
	c.rpos += uint64(n)
	return err
}

// offer offers the DATA body of n bytes c carries to Read, and returns
// once Read has read it all, or failed to, or c or the session ended, and
// Read no longer reads c: then c's reader may read c again. If Read
// pauses for the bridge's bound (readPaused) before it has read it all,
// offer returns how much is left, for c's reader to read: otherwise the
// reader would wait for as long as the pause, and no frame behind the
// body (a CLOSE, an ACK) would be read. Called with mu held.
func (s *sessionConn) offer(c *carrier, n int) (int, error) {
	o := &s.offered
	*o = offer{c: c, left: n}
	s.readCond.Signal()
	for o.reading || (o.left > 0 && o.err == nil && !c.dead && !s.closed && !s.readPaused) {
		s.rspaceCond.Wait()
	}
	left, err := o.left, o.err
	if err == nil && left > 0 && (c.dead || s.closed) {
		err = net.ErrClosed // c or the session ended first
	}
	*o = offer{}
	s.rspaceCond.Broadcast()
	return left, err
}

// rbufRoom makes room for n more bytes after the end of rbuf: it moves
// the unread bytes to the front if that is enough, or else grows the
// buffer (doubling). Called with mu held, never while rbusy.
func (s *sessionConn) rbufRoom(n int) {
	if cap(s.rbuf)-len(s.rbuf) >= n {
		return
	}
	unread := len(s.rbuf) - s.rstart
	if unread+n <= cap(s.rbuf) {
		copy(s.rbuf, s.rbuf[s.rstart:])
	} else {
		nb := make([]byte, unread, max(2*cap(s.rbuf), unread+n, 64<<10))
		copy(nb, s.rbuf[s.rstart:])
		s.rbuf = nb
	}
	s.rbuf, s.rstart = s.rbuf[:unread], 0
}

// rewind makes the sender go back to off, which the peer asked for or
// which is the last acknowledged offset after a carrier was lost.
func (s *sessionConn) rewind(off uint64) {
	if off < s.acked {
		off = s.acked
	}
	if off >= s.next {
		return
	}
	s.next = off
	for _, c := range s.carriers {
		c.needSeek = true
	}
	s.sendCond.Signal()
}

// maxSentDrops bounds the DROPs a carrier remembers sending.
const maxSentDrops = 8

// carrierEnded removes c after a failure. Bytes it may have lost are sent
// again from the last acknowledged offset. Called with mu held.
func (s *sessionConn) carrierEnded(c *carrier, err error) {
	if c.dead {
		return
	}
	c.dead = true
	c.raw.Close() // no close_notify: the carrier is broken
	s.remove(c)
	if !(c.sendRetired && c.peerRetired) {
		s.rewind(s.acked)
		if s.client && err != errCarrierDrop {
			s.drops = append(s.drops, c.seq)
		}
		// The DROPs that went on c may have died with it: a bridge
		// never told keeps sending into the carrier they name, until
		// its own freeze check ends it (TestLostDropGoesAgain). A DROP
		// of a carrier the bridge already ended costs it nothing.
		s.drops = append(s.drops, c.sentDrops...)
		c.sentDrops = nil
		if !s.closed {
			s.log.Debug("carrier ended", "carrier", c.seq, "reason", safelog.Error(err, false),
				"down", c.raw.read.Load(), "up", c.raw.written.Load())
		}
	}
	s.poke()
	s.wakeAll()
}

// retireDone closes c once both sides retired it. Called with mu held.
func (s *sessionConn) retireDone(c *carrier) {
	if c.dead {
		return
	}
	c.dead = true
	s.remove(c)
	// It may wait on a slow peer, so not under the lock.
	go closeRetired(c, s.client)
	s.poke()
	s.wakeAll()
}

// retireCloseWait bounds how long a retired carrier waits for the peer's
// close_notify before it closes its socket.
const retireCloseWait = 2 * time.Second

// closeRetired closes a carrier both sides retired as a finished
// connection closes: the client as Chromium does, with a FIN and no
// close_notify (closeAsChromium), the bridge as a web server does, with
// close_notify and a FIN (closeWrite). Either way the socket closes once
// the carrier's reader has read the peer's own close (or after
// retireCloseWait). Both sides close at the same moment; a socket closed
// at once received the peer's close after its own, and the kernel
// answered with a reset (TestRetiredCarriersEndWithFINs: 10 of some 900
// carrier ends), where connections should end with FINs. The reader reads
// on after the peer's RETIRE for this (drainRetired).
func closeRetired(c *carrier, client bool) {
	if client {
		closeAsChromium(c.conn, c.readDone, retireCloseWait)
		return
	}
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if closeWrite(c.conn) && c.readDone != nil {
		waitClosed(c.readDone, retireCloseWait)
	}
	c.conn.Close()
}

// waitClosed returns once done is closed, or after wait.
func waitClosed(done <-chan struct{}, wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// closeAsChromium closes a client's TLS connection as Chromium 156 closes
// its own: the TCP socket under it sends a FIN, and no close_notify goes
// out (Chromium's SSLClientSocketImpl::Disconnect disconnects the socket
// without SSL_shutdown; a capture of Chromium 156 closing its connections
// to a Go site, at its exit and at the site's idle close, showed no
// close_notify either). The socket closes once the peer has closed too
// (peerClosed, or, when nil, once a read of c ends), or after wait, so
// that nothing the peer sends meets a closed socket.
func closeAsChromium(c net.Conn, peerClosed <-chan struct{}, wait time.Duration) {
	sock := socketUnder(c)
	if sock == nil {
		sock = c // not ours to half-close: close what there is
	}
	defer sock.Close()
	// A write of ours in progress may wait on a peer that stopped
	// reading; the FIN goes after it (halfClose), or not at all.
	c.SetWriteDeadline(time.Now().Add(wait))
	if !halfClose(c) {
		return
	}
	if peerClosed == nil {
		readToEnd(c, wait)
		return
	}
	waitClosed(peerClosed, wait)
}

// closeWrite ends the writing side of a TLS connection as TLS and then TCP
// do: close_notify, and a FIN from the TCP socket under it (socketUnder).
// Only the socket itself is half-closed: a wrapper's CloseWrite may close
// the whole connection (prefixConn's, when what it wraps cannot
// half-close), and a socket closed with the peer's close_notify on its way
// answers it with a reset. It reports whether close_notify went out.
func closeWrite(c net.Conn) bool {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return false
	}
	halfClose(c)
	return true
}

// halfClose sends the FIN of the TCP connection under c: through its
// countingConn, which sends what a batch holds first, if it has one.
func halfClose(c net.Conn) bool {
	for c != nil {
		if cc, ok := c.(*countingConn); ok {
			return cc.closeWrite()
		}
		next, wrapped := unwrapOnce(c)
		if !wrapped {
			tcp, ok := c.(*net.TCPConn)
			return ok && tcp.CloseWrite() == nil
		}
		c = next
	}
	return false
}

// socketUnder returns the connection under c's wrappers (unwrapOnce), or
// nil if a wrapper has none.
func socketUnder(c net.Conn) net.Conn {
	for c != nil {
		next, wrapped := unwrapOnce(c)
		if !wrapped {
			return c
		}
		c = next
	}
	return nil
}

// unwrapOnce returns the connection c wraps, if c is a wrapper: one of
// ours, which have no NetConn method on purpose (readAvailable, through
// unwrapConn, must neither reach around countingConn's count nor past
// prefixConn's prefix), or any other with a NetConn (TLS, connection
// limits).
func unwrapOnce(c net.Conn) (net.Conn, bool) {
	switch w := c.(type) {
	case *countingConn:
		return w.Conn, true
	case *prefixConn:
		return w.Conn, true
	case *abortConn:
		return w.Conn, true
	case *sealingConn:
		return w.Conn, true
	case interface{ NetConn() net.Conn }:
		return w.NetConn(), true
	}
	return c, false
}

func (s *sessionConn) remove(c *carrier) {
	for i, d := range s.carriers {
		if d == c {
			s.carriers = append(s.carriers[:i], s.carriers[i+1:]...)
			break
		}
	}
	if len(s.carriers) == 0 && !s.closed && s.lingerTimer == nil {
		s.lingerTimer = time.AfterFunc(s.linger, func() { s.end(errNoCarrier, false) })
	}
}

// Close ends the session: the peer is told, and every carrier closed.
func (s *sessionConn) Close() error {
	s.end(errSessionClosed, true)
	return nil
}

// end ends the session for reason err, telling the peer if tell.
func (s *sessionConn) end(err error, tell bool) {
	s.mu.Lock()
	s.endLocked(err, tell)
	s.mu.Unlock()
}

func (s *sessionConn) endLocked(err error, tell bool) {
	if s.closed {
		return
	}
	s.closed = true
	s.err = err
	if s.lingerTimer != nil {
		s.lingerTimer.Stop()
	}
	carriers := s.carriers
	s.carriers = nil
	for _, c := range carriers {
		c.dead = true
	}
	close(s.done)
	s.wakeAll()
	if s.acct != nil {
		s.acct.end()
	}
	onEnd := s.onEnd
	// CLOSE is padded as any short record is (tailPad), within the
	// reserve a budget keeps for RETIRE.
	bye := appendEmptyFrame(nil, frameClose)
	if !s.pad.youngOnly {
		bye = appendPad(bye, tailPad(len(bye)))
	}
	client := s.client
	go func() {
		// Tell the peer on every carrier, so it need not wait for a
		// timeout, without waiting long on one that is stuck. Then
		// close as a finished connection closes, the client without
		// close_notify, the bridge with it, once the peer closed too:
		// closed at once, a socket that got the peer's close (or its
		// answer to our CLOSE) after its own would answer with a reset
		// (TestSessionEndsWithFINs).
		var wg sync.WaitGroup
		for _, c := range carriers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if tell {
					c.conn.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
					c.conn.Write(bye)
				}
				closeRetired(c, client)
			}()
		}
		wg.Wait()
		close(s.ended)
		if onEnd != nil {
			onEnd()
		}
	}()
	s.poke()
}

// Done is closed when the session has ended.
func (s *sessionConn) Done() <-chan struct{} { return s.done }

// Deadlines are smux's business on streams, not on the session stream.
func (s *sessionConn) SetDeadline(time.Time) error      { return nil }
func (s *sessionConn) SetReadDeadline(time.Time) error  { return nil }
func (s *sessionConn) SetWriteDeadline(time.Time) error { return nil }

var _ io.ReadWriteCloser = (*sessionConn)(nil)

// carrierNeeds tells the client's manager how many carriers can still
// carry both ways, how much of the budget the one in use has spent, and
// how many carriers are open.
func (s *sessionConn) carrierNeeds() (usable int, spent float64, open int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.carriers {
		if c.dead || c.sendRetired || c.peerRetired {
			continue
		}
		if usable == 0 {
			spent = c.spent()
		}
		usable++
	}
	return usable, spent, len(s.carriers)
}

// unusedWithoutCarrier reports whether the session has no carrier it can
// send on and owes the bridge nothing (every byte it sent was
// acknowledged). Called without mu.
func (s *sessionConn) unusedWithoutCarrier() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.written > s.acked {
		return false
	}
	for _, c := range s.carriers {
		if !c.dead && !c.sendRetired && !c.peerRetired {
			return false
		}
	}
	return true
}

// heldAckEvery is how often a session whose reader holds a carrier's bytes
// unread tells its peer it is there (tellHeld): within the second the
// peer's freeze detector waits for an answer to its PING (freezeWait),
// with a tick to spare.
const heldAckEvery = 500 * time.Millisecond

// holding reports whether a carrier's reader waits for room (waitRoom).
// Called with mu held.
func (s *sessionConn) holding() bool {
	for _, c := range s.carriers {
		if c.waitingRoom && !c.dead {
			return true
		}
	}
	return false
}

// tellHeld sends an ACK every heldAckEvery while a carrier's reader waits
// for room (waitRoom): the peer's PINGs wait unread behind the bytes held,
// and without an answer its freeze detector took the carrier for frozen,
// ended it, and dialled another, to be held up the same way: a client
// whose session its bridge held past the bridge's bound (its uploads'
// destinations not reading) made a new connection every two seconds
// (TestPausedSessionKeepsItsCarrier). Any frame that arrives answers a
// PING. Called with mu held.
func (s *sessionConn) tellHeld(now int64) {
	if s.holding() && time.Duration(now-s.heldAckAt) >= heldAckEvery {
		s.heldAckAt = now
		s.ackDue = true
		s.sendCond.Signal()
	}
}

// checkFrozen is the client's freeze detector, run every tick. A carrier
// the bridge sends on that owes bytes (we have unacknowledged bytes, or
// it or we carried data lately) and has been silent for pingAfter gets a
// PING; if nothing at all arrives within freezeWait and two round trips,
// the carrier is frozen: a middlebox stopped it without a reset. It is
// dropped (with the carrier the PING went out on, which may be the one
// that froze), the session resends on the next, and the downstream bytes
// at which each froze are returned for learning.
func (s *sessionConn) checkFrozen(now time.Time, streams bool) []int64 {
	s.checks.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseIdle(now)
	s.tellHeld(monoAt(now))
	rc := s.watchedCarrier()
	if rc == nil || s.closed || rc.waitingRoom {
		// (A carrier whose reader waits for room is held up by us: its
		// peer may be unable to send even an answer to a PING, and
		// ending the carrier would only make a client that is there
		// dial another, to be held up the same way.)
		s.pingAt = time.Time{}
		return nil
	}
	mono := monoAt(now)
	last := rc.lastRecv.Load()
	silence := time.Duration(mono - last)
	if s.pingAt.IsZero() {
		// The peer owes us bytes if it has not acknowledged ours: a
		// PING after pingAfter of silence. A client also expects a
		// reply, with streams open, if anything moved lately (a
		// request went out, data came in, this carrier is new): a
		// PING after pingGap of silence, which grows while they are
		// answered. A long-idle stream is checked only by keepalives.
		// Both are the client's, as an HTTP/2 client's PINGs would
		// be; the bridge only checks what it is owed (with its own
		// PINGs beside the client's, a PING and its answer went every
		// second of the window: TestActiveWindowPingsBackOff).
		lastMove := s.lastMove(rc)
		s.pingGap, s.gapMove = s.pingGapAfter(lastMove), lastMove
		unacked := s.written > s.acked && silence >= pingAfter
		awaited := s.client && streams && time.Duration(mono-lastMove) < activeFor && silence >= s.pingGap
		idle := s.client && streams && silence >= keepAliveEarliest+time.Duration(rand.Int64N(int64(keepAliveIdle-keepAliveEarliest)))
		if unacked || awaited || idle {
			s.pingDue, s.pingAt, s.pingVia, s.pingArrived = true, now, nil, arrivedOn(rc)
			s.pingForMove = awaited && !unacked
			s.sendCond.Signal()
		}
		return nil
	}
	if last > monoAt(s.pingAt) {
		s.pingAt = time.Time{} // answered
		if s.pingForMove {
			// The carrier is there, and nothing moved: ask later next
			// time. A freeze in the window is still found within the
			// gap (1, 2, then 4 s) and freezeWait; one while bytes are
			// owed, or with data coming in, within pingAfter's.
			s.pingGap = min(2*s.pingGap, activeFor)
		}
		return nil
	}
	if now.Sub(s.pingAt) < freezeWait+2*rc.rtt {
		return nil
	}
	if got := arrivedOn(rc); got != s.pingArrived {
		// Bytes reached the carrier since the PING left, read or still
		// in its socket: the path moves, and this process is slow to
		// get to them (a loaded machine, a phone holding back a
		// background app). Ending the carrier would cost a new
		// connection, and two such false freezes at similar byte
		// counts would teach the session a budget
		// (TestSlowReaderIsNotAFreeze). The wait starts again; a path
		// that froze stops moving. Only rc's bytes count: the answer
		// comes on the carrier the peer sends on, which rc is, and a
		// newer carrier's (the handshakes of a client that gave rc up,
		// its DROP lost) say nothing of rc
		// (TestBytesOnAnotherCarrierDoNotHideAFreeze).
		s.pingAt, s.pingArrived = now, got
		return nil
	}
	s.pingAt = time.Time{}
	// A carrier that froze before any DATA came down it says nothing of
	// a byte count: a path that cuts at random moments silenced it after
	// its handshake, and two such at similar sizes would teach a budget
	// too small to carry anything (a budget only ever shrinks). A censor
	// that counts bytes lets the first of them through.
	var frozen []int64
	if rc.lastData.Load() != 0 {
		frozen = []int64{rc.raw.read.Load()}
	}
	s.carrierEnded(rc, errCarrierFrozen)
	if v := s.pingVia; v != nil && v != rc && !v.dead {
		s.carrierEnded(v, errCarrierFrozen)
	}
	s.pingVia = nil
	return frozen
}

// arrivedOn returns the bytes that reached carrier c (none if nil): those
// its reader took from the socket and those still waiting there.
func arrivedOn(c *carrier) int64 {
	if c == nil {
		return 0
	}
	return c.raw.read.Load() + int64(unreadBytes(c.raw))
}

// pingGapAfter returns the silence after which the client's next PING
// goes while a reply may be on its way, lastMove being when something
// last moved: pingGap, or pingAfter if something moved since it was set
// (checkFrozen then starts the gap again from this). Called with mu held.
func (s *sessionConn) pingGapAfter(lastMove int64) time.Duration {
	if lastMove != s.gapMove || s.pingGap == 0 {
		return pingAfter
	}
	return s.pingGap
}

// watchedCarrier returns the carrier the freeze detector watches: the
// oldest the peer still sends on. Called with mu held.
func (s *sessionConn) watchedCarrier() *carrier {
	for _, c := range s.carriers {
		if !c.dead && !c.peerRetired {
			return c
		}
	}
	return nil
}

// lastMove returns when anything last moved that a reply may follow on
// rc: DATA in, a write by smux, rc joining. Called with mu held.
func (s *sessionConn) lastMove(rc *carrier) int64 {
	return max(rc.lastData.Load(), s.lastSend, rc.joined)
}

// lastActive returns when DATA last moved on c either way, or it joined:
// what the face's idle close counts from (closeIdle).
func (c *carrier) lastActive() int64 {
	return max(c.lastData.Load(), c.lastSent.Load(), c.joined)
}

// maxQuietWait bounds how long the client's manager sleeps on a quiet
// session: a safety net, as every change that needs it wakes it.
const maxQuietWait = keepAliveIdle / 6

// quietWait returns how long the client's manager (or the bridge's check
// of a session) may sleep before the session needs it again, or 0 while
// it must look every tick: something is owed either way or a PING is out
// (the freeze detector), a client's PING for a reply that may be on its
// way (data moved lately with streams open) or its keepalive may be due,
// the buffers are not let go yet, or there is no carrier. Until such a
// PING is due it may sleep: before, it looked every tick for the whole
// window, ten times a second. On a bridge, idleClose is when
// closeIdle ends a carrier no DATA moved on (0: never): it wakes for
// that too. When it may sleep, the session's next write or DATA in wakes
// it (quiet): an idle session costs no wake-ups but every few seconds,
// where it cost ten a second on the client and four on the bridge
// (TestIdleSessionSleeps).
func (s *sessionConn) quietWait(now time.Time, streams bool, idleClose time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0
	}
	rc := s.watchedCarrier()
	mono := monoAt(now)
	if rc == nil && !s.client {
		// A bridge's session with no carrier waits for its client to
		// come back: nothing to watch, and nothing owed can go before a
		// carrier joins, which wakes it (attach). Its linger ends on a
		// timer of its own. It looked four times a second for the whole
		// linger, two minutes after each client that vanished
		// (TestLingeringSessionSleeps).
		return s.sleepLocked(mono, maxQuietWait)
	}
	if rc == nil || !s.pingAt.IsZero() || s.written > s.acked || s.recvd > s.ackSent || s.ackTimer || s.holding() {
		return 0
	}
	wait := maxQuietWait
	if idleClose > 0 {
		for _, c := range s.carriers {
			if !c.dead {
				wait = min(wait, max(time.Duration(c.lastActive()-mono)+idleClose, 0))
			}
		}
	}
	if streams && s.client {
		lastMove := s.lastMove(rc)
		if since := time.Duration(mono - lastMove); since < activeFor {
			// A reply may be on its way: look when checkFrozen's next
			// PING is due, or the window ends. Data in, or a write,
			// wakes the manager before then.
			due := time.Duration(rc.lastRecv.Load()-mono) + s.pingGapAfter(lastMove)
			if due <= 0 {
				return 0
			}
			wait = min(wait, due, activeFor-since)
		} else {
			// checkFrozen draws the keepalive's silence between
			// keepAliveEarliest and keepAliveIdle: look every tick
			// from then.
			due := time.Duration(rc.lastRecv.Load()+int64(keepAliveEarliest)-mono) - time.Millisecond
			if due <= 0 {
				return 0
			}
			wait = min(wait, due)
		}
	}
	return s.sleepLocked(mono, wait)
}

// sleepLocked returns wait, or less if the session's buffers are yet to be
// let go, and marks the session quiet, so that its next write or DATA in
// wakes the sleeper. Called with mu held.
func (s *sessionConn) sleepLocked(mono int64, wait time.Duration) time.Duration {
	if len(s.sendq.spare) > 0 || cap(s.rbuf) > 0 {
		// releaseIdle lets them go a second after the last byte.
		last := time.Duration(mono - max(s.lastSend, s.lastRecv))
		if last < time.Second {
			wait = min(wait, time.Second-last+time.Millisecond)
		}
	}
	s.quiet.Store(true)
	return wait
}

// closeIdle ends, as the face would end an idle HTTP/2 connection (a
// GOAWAY, then close_notify), every carrier on which no DATA has moved
// either way for idle, provided nothing is in flight. The client then
// carries the session on a new connection. So no carrier outlives what
// the face allows an idle connection.
//
// Bytes that arrived on a carrier's socket but that its reader has not
// got to yet are in flight too: a bridge whose CPU is taken (a test
// machine under -race, here) ended a carrier 2 s into an upload, with
// the client's upload arriving in its socket. The face would have
// read them (a request, not an idle connection).
func (s *sessionConn) closeIdle(now time.Time, idle time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.written > s.acked || s.recvd > s.ackSent {
		return
	}
	ended := false
	for _, c := range slices.Clone(s.carriers) {
		if c.dead || time.Duration(monoAt(now)-c.lastActive()) < idle || unreadBytes(c.raw) > 0 {
			continue
		}
		c.dead = true
		s.remove(c)
		ended = true
		go func() {
			c.conn.SetWriteDeadline(time.Now().Add(time.Second))
			c.conn.Write(padFrame(h2GoAwayLen))
			c.conn.Close()
		}()
	}
	if ended {
		// Not otherwise: a poke wakes the bridge's check of the session,
		// which calls this again.
		s.poke()
		s.wakeAll()
	}
}

// received returns how many bytes of the peer's stream have arrived.
func (s *sessionConn) received() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recvd
}

// releaseIdle lets go of the buffers of a session that has been quiet for
// a second, so that idle sessions cost next to nothing. (While busy, the
// buffers are kept: reallocating them on every pause costs throughput.)
func (s *sessionConn) releaseIdle(now time.Time) {
	if mono := monoAt(now); time.Duration(mono-s.lastSend) < time.Second || time.Duration(mono-s.lastRecv) < time.Second {
		return
	}
	s.sendq.release()
	if s.rstart == len(s.rbuf) && cap(s.rbuf) > 0 && !s.rbusy {
		s.rbuf, s.rstart = nil, 0
	}
}

// RemoteAddr returns the peer's address on the newest carrier (for
// pt.DialOr's USERADDR: never log it).
func (s *sessionConn) RemoteAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.remote
}

// LocalAddr returns our address on the newest carrier.
func (s *sessionConn) LocalAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local
}

// delivered schedules the acknowledgement of bytes just received (at now,
// a monoNow) and wakes the reader. Called with mu held.
func (s *sessionConn) delivered(now int64) {
	// Data moved: a sleeping manager looks again (quietWait), whichever
	// path the bytes took to smux.
	s.wake()
	if s.recvd-s.ackSent >= s.ackEvery {
		s.ackDue = true
	} else if !s.ackTimer {
		s.ackTimer = true
		time.AfterFunc(ackDelay, func() {
			s.mu.Lock()
			s.ackTimer = false
			if s.recvd > s.ackSent {
				s.ackDue = true
			}
			s.sendCond.Signal()
			s.mu.Unlock()
		})
	}
	s.lastRecv = now
	s.readCond.Signal()
	s.rspaceCond.Broadcast() // gap waiters
	if s.ackDue {
		s.sendCond.Signal()
	}
}
