package transport

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xtaci/smux"

	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// Session is a durable, authenticated tunnel to a bridge carrying
// multiplexed streams. It is safe for concurrent use.
//
// The layers, from the wire up:
//
//	carriers: TCP connections to the bridge, each TLS 1.3 opened with a
//	          browser's ClientHello that carries the tag, and openings that
//	          check the server's proof and name the session
//	sessionConn: one byte stream each way over whichever carriers live,
//	          with offsets, acknowledgements and resending (session.go)
//	smux v2 session: streams with per-stream flow control
//	stream request and reply, then the user's bytes
//
// A manager goroutine keeps the session carried: it opens the next carrier
// before a budgeted one is spent, notices a carrier that stopped making
// progress, moves the session to a new one, and learns a budget from
// freezes that repeat. Carriers are paced as a browser's connections are.
type Session struct {
	mux            *smux.Session
	conn           *sessionConn
	cfg            ClientConfig
	id             sessionID
	requestTimeout time.Duration
	log            *slog.Logger

	ctx     context.Context // ends with the session: cancels dials
	cancel  context.CancelFunc
	nextSeq atomic.Uint32
	budget  atomic.Int64 // bytes per carrier: the link's, or learned; 0: none
	stopped chan struct{}
	proven  chan struct{} // closed once the first carrier's proof checked out
	prove   sync.Once

	// The manager's own state.
	dials      chan dialResult
	dialing    []time.Time     // starts of dials in flight
	handshakes []*atomic.Int64 // when recent dials connected (unix ns), for pacing
	backoff    time.Duration
	retryAt    time.Time
	freezes    []int64 // downstream bytes at which carriers froze
	learned    bool

	// tickets are the TLS session tickets the bridge gave the
	// session's carriers, for the later ones to resume with.
	tickets ticketCache
	// resumed counts the carriers whose TLS handshake resumed.
	resumed atomic.Int64
}

// Carrier pacing: Russian DPI scores bursts of TLS handshakes to one name
// and many parallel connections, so carriers are opened as a browser opens
// connections to one site.
const (
	maxOpenCarriers   = 6
	maxHandshakeBurst = 2
	handshakeWindow   = 400 * time.Millisecond
	// pacingMargin widens the handshake window: an observer times
	// connections by their arrival, which a busy machine (or a busy
	// middlebox) may see late. 2 per 550 ms is 3.6 carriers a second.
	// (With 100 ms, a run under a load average of 11 had the test relay
	// see 3 arrivals within 400 ms, twice.)
	pacingMargin = handshakeWindow * 3 / 8
	// slowDial is how long a dial may hang before a second one is tried
	// beside it (a blackholed route, a lost SYN).
	slowDial = 3 * time.Second
	// Freeze detection: after pingAfter without a byte on a carrier that
	// owes bytes, the client asks for an ACK; no answer within freezeWait
	// plus two round trips means the carrier is frozen.
	pingAfter  = time.Second
	freezeWait = time.Second
	// activeFor: with streams open, a carrier that carried data (or a
	// request) this recently is expected to keep talking.
	activeFor = 10 * time.Second
	// keepAliveIdle: with streams open and nothing heard for this long,
	// the client checks the carrier is still there (jittered per check).
	keepAliveIdle = 30 * time.Second
	// keepAliveEarliest: each check draws the silence that calls for a
	// keepalive between this and keepAliveIdle.
	keepAliveEarliest = keepAliveIdle - keepAliveIdle/6
	// spareAt: the share of a carrier's budget at which the next carrier
	// is opened, so that no stall is visible when it runs out.
	spareAt = 0.4
)

type dialResult struct {
	c        *carrier
	status   byte
	received uint64
	err      error
	started  time.Time
}

