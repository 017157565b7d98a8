package transport

import (
	"cmp"
	"context"
	"crypto/ecdh"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xtaci/smux"

	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/ratelimit"
	"github.com/mirage-pt/mirage/transport/replay"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// Server is a Mirage bridge: it accepts connections, gives authenticated
// clients a multiplexed tunnel and everyone else the face. Create it with
// NewServer; its methods are safe for concurrent use.
type Server struct {
	cfg         ServerConfig
	publicKey   keys.PublicKey
	privateKey  *ecdh.PrivateKey                          // cfg.PrivateKey, with its public key computed once
	shortIDs    atomic.Pointer[map[keys.ShortID]struct{}] // nil: any
	limiter     *ratelimit.Limiter
	serverNames map[string]struct{}
	filter      *replay.Filter
	tunnelTLS   *tls.Config // site face: the site's own config; cover face: nil (per-connection)
	siteTunnel  *siteTunnel // site face: tunnels' configs, with bound certificates
	buffers     *bridgeBuffers
	site        *siteServer
	log         *slog.Logger
	helloWait   time.Duration // how long to wait for a ClientHello
	started     int64         // unix seconds: tags older than this are refused

	sessionIDs atomic.Uint64
	coverTLS   atomic.Pointer[coverTLS]       // cover face: how the cover answers Chrome (nil: not known yet)
	coverIdle  atomic.Int64                   // cover face: how long it keeps idle connections (ns; 0: none or unknown)
	shape      atomic.Pointer[[]openingShape] // the face's opening records, once learned

	ctx    context.Context // ends on Close
	cancel context.CancelFunc

	maxSessions int
	maxStreams  int           // per session
	writeStall  time.Duration // see writeStallTimeout

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{} // carriers and spliced strangers, closed on Close
	sessions  map[sessionID]*serverSession
	closed    bool
	wg        sync.WaitGroup

	// Connections being classified, oldest first, and how many per
	// source (under mu); see takePending.
	pending             []*pendingConn
	pendingBy           map[netip.Prefix]int
	maxPending          int // MaxPendingHandshakes or its default
	maxPendingPerSource int // defaultMaxPendingPerSource; tests lower it
}

// NewServer checks cfg and returns a server ready to Serve.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	priv, err := ecdh.X25519().NewPrivateKey(cfg.PrivateKey[:])
	if err != nil {
		return nil, fmt.Errorf("transport: bridge private key: %w", err)
	}
	s := &Server{
		cfg:        cfg,
		privateKey: priv,
		publicKey:  keys.PublicKey(priv.PublicKey().Bytes()),
		log:        loggerOrDiscard(cfg.Logger),
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[net.Conn]struct{}),
		pendingBy:  make(map[netip.Prefix]int),
		sessions:   make(map[sessionID]*serverSession),
	}
	s.maxStreams = orInt(cfg.maxStreamsPerSession, maxStreamsPerSession)
	s.writeStall = orDefault(cfg.writeStallTimeout, writeStallTimeout)
	s.maxSessions = cfg.MaxSessions
	if s.maxSessions <= 0 {
		s.maxSessions = DefaultMaxSessions
	}
	s.storeShortIDs(cfg.ShortIDs)
	s.limiter = cfg.RateLimiter
	if s.limiter == nil {
		s.limiter = ratelimit.New(ratelimit.DefaultRate, ratelimit.DefaultBurst, max(ratelimit.DefaultMaxIDs, len(cfg.ShortIDs)))
	}
	if len(cfg.ServerNames) > 0 {
		s.serverNames = make(map[string]struct{})
		for _, n := range cfg.ServerNames {
			s.serverNames[strings.ToLower(n)] = struct{}{}
		}
	}
	s.filter = cfg.ReplayFilter
	if s.filter == nil {
		ttl := 2 * cfg.maxClockSkew()
		s.filter = replay.New(ttl, replay.SizeFor(ttl, replay.MaxHandshakeRate))
	}
	s.maxPending = cfg.MaxPendingHandshakes
	if s.maxPending <= 0 {
		s.maxPending = DefaultMaxPendingHandshakes
	}
	s.maxPendingPerSource = defaultMaxPendingPerSource
	s.buffers = &bridgeBuffers{limit: DefaultMaxBuffered}
	if cfg.MaxBuffered > 0 {
		s.buffers.limit = int64(cfg.MaxBuffered)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if cfg.Site != nil {
		s.tunnelTLS = siteTLSConfig(cfg.Site.TLSConfig)
		if !cfg.siteUnbound {
			s.siteTunnel = newSiteTunnel(s.tunnelTLS)
		}
		// A copy: net/http adjusts the configuration it serves with, in
		// its own goroutine, while tunnels clone theirs from tunnelTLS
		// (siteTLSConfig already set what it would add).
		faceTLS := s.tunnelTLS.Clone()
		shareTickets(faceTLS, s.tunnelTLS) // one ticket key set, as one website has
		s.site = startSiteServer(cfg.Site, faceTLS)
	} else {
		s.wg.Add(2)
		go s.watchCoverTLS()
		go s.watchCoverIdle()
	}
	s.wg.Add(1)
	go s.watchFaceShape()
	s.started = cfg.now().Unix()
	s.helloWait = cfg.handshakeTimeout()
	if s.site != nil {
		// A slow stranger must be dropped when the website would drop it,
		// not later: never wait longer than the site's own TLS handshake
		// timeout (which net/http takes from these three).
		for _, d := range []time.Duration{s.site.srv.ReadTimeout, s.site.srv.ReadHeaderTimeout, s.site.srv.WriteTimeout} {
			if d > 0 && d < s.helloWait {
				s.helloWait = d
			}
		}
	}
	return s, nil
}

