package transport

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/mirage-pt/mirage/transport/safelog"
)

// CoverFace makes the bridge pass every stranger's connection to another
// website, byte for byte both ways, starting with the bytes already read,
// ending the way the cover ends it.
//
// The cover is dialed as soon as the bridge knows the connection is a
// stranger's, or DialDelay after it arrived if the bridge does not know
// yet (the ClientHello is not all in), while the bridge goes on reading:
// so the cover's own timers run from nearly the moment they would if the
// stranger had reached it directly, and a prober that connects and stays
// silent is dropped by the cover when the cover would drop it, not a
// hello-timeout later. The cover is told nothing until the bridge has
// decided; if it speaks or hangs up first, the bridge stops reading and
// passes that on. A genuine client sends its whole ClientHello at once,
// so it is known before DialDelay and no connection to the cover is made
// for it; one dialed already (a hello slower than DialDelay) is closed
// unused.
type CoverFace struct {
	// Address is the cover's "host:port".
	Address string
	// Dial connects to the cover. nil means a net.Dialer with DialTimeout.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DialTimeout bounds the dial. Zero means 10 seconds.
	DialTimeout time.Duration
	// DialDelay is how long after a connection arrives the cover is
	// dialed while the bridge does not yet know whose it is. Zero means
	// defaultCoverDialDelay; negative means at once.
	DialDelay time.Duration
}

// defaultCoverDialDelay is long enough for a ClientHello sent in one burst
// right after the TCP handshake (as every TLS client sends it) to arrive
// whole and be classified, and short beside any timeout a website has and
// the jitter of the paths that would measure it.
const defaultCoverDialDelay = 20 * time.Millisecond

// errCoverNotDialed is the dial error of an early cover connection that
// was not needed: a genuine client's.
var errCoverNotDialed = errors.New("transport: the cover was not dialed")

// earlyCover is the cover connection opened for one incoming connection
// before the bridge knows whether it will be needed.
type earlyCover struct {
	stranger net.Conn // the incoming connection, whose read deadline the watcher may cut short

	dialed chan struct{} // closed when the dial has ended (or was given up)
	conn   net.Conn      // valid after dialed, if err == nil
	err    error

	release     chan struct{} // closed when the bridge has decided: dial now, or not at all
	releaseOnce sync.Once

	mu        sync.Mutex
	decided   bool          // the bridge has classified the connection
	abandoned bool          // ... as a genuine client's: no cover connection is needed
	spoke     chan struct{} // closed when the watcher's read has returned
	first     []byte        // what that read returned
	readErr   error
}

// dialEarly starts dialing the cover for stranger and watching it.
func (f *CoverFace) dialEarly(stranger net.Conn) *earlyCover {
	e := &earlyCover{stranger: stranger, dialed: make(chan struct{}), spoke: make(chan struct{}), release: make(chan struct{})}
	go e.run(f)
	return e
}

func (e *earlyCover) run(f *CoverFace) {
	if d := cmp.Or(f.DialDelay, defaultCoverDialDelay); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-e.release:
			t.Stop()
		}
	}
	e.mu.Lock()
	abandoned := e.abandoned
	e.mu.Unlock()
	if abandoned {
		e.err = errCoverNotDialed
		close(e.dialed)
		close(e.spoke)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), orDefault(f.DialTimeout, 10*time.Second))
	e.conn, e.err = f.dial(ctx)
	cancel()
	close(e.dialed)
	if e.err != nil {
		close(e.spoke)
		return
	}
	// Watch the cover until the bridge decides. A cover says nothing
	// before it has heard from the client, unless it times the
	// connection out or refuses it: then the stranger must learn it now.
	buf := make([]byte, 16<<10)
	n, err := e.conn.Read(buf)
	e.mu.Lock()
	e.first, e.readErr = buf[:n], err
	if !e.decided {
		// Cut the ClientHello read short: the stranger meets the face.
		e.stranger.SetReadDeadline(time.Now())
	}
	e.mu.Unlock()
	close(e.spoke)
}

// decide marks the classification as over, so the watcher no longer
// interrupts reads on the stranger's connection.
func (e *earlyCover) decide() {
	e.mu.Lock()
	e.decided = true
	e.mu.Unlock()
}

// abandon gives up the cover connection of a genuine client: it is not
// dialed, or if it is already, it is closed unused.
func (e *earlyCover) abandon() {
	e.mu.Lock()
	e.decided, e.abandoned = true, true
	e.mu.Unlock()
	e.releaseOnce.Do(func() { close(e.release) })
	go func() {
		<-e.dialed
		if e.conn != nil {
			e.conn.Close()
		}
	}()
}