// Dial connects to the bridge, authenticates it and returns a session.
// Errors of the first connection (unreachable, not the bridge) come back
// from Dial; after that the session survives the loss of its connections
// for ClientConfig.SessionLinger.
func Dial(ctx context.Context, cfg *ClientConfig) (*Session, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	s := &Session{
		cfg:            *cfg,
		requestTimeout: cfg.requestTimeout(),
		log:            cfg.logger(),
		stopped:        make(chan struct{}),
		proven:         make(chan struct{}),
		dials:          make(chan dialResult, maxOpenCarriers),
	}
	if _, err := rand.Read(s.id[:]); err != nil {
		return nil, err
	}
	// The first hello's keys are made while the session is set up and
	// TCP connects: they are most of the CPU before the first byte.
	hello := s.startHello(true)
	s.budget.Store(int64(cfg.Budget))
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.conn = newSessionConn(true, cfg.SessionLinger, s.log)
	s.conn.acct = newClientAcct()
	s.conn.fixedRate = cfg.sendRate
	mux, err := smux.Client(s.conn, muxConfig(true))
	if err != nil {
		s.conn.Close()
		return nil, err
	}
	s.mux = mux
	s.conn.mu.Lock()
	s.conn.onEnd = func() { mux.Close() }
	s.conn.pad.youngOnly = cfg.padYoungOnly
	s.conn.mu.Unlock()
	c, status, received, err := s.dialCarrierWith(ctx, hello, true, s.pace(time.Now()))
	if err == nil && status != statusResumed {
		c.raw.Close()
		err = errBridgeBusy
	}
	if err != nil {
		s.cancel()
		s.conn.end(err, false)
		mux.Close()
		return nil, err
	}
	if !s.conn.attach(c, received) {
		s.cancel()
		c.raw.Close()
		mux.Close()
		return nil, ErrClosed
	}
	if c.finish == nil {
		s.markProven()
	}
	go s.conn.readLoop(c)
	if cfg.singleCarrier {
		go func() {
			<-s.conn.Done()
			close(s.stopped)
		}()
		return s, nil
	}
	go s.manage()
	return s, nil
}

var (
	errBridgeBusy     = errors.New("transport: the bridge has no room for another session now: try again later")
	errSessionUnknown = errors.New("transport: the bridge no longer knows this session (it restarted, or the session expired): a new one is needed")
)

// builtHello is a carrier's hello, built by startHello.
type builtHello struct {
	h       *clientHello
	tickets *carrierTickets
	err     error
}

// startHello builds a carrier's hello in a goroutine of its own: it needs
// no connection, and its CPU (the key shares, the authentication's key
// agreement) then costs no time on the way to the first byte. Carriers
// after the first resume a TLS session of an earlier one (tickets.go).
func (s *Session) startHello(first bool) <-chan builtHello {
	tickets := &carrierTickets{session: &s.tickets, resume: !first && !s.cfg.noResumption}
	hello := make(chan builtHello, 1)
	go func() {
		h, err := buildHello(&s.cfg, tickets)
		hello <- builtHello{h, tickets, err}
	}()
	return hello
}

// dialCarrier opens one carrier: TCP, TLS with the tagged hello, openings.
func (s *Session) dialCarrier(ctx context.Context, first bool, connected *atomic.Int64) (*carrier, byte, uint64, error) {
	return s.dialCarrierWith(ctx, s.startHello(first), first, connected)
}

// dialCarrierWith is dialCarrier with the hello from startHello(first),
// which is built while TCP connects.
func (s *Session) dialCarrierWith(ctx context.Context, hello <-chan builtHello, first bool, connected *atomic.Int64) (*carrier, byte, uint64, error) {
	ctx, cancel := context.WithDeadline(ctx, deadlineFrom(ctx, s.cfg.handshakeTimeout()))
	defer cancel()
	dial := s.cfg.Dial
	if dial == nil {
		dial = func(ctx context.Context, _, address string) (net.Conn, error) {
			return dialCarrierTCP(ctx, address, s.cfg.Fingerprint)
		}
	}
	raw, err := dial(ctx, "tcp", s.cfg.Address)
	if connected != nil {
		connected.Store(time.Now().UnixNano())
	}
	b := <-hello
	tickets := b.tickets
	if err != nil {
		return nil, 0, 0, fmt.Errorf("transport: cannot reach the bridge: %w", err)
	}
	if b.err != nil {
		raw.Close()
		return nil, 0, 0, b.err
	}
	cc := &countingConn{Conn: raw}
	start := time.Now() // the round trip is measured from the hello on
	dl, _ := ctx.Deadline()
	cc.SetDeadline(dl)
	s.conn.mu.Lock()
	received := s.conn.recvd
	s.conn.mu.Unlock()
	op := clientOpeningInfo{
		Session:  s.id,
		New:      first,
		Carrier:  s.nextSeq.Add(1) - 1,
		Received: received,
		Budget:   int(s.budget.Load()),
	}
	o, err := clientHandshake(ctx, cc, b.h, &s.cfg, &op)
	if err != nil {
		if !errors.Is(err, errLandedOnFace) { // else it finishes its visit, then closes
			raw.Close()
		}
		if ctx.Err() != nil && !errors.Is(err, ErrNotBridge) {
			return nil, 0, 0, fmt.Errorf("transport: bridge handshake timed out: %w", err)
		}
		return nil, 0, 0, err
	}
	cc.SetDeadline(time.Time{})
	if o.finish == nil {
		// The proof checked out: the tickets are the bridge's.
		tickets.keep()
	}
	if o.resumed {
		s.resumed.Add(1)
	}
	c := &carrier{
		seq:     op.Carrier,
		conn:    o.conn,
		raw:     cc,
		budget:  op.Budget,
		resumed: o.resumed,
		// TLS and the openings take two round trips (one when the
		// client did not wait for the proof).
		rtt: time.Since(start) / 2,
	}
	if o.finish != nil {
		c.rtt = time.Since(start)
		c.finish = func() error {
			cc.SetReadDeadline(dl)
			defer cc.SetReadDeadline(time.Time{})
			err := o.finish()
			if err == nil {
				tickets.keep()
				s.markProven()
			}
			return err
		}
	}
	if o.status == statusUnknownSession {
		raw.Close()
		return nil, o.status, 0, errSessionUnknown
	}
	return c, o.status, o.received, nil
}