// Serve accepts connections on ln until ln fails or the server is closed.
// It returns ErrClosed after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrClosed
			}
			if isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		// Counted and tracked under the lock, with the closed check, so
		// that Close either sees this connection (and closes it) or this
		// loop sees Close: never an Add racing Close's Wait, never a
		// connection being read that Close does not know of.
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return ErrClosed
		}
		s.wg.Add(1)
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go s.handle(c)
	}
}

// defaultMaxPendingPerSource bounds the connections from one address (an
// IPv4 address, or an IPv6 /64) being identified at once, so that one
// prober cannot take every slot of MaxPendingHandshakes. A genuine client
// needs one slot for one round trip.
const defaultMaxPendingPerSource = 16

// sourceOf returns the key under which c's peer is counted: its IPv4
// address or its IPv6 /64. It is only ever used as a map key, never logged.
func sourceOf(c net.Conn) netip.Prefix {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p
}

// pendingConn is a connection being classified. It wraps the raw
// connection only while its ClientHello is read, to learn whether the peer
// has sent anything yet and so that an eviction can end that read.
type pendingConn struct {
	net.Conn
	source  netip.Prefix
	spoke   atomic.Bool // a read returned bytes
	evicted atomic.Bool // set under Server.mu; reads fail from then on
}

// errEvicted ends the ClientHello read of a connection whose slot was
// given to a newer one. It is only logged at debug level.
var errEvicted = errors.New("classification slot given to a newer connection")

func (p *pendingConn) Read(b []byte) (int, error) {
	if p.evicted.Load() {
		// Checked before each read: an eviction that came before the
		// handshake set its read deadline is not lost to that deadline.
		return 0, errEvicted
	}
	n, err := p.Conn.Read(b)
	if n > 0 {
		p.spoke.Store(true)
	}
	return n, err
}