// splice passes c, whose first bytes were already read into prefix, to the
// cover and copies both ways until both directions end.
func (e *earlyCover) splice(c net.Conn, prefix []byte) {
	e.decide()
	e.releaseOnce.Do(func() { close(e.release) }) // dial now, if not yet
	defer c.Close()
	// Copy between the bare TCP connections, so that the kernel can
	// splice and a reset can be passed on; c itself is still closed by
	// the deferred Close, so wrappers (connection limits) see the end.
	stranger := unwrapConn(c)
	<-e.dialed // bounded by the dial timeout
	if e.err != nil {
		// Nothing better to do: a website that is down refuses too.
		resetConn(stranger)
		return
	}
	cover := e.conn
	defer cover.Close()
	// Stop the watcher, keeping anything the cover already said.
	cover.SetReadDeadline(time.Now())
	<-e.spoke
	cover.SetReadDeadline(time.Time{})
	stranger.SetReadDeadline(time.Time{})
	if len(e.first) > 0 {
		if _, err := stranger.Write(e.first); err != nil {
			resetConn(cover)
			return
		}
	}
	if errors.Is(e.readErr, syscall.ECONNRESET) {
		resetConn(stranger)
		return
	}
	// Give the cover what the stranger sent, together with whatever
	// else has arrived, in one write: the cover should see the bytes in
	// the segments it would have seen, not split where we stopped
	// reading. If the cover has hung up already the write fails, and the
	// copy below passes its ending on.
	if len(prefix) > 0 {
		more := make([]byte, 16<<10)
		n := readAvailable(stranger, more)
		cover.Write(append(prefix, more[:n]...))
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(cover, stranger) // stranger to cover
	}()
	pipe(stranger, cover) // cover to stranger
	wg.Wait()
}

// How often a bridge in cover mode asks the cover what it negotiates.
const (
	coverProbeInterval = 10 * time.Minute
	coverProbeTimeout  = 15 * time.Second
)

// dial opens a TCP connection to the cover.
func (f *CoverFace) dial(ctx context.Context) (net.Conn, error) {
	if f.Dial != nil {
		return f.Dial(ctx, "tcp", f.Address)
	}
	return (&net.Dialer{}).DialContext(ctx, "tcp", f.Address)
}

// coverName is the server name the bridge's own visits to its cover send:
// the bridge's first name, else the cover's if its address has one, else
// none.
func (s *Server) coverName() string {
	if len(s.cfg.ServerNames) > 0 {
		return s.cfg.ServerNames[0]
	}
	if host, _, err := net.SplitHostPort(s.cfg.Cover.Address); err == nil && net.ParseIP(host) == nil {
		return host
	}
	return ""
}

// watchCoverTLS keeps s.coverTLS current until the server closes: what
// the cover answers Chrome's hello (probeTLS), asked at start and every
// coverProbeInterval, sooner after a failure.
func (s *Server) watchCoverTLS() {
	defer s.wg.Done()
	name := s.coverName()
	wait := 2 * time.Second // until the first answer; then coverProbeInterval
	for {
		ct, err := s.cfg.Cover.probeTLS(s.ctx, name)
		if err == nil && !goSupportsGroup(ct.group) {
			s.log.Warn("the cover picks a key exchange group this bridge cannot", "group", uint16(ct.group))
		}
		if err == nil {
			// Makes the key, which for RSA takes a while: here, not
			// while a client waits.
			err = ct.prepare()
		}
		switch {
		case err == nil:
			s.coverTLS.Store(ct)
			wait = coverProbeInterval
			s.log.Debug("learned the cover's handshake", "group", uint16(ct.group), "hrr", ct.hrr,
				"suite", ct.suite, "flight", fmt.Sprint(ct.flight), "key", ct.key.String(),
				"chain", len(ct.chain), "padded", ct.padded)
			switch {
			case ct.flight == nil:
				// Go writes one message a record; a cover that packs
				// its flight into fewer records cannot be copied.
				s.log.Warn("the cover's handshake flight is not one message a record; tunnels' flights will differ from it")
			case !ct.padded:
				s.log.Warn("tunnels' certificate records cannot be made as long as the cover's", "cover", ct.flight[1])
			}
		case s.ctx.Err() == nil:
			// Until the cover answers, genuine clients' handshakes may
			// differ from the cover's: retry soon, and say so.
			s.log.Warn("cannot ask the cover how it answers Chrome; retrying", "error", safelog.Error(err, false), "in", wait)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
		if s.coverTLS.Load() == nil {
			wait = min(2*wait, coverProbeInterval)
		}
	}
}

// goSupportsGroup reports whether crypto/tls can use g on the server side.
func goSupportsGroup(g tls.CurveID) bool {
	switch g {
	case tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521, tls.X25519MLKEM768:
		return true
	}
	return false
}