func (s *Session) markProven() { s.prove.Do(func() { close(s.proven) }) }

// WaitProven waits until the bridge's proof has been checked on the
// session's first connection, and returns nil then, the error that ended
// the session if it ended first, or ctx's. Dial may return before the
// proof is in: when the bridge's certificate was bound to this
// handshake's key, the bridge has already shown that it took the hello
// for its client's, and the first streams leave at once (early data,
// PROTOCOL.md §5); a wrong proof then ends the session.
func (s *Session) WaitProven(ctx context.Context) error {
	select {
	case <-s.proven:
		return nil
	case <-s.conn.Done():
		s.conn.mu.Lock()
		defer s.conn.mu.Unlock()
		if s.conn.err != nil {
			return s.conn.err
		}
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jitter returns a wait drawn uniformly from half to one and a half times
// d. Retries on a fixed schedule (0.5, 1, 2, 4 s …) are a program's, not
// a browser's, and the same on every client.
func jitter(d time.Duration) time.Duration {
	return d/2 + mrand.N(d+1)
}

// manage keeps the session carried until it ends.
func (s *Session) manage() {
	defer close(s.stopped)
	timer := time.NewTimer(managerTick)
	defer timer.Stop()
	for {
		select {
		case <-s.conn.Done():
			s.cancel()
			s.drainDials()
			return
		case r := <-s.dials:
			s.dialDone(r)
		case <-s.conn.events:
		case <-timer.C:
		}
		s.conn.quiet.Store(false)
		now := time.Now()
		streams := s.mux.NumStreams() > 0
		for _, f := range s.conn.checkFrozen(now, streams) {
			s.learn(f)
		}
		if !streams && len(s.dialing) == 0 && s.conn.unusedWithoutCarrier() {
			// The bridge closed the last connection of a session that
			// nothing uses, as its website closes an idle connection
			// (or the connection failed). A browser opens a new one
			// when it next needs one, not at once; dialling at once
			// would reconnect every time the site times the
			// connection out, carrying nothing, until the bridge's
			// idle timeout ends the session. So the session ends here,
			// and the next stream opens a new one (Client), for the
			// same handshake a new carrier would have cost.
			s.log.Debug("session ended", "reason", errIdleNoCarrier.Error())
			s.conn.end(errIdleNoCarrier, false)
			continue
		}
		s.maybeDial(now)
		// Tick while the session needs it, else sleep until it may
		// (quietWait), unless a dial is in flight or waits its turn.
		wait := managerTick
		switch {
		case len(s.dialing) > 0:
		case now.Before(s.retryAt):
			if usable, _, _ := s.conn.carrierNeeds(); usable == 0 {
				// Offline: no carrier to watch, and nothing to do
				// before the next try. It ticked ten times a second
				// through each backoff (TestOfflineClientWaitsOutItsBackoff).
				wait = max(s.retryAt.Sub(now), managerTick)
			}
		default:
			wait = max(s.conn.quietWait(now, streams, 0), managerTick)
		}
		timer.Reset(wait)
	}
}

// managerTick is how often the client's manager looks at a busy session:
// the freeze detector's resolution.
const managerTick = 100 * time.Millisecond

// drainDials closes the carriers of dials that end after the session.
func (s *Session) drainDials() {
	for len(s.dialing) > 0 {
		r := <-s.dials
		s.dialing = s.dialing[1:]
		if r.c != nil {
			r.c.raw.Close()
		}
	}
}

func (s *Session) dialDone(r dialResult) {
	for i, t := range s.dialing {
		if t.Equal(r.started) {
			s.dialing = append(s.dialing[:i], s.dialing[i+1:]...)
			break
		}
	}
	if r.err == nil && r.status != statusResumed {
		r.c.raw.Close()
		r.err = errBridgeBusy
	}
	switch {
	case errors.Is(r.err, errSessionUnknown):
		s.log.Info("session lost", "reason", r.err.Error())
		s.conn.end(r.err, false)
		return
	case r.err != nil:
		s.backoff = min(max(2*s.backoff, 250*time.Millisecond), 5*time.Second)
		s.retryAt = time.Now().Add(jitter(s.backoff))
		s.log.Debug("carrier dial failed", "error", safelog.Error(r.err, false), "backoff", s.backoff)
		return
	}
	s.backoff = 0
	if !s.conn.attach(r.c, r.received) {
		r.c.raw.Close()
		return
	}
	s.log.Debug("carrier joined", "carrier", r.c.seq, "rtt", r.c.rtt.Round(time.Millisecond), "resumed", r.c.resumed)
	go s.conn.readLoop(r.c)
}

// maybeDial opens a carrier when the session needs one and pacing allows.
func (s *Session) maybeDial(now time.Time) {
	usable, spent, open := s.conn.carrierNeeds()
	want := usable == 0 || (usable == 1 && spent >= spareAt)
	if !want || now.Before(s.retryAt) {
		return
	}
	if len(s.dialing) > 0 && now.Sub(s.dialing[len(s.dialing)-1]) < slowDial {
		return // one dial at a time, unless it hangs
	}
	if open+len(s.dialing) >= maxOpenCarriers {
		return
	}
	if !s.paceAllows(now) {
		return
	}
	connected := s.pace(now)
	s.dialing = append(s.dialing, now)
	go func() {
		c, status, received, err := s.dialCarrier(s.ctx, false, connected)
		s.dials <- dialResult{c: c, status: status, received: received, err: err, started: now}
	}()
}

// paceAllows reports whether a handshake may start now: fewer than
// maxHandshakeBurst connected within handshakeWindow (plus a margin: an
// observer sees a connection arrive a little after it connected here).
// A dial still connecting counts as connected now.
func (s *Session) paceAllows(now time.Time) bool {
	recent := s.handshakes[:0]
	for _, t := range s.handshakes {
		if now.Sub(time.Unix(0, t.Load())) < handshakeWindow+pacingMargin {
			recent = append(recent, t)
		}
	}
	s.handshakes = recent
	return len(recent) < maxHandshakeBurst
}

// pace records a handshake starting now; the dial stores when it connected.
func (s *Session) pace(now time.Time) *atomic.Int64 {
	t := new(atomic.Int64)
	t.Store(now.Add(time.Hour).UnixNano()) // connecting: counts as recent
	s.handshakes = append(s.handshakes, t)
	return t
}

// learn takes note of a carrier that froze after down bytes came down it.
// Two freezes at similar offsets mean a middlebox that counts bytes: from
// then on every carrier retires below them.
func (s *Session) learn(down int64) {
	for _, f := range s.freezes {
		lo, hi := min(f, down), max(f, down)
		if hi-lo > hi/4 {
			continue
		}
		b := max(int(lo*4/5)&^1023, link.MinBudget)
		if cur := s.budget.Load(); cur != 0 && int64(b) >= cur {
			continue
		}
		s.budget.Store(int64(b))
		if !s.learned {
			s.learned = true
			s.log.Info("connections to this bridge freeze after about the same number of bytes: from now on each carries at most "+
				link.FormatBudget(b)+" (add budget="+link.FormatBudget(b)+" to the link or bridge line to start that way)",
				"budget", b)
		}
		s.freezes = nil
		return
	}
	if len(s.freezes) >= 8 {
		s.freezes = s.freezes[1:]
	}
	s.freezes = append(s.freezes, down)
}

// Budget returns the bytes each new carrier may carry (from the link, or
// learned from freezes), or 0 for none.
func (s *Session) Budget() int { return int(s.budget.Load()) }

// OpenStream opens a stream, sends req and waits for the bridge's answer.
// A refusal is a *StatusError carrying the bridge's status. The returned
// conn also has CloseWrite. A timeout or a cancelled ctx costs only this
// stream: on a slow downlink a reply may wait behind other streams' data,
// and that is no reason to cut them off. Any other failure means the
// carrier is dead (smux does not close a session whose carrier failed, so
// this does), and IsClosed reports true from then on.
func (s *Session) OpenStream(ctx context.Context, req Request) (net.Conn, error) {
	b, err := req.MarshalBinary()
	if err != nil {
		return nil, err
	}
	st, err := s.openStream()
	if err != nil {
		s.mux.Close()
		return nil, fmt.Errorf("transport: opening stream: %w", err)
	}
	st.SetDeadline(deadlineFrom(ctx, s.requestTimeout))
	// Cancelling ctx aborts the wait for the reply.
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) (net.Conn, error) {
		s.closeStream(st)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A refusal or a timeout costs only this stream. Anything else,
		// EOF included (a bridge answers every request, even one it
		// cannot read), means the carrier failed.
		var se *StatusError
		var ne net.Error
		streamOnly := errors.As(err, &se) || (errors.As(err, &ne) && ne.Timeout())
		if !streamOnly {
			s.mux.Close()
		}
		return nil, err
	}
	if _, err := st.Write(b); err != nil {
		return fail(fmt.Errorf("transport: sending request: %w", err))
	}
	// Read through the counting stream: the session counted the reply's
	// bytes as held when they came, and only a counted read lets go.
	cs := s.clientStream(st)
	if err := readReply(cs.countedStream); err != nil {
		return fail(err)
	}
	if !stop() {
		s.closeStream(st)
		return nil, ctx.Err()
	}
	st.SetDeadline(time.Time{})
	return &cs, nil
}

// openStream opens an smux stream. A stream whose id has streamAbortFlag
// set could not be told from an abort (PROTOCOL.md §7); smux numbers a
// client's streams 1, 3, 5, …, so only a session that opened a billion
// streams meets one, and it is then closed, for the client to dial a new
// one.
func (s *Session) openStream() (*smux.Stream, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		if s.mux.IsClosed() {
			return nil, s.endedErr()
		}
		return nil, err
	}
	if st.ID()&streamAbortFlag != 0 {
		st.Close()
		s.mux.Close()
		return nil, errors.New("transport: the session has used up its stream numbers: a new one is needed")
	}
	return st, nil
}