// takePending takes a classification slot for raw, or returns nil if there
// is none it may have.
//
// Slots are what silent sockets would hoard: a socket that says nothing
// costs the prober nothing, and with a slot each it could keep genuine
// clients from being identified (before, 16 silent sockets from a client's
// own address, or 512 from a few dozen addresses, sent it to the face). So
// a newcomer never waits behind them: when its source holds all it may,
// the oldest of that source gives way (a silent one first, then one in the
// middle of a hello: a slow-hello flood from one address must not lock out
// its other users either); when all slots are held, the oldest silent
// connection anywhere gives way. Only when every slot is held by
// connections that are talking does the newcomer go to the face unread.
// A genuine client holds a slot only for the moment between its connect
// and its hello, and is never the oldest silent connection while a flood
// goes on, so flooding evicts the flood.
//
// An evicted connection is not closed or answered: its read ends and it
// meets the face with whatever it had sent, the face's clock counting from
// its accept, exactly as the website would have treated it all along.
func (s *Server) takePending(raw net.Conn) *pendingConn {
	p := &pendingConn{Conn: raw, source: sourceOf(raw)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pendingBy[p.source] >= s.maxPendingPerSource &&
		!s.evictLocked(p.source, false) && !s.evictLocked(p.source, true) {
		return nil
	}
	if len(s.pending) >= s.maxPending && !s.evictLocked(netip.Prefix{}, false) {
		return nil
	}
	s.pending = append(s.pending, p)
	s.pendingBy[p.source]++
	return p
}

// evictLocked takes the slot of the oldest pending connection from source
// (any source if source is the zero prefix) that has sent nothing, or, with
// talking, the oldest from source whatever it has sent. It reports whether
// it found one. s.mu must be held.
func (s *Server) evictLocked(source netip.Prefix, talking bool) bool {
	for i, p := range s.pending {
		if source.IsValid() && p.source != source || !talking && p.spoke.Load() {
			continue
		}
		s.removePendingLocked(i)
		p.evicted.Store(true)
		// Ends a read in progress; a later one sees evicted. Under s.mu,
		// so that after releasePending no deadline is set behind the
		// handshake's back (see handle).
		p.Conn.SetReadDeadline(time.Now())
		return true
	}
	return false
}

func (s *Server) removePendingLocked(i int) {
	p := s.pending[i]
	s.pending = slices.Delete(s.pending, i, i+1)
	if s.pendingBy[p.source]--; s.pendingBy[p.source] <= 0 {
		delete(s.pendingBy, p.source)
	}
}

// releasePending gives back p's slot, unless an eviction took it already,
// and reports whether p was evicted.
func (s *Server) releasePending(p *pendingConn) (evicted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.evicted.Load() {
		return true
	}
	for i, q := range s.pending {
		if q == p {
			s.removePendingLocked(i)
			break
		}
	}
	return false
}

// isTemporary reports accept errors worth retrying after a pause, such as
// running out of file descriptors (EMFILE), which net reports as temporary.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// handle classifies one connection and passes it on.
func (s *Server) handle(raw net.Conn) {
	defer s.wg.Done()
	defer s.track(raw, false)
	hs := &serverHandshake{srv: s, raw: raw, start: time.Now()}
	p := s.takePending(raw)
	if p == nil {
		// Every slot is held by connections that are talking. Rather
		// than stall everyone, this one meets the face unread, as it
		// would meet the website; a genuine client among them retries.
		s.log.Debug("too many pending handshakes: straight to the face")
		if c := s.cfg.Cover; c != nil {
			hs.cover = c.dialEarly(raw)
		}
		s.toFace(hs, hs.cover)
		return
	}
	hs.raw = p
	err := hs.classify()
	hs.helloAt = time.Now()
	hs.raw = raw // the face and the tunnel get the socket itself
	cover := hs.cover
	if s.releasePending(p) {
		// An eviction may have set a read deadline after classify
		// cleared its own; clear it again, as classify leaves it.
		raw.SetReadDeadline(time.Time{})
	}
	if err != nil {
		// Errors of reads and writes name the peer's address: scrub.
		s.log.Debug("stranger meets the face", "reason", safelog.Error(err, false))
		s.toFace(hs, cover)
		return
	}
	if cover != nil {
		cover.abandon()
	}
	s.carry(hs)
}

func (s *Server) toFace(hs *serverHandshake, cover *earlyCover) {
	if s.site != nil {
		s.site.serve(newPrefixConn(hs.raw, hs.consumed, time.Since(hs.start)))
		return
	}
	// Track the spliced connection so Close can end it.
	if !s.track(hs.raw, true) {
		cover.abandon()
		hs.raw.Close()
		return
	}
	defer s.track(hs.raw, false)
	cover.splice(hs.raw, hs.consumed)
}

// carry completes an authenticated client's handshake, joins the carrier
// to the session its opening names (making it, for a first carrier), and
// reads the carrier until it ends.
func (s *Server) carry(hs *serverHandshake) {
	if !s.track(hs.raw, true) {
		hs.raw.Close()
		return
	}
	defer s.track(hs.raw, false)
	tc, raw, op, shape, err := hs.tunnel(s.ctx)
	if err != nil {
		s.log.Info("authenticated handshake failed", "error", safelog.Error(err, false))
		hs.raw.Close()
		return
	}
	sess, status := s.join(op, hs.shortID)
	var received uint64
	if sess != nil {
		received = sess.conn.received()
	}
	// One write per record: the status, then padding the sizes of the
	// rest of the face's opening records.
	if _, err := tc.Write(statusFrame(status, received, shape[1])); err != nil || sess == nil {
		if err == nil {
			refuse(tc, raw)
		}
		raw.Close()
		return
	}
	for _, n := range shape.within(op.Budget)[2:] {
		if _, err := tc.Write(padFrame(n)); err != nil {
			raw.Close()
			return
		}
	}
	tc.SetDeadline(time.Time{})
	// The TLS handshake took about one round trip after the hello
	// arrived: the client's Finished answers our flight.
	c := &carrier{seq: op.Carrier, conn: tc, raw: raw, budget: op.Budget, rtt: hs.rtt}
	if !sess.conn.attach(c, op.Received) {
		raw.Close()
		return
	}
	sess.log.Debug("carrier joined", "carrier", op.Carrier, "budget", op.Budget)
	sess.conn.readLoop(c)
}

// refuse ends a carrier after a refusing status. A client may have sent
// streams after its opening without waiting (early data); closing with
// them unread would reset the connection, and a reset can destroy the
// status before the client reads it. So the bridge sends close_notify,
// then reads and drops what comes, a little and briefly, before it
// closes.
func refuse(tc *sealingConn, raw net.Conn) {
	tc.SetWriteDeadline(time.Now().Add(time.Second))
	tc.CloseWrite()
	raw.SetReadDeadline(time.Now().Add(refuseDrainTime))
	io.CopyN(io.Discard, raw, refuseDrainBytes)
}

// How much and how long refuse reads of a refused carrier.
const (
	refuseDrainBytes = 256 << 10
	refuseDrainTime  = 2 * time.Second
)

// serverSession is one client's session on the bridge.
type serverSession struct {
	id      sessionID
	num     uint64 // for logs
	shortID keys.ShortID
	conn    *sessionConn
	mux     *smux.Session
	log     *slog.Logger
}

// join finds the session a carrier's opening names, or makes it, and
// returns it with the status to answer. A session is found only by the
// client that made it: its id is random and travels only inside TLS, and
// it must come with the same short id.
func (s *Server) join(op clientOpeningInfo, shortID keys.ShortID) (*serverSession, byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, statusBusy
	}
	if !op.New {
		sess := s.sessions[op.Session]
		if sess == nil || sess.shortID != shortID {
			return nil, statusUnknownSession
		}
		return sess, statusResumed
	}
	if _, ok := s.sessions[op.Session]; ok || len(s.sessions) >= s.maxSessions {
		return nil, statusBusy
	}
	num := s.sessionIDs.Add(1)
	log := s.log.With("session", num)
	conn := newSessionConn(false, s.cfg.SessionLinger, log)
	conn.acct = newStreamAcct(s.buffers)
	mux, err := smux.Server(conn, muxConfig(false))
	if err != nil {
		conn.Close()
		return nil, statusBusy
	}
	sess := &serverSession{id: op.Session, num: num, shortID: shortID, conn: conn, mux: mux, log: log}
	conn.mu.Lock()
	conn.onEnd = func() { mux.Close() }
	conn.pad.youngOnly = s.cfg.padYoungOnly
	conn.mu.Unlock()
	s.sessions[op.Session] = sess
	s.wg.Add(1)
	if f := s.cfg.OnSession; f != nil {
		f(shortID, true)
	}
	go s.serveSession(sess)
	log.Debug("session open")
	return sess, statusResumed
}