// endedErr is what opening a stream on the ended session s returns:
// ErrSessionEnded, with why it ended. smux says "io: read/write on closed
// pipe", which tells a program holding a Session neither.
func (s *Session) endedErr() error {
	s.conn.mu.Lock()
	why := s.conn.err
	s.conn.mu.Unlock()
	switch why {
	case nil:
		// smux ended by itself (its keepalive, or a session it could
		// not read), or OpenStream ended it after a failed request:
		// no reason was recorded.
		return ErrSessionEnded
	case errSessionClosed:
		why = ErrClosed // closed here
	}
	return fmt.Errorf("%w (why: %w)", ErrSessionEnded, why)
}

// clientStream is a stream a Session opened: a smux stream (net.Conn,
// CloseWrite, WriteTo) whose reads are counted (countedStream), that also
// knows when its session ends.
type clientStream struct {
	*countedStream
	session *smux.Session
}

// closeStream closes smux stream st of s that was never handed out, and
// lets go of what the session counts for it (countedStream.Close does
// for the others).
func (s *Session) closeStream(st *smux.Stream) {
	st.Close()
	s.conn.acct.closed(st.ID())
	s.conn.closedHere(st.ID())
}

// clientStream wraps smux stream st of s.
func (s *Session) clientStream(st *smux.Stream) clientStream {
	return clientStream{&countedStream{directStream: newDirectStream(st, s.conn), acct: s.conn.acct}, s.mux}
}