// faceIdle is how long the face lets an idle HTTP/2 connection live: a
// site's IdleTimeout, else its ReadTimeout, as net/http's HTTP/2 server
// takes them; a cover's as learned (watchCoverIdle); 0 for none or not
// known yet.
func (s *Server) faceIdle() time.Duration {
	if s.site == nil {
		return time.Duration(s.coverIdle.Load())
	}
	return cmp.Or(s.site.srv.IdleTimeout, s.site.srv.ReadTimeout)
}

// serveSession hands each stream of ss to the handler until the session
// ends, then forgets it.
func (s *Server) serveSession(ss *serverSession) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, ss.id)
		s.mu.Unlock()
		if f := s.cfg.OnSession; f != nil {
			f(ss.shortID, false)
		}
		ss.log.Debug("session closed")
	}()
	sess, id, log := ss.mux, ss.num, ss.log
	var wg sync.WaitGroup
	// lastActive is when a stream last started or ended (unix ns): a
	// session is idle only if none is open and none came or went lately.
	var lastActive atomic.Int64
	lastActive.Store(time.Now().UnixNano())
	if d := s.cfg.IdleTimeout; d > 0 {
		stop := make(chan struct{})
		defer close(stop)
		go closeWhenIdle(sess, &lastActive, d, stop)
	}
	// The bridge checks its carriers as the client does, so that a
	// client that vanished (its network gone, a middlebox holding the
	// connection open) loses its carriers, and after the linger time its
	// session: otherwise nothing would end a session whose connections
	// look alive.
	stopCheck := make(chan struct{})
	defer close(stopCheck)
	// It looks every bridgeTick while the session needs it, and sleeps
	// while it is quiet (quietWait), until the next write or DATA in: a
	// bridge's idle sessions cost it no wake-ups.
	go func() {
		timer := time.NewTimer(bridgeTick)
		defer timer.Stop()
		for {
			select {
			case <-stopCheck:
				return
			case <-ss.conn.events:
			case <-timer.C:
			}
			ss.conn.quiet.Store(false)
			now := time.Now()
			streams := sess.NumStreams() > 0
			ss.conn.checkFrozen(now, streams)
			idle := s.faceIdle()
			if idle > 0 {
				ss.conn.closeIdle(now, idle)
			}
			timer.Reset(max(ss.conn.quietWait(now, streams, idle), bridgeTick))
		}
	}()
	// Bound what one client can make the bridge hold: past
	// maxStreamsPerSession open streams, new ones are refused at once.
	// (Waiting to accept them would stall smux's receive loop, and with
	// it every stream of the session.)
	slots := make(chan struct{}, s.maxStreams)
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		lastActive.Store(time.Now().UnixNano())
		select {
		case slots <- struct{}{}:
		default:
			go refuseStream(st, ss.conn)
			continue
		}
		wg.Add(1)
		go func() {
			defer func() {
				lastActive.Store(time.Now().UnixNano())
				<-slots
				wg.Done()
			}()
			s.serveStream(&countedStream{directStream: newDirectStream(st, ss.conn), acct: ss.conn.acct}, sess.CloseChan(), id, ss.shortID, log)
		}()
	}
	// The session is over: end it everywhere (which ends every stream,
	// and so every relay on one), then wait for the handlers.
	ss.conn.Close()
	sess.Close()
	wg.Wait()
}

// refuseStream answers a stream the session has no room for, without
// reading its request, and closes it, forgetting what the session counts
// for it.
func refuseStream(st *smux.Stream, conn *sessionConn) {
	st.SetWriteDeadline(time.Now().Add(5 * time.Second))
	st.Write(marshalReply(StatusGeneralFailure))
	st.Close()
	conn.acct.closed(st.ID())
	conn.closedHere(st.ID())
}

// bridgeTick is how often the bridge looks at a busy session's carriers.
const bridgeTick = 250 * time.Millisecond

// closeWhenIdle closes sess once it has had no open stream, and no stream
// start or end, for idle.
func closeWhenIdle(sess *smux.Session, lastActive *atomic.Int64, idle time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(max(idle/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			if sess.NumStreams() > 0 {
				lastActive.Store(now.UnixNano())
			} else if now.Sub(time.Unix(0, lastActive.Load())) >= idle {
				sess.Close()
				return
			}
		}
	}
}

// maxStreamsPerSession bounds the streams one session may have open at
// once on the server, so one client cannot exhaust the bridge's file
// descriptors (and with them the face). (Tests lower it per server with
// ServerConfig.maxStreamsPerSession.)
const maxStreamsPerSession = 1024

func (s *Server) serveStream(st *countedStream, sessionDone <-chan struct{}, id uint64, shortID keys.ShortID, log *slog.Logger) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(s.cfg.requestTimeout()))
	req, err := ReadRequest(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		// Always answer before closing: a stream that just closes looks
		// to the client like a dead session.
		status := StatusGeneralFailure
		var se *StatusError
		var ne net.Error
		switch {
		case errors.As(err, &se):
			status = se.Status
		case errors.As(err, &ne) && ne.Timeout():
			status = StatusTimeout
		}
		st.SetWriteDeadline(time.Now().Add(5 * time.Second))
		st.Write(marshalReply(status))
		log.Debug("bad stream request", "stream", st.ID(), "error", safelog.Error(err, false))
		return
	}
	stream := &Stream{Conn: st, Request: req, Session: id, StreamID: st.ID(), ShortID: shortID, sessionDone: sessionDone, writeStall: s.writeStall}
	s.cfg.Handler(stream)
	if !stream.replied.Load() {
		stream.Reply(StatusGeneralFailure)
	}
}