// SessionDone returns a channel closed when the stream's session ends.
func (c *clientStream) SessionDone() <-chan struct{} { return c.session.CloseChan() }

// IsClosed reports whether the session has died or been closed.
func (s *Session) IsClosed() bool { return s.mux.IsClosed() }

// CloseChan is closed when the session dies.
func (s *Session) CloseChan() <-chan struct{} { return s.mux.CloseChan() }

// NumStreams returns the number of open streams.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Close closes the session and all its streams, and tells the bridge.
func (s *Session) Close() error {
	err := s.mux.Close()
	<-s.stopped
	return err
}

// Redial backoff bounds: a bridge that restarts is found again within
// maxRedialBackoff, and a bridge that is down is not hammered.
const (
	minRedialBackoff = 500 * time.Millisecond
	maxRedialBackoff = 10 * time.Second
)

// Client shares one session to a bridge among all streams: it dials on the
// first OpenStream, redials when the session dies, and backs off after
// failures. However many streams open at once, there is at most one dial in
// flight. Safe for concurrent use.
type Client struct {
	cfg ClientConfig

	mu       sync.Mutex
	sess     *Session
	dialing  chan struct{} // closed when the dial in flight ends
	lastErr  error
	retryAt  time.Time
	backoff  time.Duration
	closed   bool
	dialStop context.CancelFunc // cancels a dial in flight on Close
}