func (s *Server) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closed {
			return false
		}
		s.conns[c] = struct{}{}
		return true
	}
	delete(s.conns, c)
	return true
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops all listeners, ends every session (telling its client),
// closes every connection passed to the cover and the site face, and
// waits for connection handlers to return.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*serverSession, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	// End sessions first: that tells their clients, which closing their
	// carriers would not. It takes at most half a second.
	for _, ss := range sessions {
		ss.conn.Close()
	}
	for _, ss := range sessions {
		<-ss.conn.ended
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	if s.site != nil {
		s.site.close()
	}
	s.wg.Wait()
	return nil
}

// Stream is one stream an authenticated client opened. Its Request says
// what the client wants; the handler answers with Reply before any data.
// Read, Write and Close are those of a net.Conn; RemoteAddr is the
// client's address (for pt.DialOr only: never log it).
type Stream struct {
	net.Conn
	Request  Request
	Session  uint64 // number of the session, for logs
	StreamID uint32 // number of the stream within the session, for logs
	// ShortID is the short id the client authenticated with: the user,
	// for counting per user (never per address).
	ShortID keys.ShortID

	sessionDone <-chan struct{}
	replied     atomic.Bool
	writeStall  time.Duration
}

// Reply sends the status of the request. It must be called exactly once,
// before any data is written; later calls return an error.
func (st *Stream) Reply(status Status) error {
	if st.replied.Swap(true) {
		return errors.New("transport: stream already replied")
	}
	st.Conn.SetWriteDeadline(time.Now().Add(DefaultRequestTimeout))
	defer st.Conn.SetWriteDeadline(time.Time{})
	if _, err := st.Conn.Write(marshalReply(status)); err != nil {
		return fmt.Errorf("transport: writing reply: %w", err)
	}
	return nil
}

// SessionDone returns a channel closed when the stream's session ends.
func (st *Stream) SessionDone() <-chan struct{} { return st.sessionDone }

// writeStallTimeout bounds how long one Write may wait for the client to
// take data. A client that drops a stream aborts it (PROTOCOL.md §7), and
// the bridge's writes fail at once; but one from before aborts were
// specified only closes it, drops what comes and grants no more window,
// and without this bound the bridge's write would wait for the rest of
// the session's life. An app that stops reading for this long loses the
// stream.
// (Tests shorten it per server with ServerConfig.writeStallTimeout.)
const writeStallTimeout = 5 * time.Minute

// Write writes to the client, failing if the client takes nothing for
// writeStallTimeout.
func (st *Stream) Write(p []byte) (int, error) {
	// A Stream made outside this package (an embedder's tests) has no
	// setting: the default.
	st.Conn.SetWriteDeadline(time.Now().Add(orDefault(st.writeStall, writeStallTimeout)))
	return st.Conn.Write(p)
}

// Fill writes to the client what read places in memory of the stream's
// (sockcopy.Filler: the egress's copy from a destination reads straight
// into the session's send queue), failing as Write does.
func (st *Stream) Fill(read func(p []byte) (int, error)) (int, error) {
	st.Conn.SetWriteDeadline(time.Now().Add(orDefault(st.writeStall, writeStallTimeout)))
	if f, ok := st.Conn.(sockcopy.Filler); ok {
		return f.Fill(read)
	}
	// A Stream made outside this package: through a buffer and Write.
	buf := fillBuffers.Get().(*[sockcopy.Chunk]byte)
	defer fillBuffers.Put(buf)
	n, err := read(buf[:])
	if n > 0 {
		if m, werr := st.Conn.Write(buf[:n]); werr != nil {
			return m, werr
		}
	}
	return n, err
}

// fillBuffers holds the buffers of Fill on a Stream whose Conn is not a
// Filler.
var fillBuffers = sync.Pool{New: func() any { return new([sockcopy.Chunk]byte) }}

// Abort closes the stream as a reset would, for a handler whose
// destination failed (reset, stalled): the client's reads and writes of
// the stream then fail (ErrStreamAborted), and it resets the app's
// connection, where after Close the client would take the stream for
// half-closed, its app could go on sending into it, and a download cut
// short would end as if complete. Clients from before ignore the signal.
func (st *Stream) Abort() error { return Abort(st.Conn) }

// CloseWrite half-closes the stream: the client reads EOF, and may go on
// writing.
func (st *Stream) CloseWrite() error {
	if cw, ok := st.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return st.Conn.Close()
}

// sessionCount returns how many sessions the bridge holds.
func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *Server) storeShortIDs(ids []keys.ShortID) {
	if len(ids) == 0 {
		s.shortIDs.Store(nil)
		return
	}
	m := make(map[keys.ShortID]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	s.shortIDs.Store(&m)
}

// acceptsShortID reports whether id may authenticate now.
func (s *Server) acceptsShortID(id keys.ShortID) bool {
	m := s.shortIDs.Load()
	if m == nil {
		return true
	}
	_, ok := (*m)[id]
	return ok
}

// SetShortIDs replaces the short ids the bridge accepts (empty: any), as
// when an operator adds or revokes a user on a running bridge. Sessions of
// short ids no longer accepted are ended at once.
func (s *Server) SetShortIDs(ids []keys.ShortID) {
	s.storeShortIDs(ids)
	s.mu.Lock()
	var revoked []*serverSession
	for _, ss := range s.sessions {
		if !s.acceptsShortID(ss.shortID) {
			revoked = append(revoked, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range revoked {
		ss.log.Info("session ended: its short id was revoked")
		ss.conn.Close()
	}
}

func orInt(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}