// NewClient checks cfg and returns a client. It does not dial.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &Client{cfg: cfg}, nil
}

// Session returns the live session, dialing one if there is none.
func (c *Client) Session(ctx context.Context) (*Session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if c.sess != nil && !c.sess.IsClosed() {
			s := c.sess
			c.mu.Unlock()
			return s, nil
		}
		if ch := c.dialing; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if wait := time.Until(c.retryAt); wait > 0 && c.lastErr != nil {
			err := c.lastErr
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (next try in %v)", err, wait.Round(100*time.Millisecond))
		}
		ch := make(chan struct{})
		c.dialing = ch
		// The dial serves every caller, so no caller's cancellation ends
		// it: it runs under its own deadline, and Close cancels it. Every
		// caller, this one too, waits for it or for its own ctx.
		dctx, cancel := context.WithCancel(context.Background())
		c.dialStop = cancel
		c.mu.Unlock()
		go c.dial(dctx, cancel, ch)
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c.mu.Lock()
		s, err := c.sess, c.lastErr
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if s == nil {
			return nil, ErrClosed
		}
		return s, nil
	}
}

// dial makes a new session, records the outcome and closes ch.
func (c *Client) dial(ctx context.Context, cancel context.CancelFunc, ch chan struct{}) {
	s, err := Dial(ctx, &c.cfg)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(ch)
	c.dialing = nil
	c.dialStop = nil
	if c.closed {
		// Close ended the dial, or came while it ran: the callers learn
		// that the client is closed, not that the dial was cancelled.
		if err == nil {
			s.Close()
		}
		err = ErrClosed
	}
	if err != nil {
		c.lastErr = err
		c.backoff = min(max(2*c.backoff, minRedialBackoff), maxRedialBackoff)
		c.retryAt = time.Now().Add(jitter(c.backoff))
		c.cfg.logger().Debug("dial failed", "error", safelog.Error(err, false), "backoff", c.backoff)
		return
	}
	if c.sess != nil {
		c.sess.Close()
	}
	c.sess, c.lastErr, c.backoff = s, nil, 0
	c.cfg.logger().Debug("session open")
}

// OpenStream opens a stream on the shared session (see Session.OpenStream).
// A session that died since it was last used is replaced first.
func (c *Client) OpenStream(ctx context.Context, req Request) (net.Conn, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.OpenStream(ctx, req)
	if err != nil && s.IsClosed() && ctx.Err() == nil {
		// The session died under us (say the bridge restarted): one
		// fresh session gets one more try.
		if s, err2 := c.Session(ctx); err2 == nil {
			return s.OpenStream(ctx, req)
		}
	}
	return st, err
}

// Close closes the session and makes further calls fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.dialStop != nil {
		c.dialStop()
	}
	if c.sess != nil {
		return c.sess.Close()
	}
	return nil
}

var _ io.Closer = (*Client)(nil)
