//go:build linux

// The relay is Linux-only because of one thing: noticing that a client has
// closed a connection whose upload is frozen. A frozen direction is not read
// (so that the sender feels backpressure, as behind a censor that drops
// packets), and then the portable socket API cannot see the client's FIN:
// it waits behind unread bytes in the relay's socket, or, once the relay's
// receive window is shut, it is never even sent and waits in the client's
// socket. Linux shows both as TCP states: TCP_INFO for the relay's end,
// /proc/net/tcp for the client's end on the same host.

package transporttest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RelayOptions says how a Relay mistreats the connections it forwards. The
// zero value forwards everything faithfully.
type RelayOptions struct {
	// FreezeDown: after this many bytes have gone from the target to the
	// client on one connection, the relay silently stops forwarding that
	// direction, as TSPU does to flows to foreign hosting after a byte
	// budget. It stops reading the target's socket, so the target's writes
	// eventually block as they would if a middlebox dropped its packets;
	// it sends nothing more, no FIN and no RST, and keeps both sockets
	// open. Exactly FreezeDown bytes pass. 0 means never.
	FreezeDown int
	// FreezeUp is the same for bytes from the client to the target.
	// 0 means never.
	FreezeUp int
	// CutMin and CutMax: if CutMax > 0, each connection is cut after a
	// random duration in [CutMin, CutMax] counted from its accept. A cut
	// is, at random with even odds, either a reset (both sockets are closed
	// with SO_LINGER 0, so both ends see an RST) or silent (neither
	// direction is forwarded or read any more and nothing is closed until
	// Relay.Close). A connection already silent in both directions (by
	// outage, by freezes, or because both ends finished) is not cut.
	CutMin, CutMax time.Duration
}

// RelayConn is what the relay saw of one connection.
type RelayConn struct {
	// Accepted is when the relay accepted the client's connection. Ended is
	// when the connection ended for the relay, zero while it is open: see
	// Relay.MaxOpen for what ends a connection.
	Accepted, Ended time.Time
	// Down and Up count the bytes forwarded target→client and
	// client→target.
	Down, Up int64
	// Frozen is set when a freeze, a silent cut or an outage stopped a
	// direction that was still being forwarded. A connection accepted
	// during an outage is Frozen from the start.
	Frozen bool
	// Reset is set when the connection was cut by a reset.
	Reset bool
}

// Relay is a loopback TCP relay in front of a target, standing in for a
// censor's middlebox: it forwards connections and, as its options and
// SetOutage say, freezes, cuts or blackholes them. It keeps a record of
// every connection for tests to check how a client behaved (how many
// connections it held open at once, how fast it opened them). It is built
// on Linux only; see the comment at the top of this file.
type Relay struct {
	target string
	opts   RelayOptions
	ln     net.Listener
	// in runs a function in the relay's network namespace: see NewRelayIn.
	in func(func())
	// ctx is cancelled by Close, so that a dial in progress gives up and
	// the goroutines that wait on timers return.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	outage  bool
	conns   []*relayConn // in accept order, so their Accepted times are sorted
	watched []*relayConn // see watchLocked
	open    int
	maxOpen int
}

// dirState is where one direction of a connection stands.
type dirState int

const (
	live     dirState = iota // being forwarded
	frozen                   // stopped for good; its socket is no longer read
	finished                 // its EOF was passed on with CloseWrite
)

// relayConn is one connection through the relay.
type relayConn struct {
	r      *Relay
	client *net.TCPConn
	// clientKey finds the client's end of the connection in /proc/net/tcp
	// ("" if it cannot be named there).
	clientKey string
	// ended is closed when the connection ends, to release its timers.
	ended chan struct{}

	// The rest is guarded by r.mu.
	target   *net.TCPConn // nil while dialling, and for ever if blackholed
	stat     RelayConn
	up, down dirState
	// torn is set once the relay has closed, or is about to close, the
	// sockets: errors after that are the relay's own doing, not news.
	torn     bool
	watching bool // in r.watched
}

// NewRelay listens on 127.0.0.1:0 and forwards each accepted connection to
// target, dialling it afresh for every connection.
func NewRelay(target string, opts RelayOptions) (*Relay, error) {
	return NewRelayIn(nil, target, opts)
}

// NewRelayIn is NewRelay for a relay inside another network namespace,
// such as a test's private network: run must call its argument on a
// thread in that namespace and wait for it. A socket belongs to the
// namespace of the thread that opens it, and /proc/thread-self/net/tcp
// shows that thread's, so the relay listens, dials the target and reads
// the TCP table through run; everything else runs anywhere. run must
// work until Close returns. A nil run means this process's own namespace.
func NewRelayIn(run func(func()), target string, opts RelayOptions) (*Relay, error) {
	if opts.FreezeDown < 0 || opts.FreezeUp < 0 || opts.CutMin < 0 || opts.CutMax > 0 && opts.CutMax < opts.CutMin {
		return nil, errors.New("transporttest: invalid RelayOptions")
	}
	if run == nil {
		run = func(f func()) { f() }
	}
	var ln net.Listener
	var err error
	run(func() { ln, err = net.Listen("tcp", "127.0.0.1:0") })
	if err != nil {
		return nil, err
	}
	r := &Relay{target: target, opts: opts, ln: ln, in: run}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(2)
	go r.acceptLoop()
	go r.watchLoop()
	return r, nil
}

// Addr returns the address clients connect to, "127.0.0.1:port".
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// SetOutage(true) makes the route disappear, as in a regional shutdown:
// every open connection is frozen silently both ways and never resumes,
// and new connections are accepted but held silent, neither forwarded nor
// dialled to the target and never answered, as a blackhole would.
// SetOutage(false) forwards new connections again; the ones frozen by the
// outage stay dead.
func (r *Relay) SetOutage(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outage = on
	if on {
		for _, c := range r.conns {
			c.silenceLocked()
		}
	}
}

// Stats returns a copy of the record of every connection so far, in the
// order they were accepted.
func (r *Relay) Stats() []RelayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RelayConn, len(r.conns))
	for i, c := range r.conns {
		out[i] = c.stat
	}
	return out
}

// Open returns how many connections are open through the relay now, in
// the sense of MaxOpen. Tests wait for it to fall to 0 after their clients
// close, before they read MaxOpen or Stats.
func (r *Relay) Open() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.open
}

// MaxOpen returns the largest number of connections that were open through
// the relay at once. A connection is open from its accept until it ends,
// and it ends when the client is done with it or the relay ends it:
//   - the client closes it or resets it. While the upload is forwarded the
//     relay sees the FIN or RST by reading; once the upload is frozen
//     (freeze, silent cut, outage, blackhole) the relay stops reading the
//     client and instead looks every 50 ms at the TCP states of both ends,
//     which show a close even when unread bytes, or a shut receive window,
//     hold the FIN back. A client that only half-closes counts as ended
//     from its FIN.
//   - a write to the client fails (the client is gone), or the target's
//     side fails and the relay resets the client;
//   - a reset cut, or Relay.Close.
//
// So a frozen or silently cut connection stays open until the client gives
// up on it, which is what a test of a client's concurrency wants to see.
func (r *Relay) MaxOpen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxOpen
}

// MaxAcceptsWithin returns the largest number of connections accepted
// within any window of length d, the ends included: a burst of handshakes
// is what TSPU limits (more than about 3 within about 400 ms).
func (r *Relay) MaxAcceptsWithin(d time.Duration) int {
	r.mu.Lock()
	times := make([]time.Time, len(r.conns))
	for i, c := range r.conns {
		times[i] = c.stat.Accepted
	}
	r.mu.Unlock()
	return maxWithin(times, d)
}

// maxWithin returns the largest number of the sorted times that fit in a
// closed window of length d.
func maxWithin(times []time.Time, d time.Duration) int {
	if d < 0 {
		return 0
	}
	best, i := 0, 0
	for j := range times {
		for times[j].Sub(times[i]) > d {
			i++
		}
		best = max(best, j-i+1)
	}
	return best
}

// Close closes the listener and every connection, ends the ones still open
// and waits for the relay's goroutines to return. It returns the error of
// closing the listener; closing again does nothing.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	// Cancelled before the listener closes, so the accept loop takes the
	// error for the end and not for a hiccup to retry.
	r.cancel()
	var socks []*net.TCPConn
	for _, c := range r.conns {
		c.endLocked()
		if !c.torn {
			c.torn = true
			socks = append(socks, c.client)
			if c.target != nil {
				socks = append(socks, c.target)
			}
		}
	}
	r.mu.Unlock()
	err := r.ln.Close()
	for _, s := range socks {
		s.Close()
	}
	r.wg.Wait()
	return err
}

// acceptLoop admits connections until Close.
func (r *Relay) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if r.ctx.Err() != nil {
				return
			}
			// Something like running out of descriptors: wait a little
			// rather than spin, and rather than stop accepting for good,
			// which would look like a censor to the test.
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		// Stamped before admit takes the lock (which the watcher may
		// hold while it reads the kernel's table), so that the record is
		// when the connection arrived, not when the relay got to it.
		r.admit(c.(*net.TCPConn), time.Now())
	}
}

// admit records a new connection and starts forwarding it, or, during an
// outage, holds it silent.
func (r *Relay) admit(client *net.TCPConn, accepted time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		client.Close()
		return
	}
	c := &relayConn{r: r, client: client, ended: make(chan struct{})}
	// The client's end has the relay's local and remote addresses swapped.
	if local, remote := procAddr(client.RemoteAddr()), procAddr(client.LocalAddr()); local != "" && remote != "" {
		c.clientKey = local + " " + remote
	}
	c.stat.Accepted = accepted
	r.conns = append(r.conns, c)
	r.open++
	r.maxOpen = max(r.maxOpen, r.open)
	if r.outage {
		// A blackhole: never dialled, never read, never answered. It is
		// still watched so that it ends when the client gives up.
		c.up, c.down = frozen, frozen
		c.stat.Frozen = true
		c.watchLocked()
		return
	}
	r.wg.Add(1)
	go c.run()
	if r.opts.CutMax > 0 {
		d := r.opts.CutMin + rand.N(r.opts.CutMax-r.opts.CutMin+1)
		r.wg.Add(1)
		go c.cutAfter(d, rand.IntN(2) == 0)
	}
}

// run dials the target and starts a pump for each direction still live.
func (c *relayConn) run() {
	r := c.r
	defer r.wg.Done()
	var conn net.Conn
	var err error
	r.in(func() {
		var d net.Dialer
		conn, err = d.DialContext(r.ctx, "tcp", r.target)
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		// Without a relay the client would have been refused: reset it.
		if !c.torn {
			c.torn = true
			c.endLocked()
			abort(c.client)
		}
		return
	}
	t := conn.(*net.TCPConn)
	if c.torn {
		// Cut by a reset or closed while dialling.
		if c.stat.Reset {
			abort(t)
		} else {
			t.Close()
		}
		return
	}
	// Kept even if an outage or a silent cut froze both directions while
	// dialling: the target saw a connection, which Close must close.
	c.target = t
	if c.up == live {
		r.wg.Add(1)
		go c.pump(t, c.client, true)
	}
	if c.down == live {
		r.wg.Add(1)
		go c.pump(c.client, t, false)
	}
}

// pump forwards one direction, src to dst, until it ends or is frozen.
// Frozen by its own byte budget, it simply stops reading; frozen from
// outside (silenceLocked), its blocked read or write is woken by a past
// deadline and it finds its direction no longer live.
func (c *relayConn) pump(dst, src *net.TCPConn, up bool) {
	defer c.r.wg.Done()
	limit := c.r.opts.FreezeDown
	if up {
		limit = c.r.opts.FreezeUp
	}
	buf := make([]byte, 32<<10)
	passed := 0
	for {
		p := buf
		if limit > 0 {
			if passed >= limit {
				c.freeze(up)
				return
			}
			// Read no more than the budget allows, so that what is
			// left stays in the socket and backs up to the sender.
			p = p[:min(len(p), limit-passed)]
		}
		n, rerr := src.Read(p)
		if n > 0 {
			if !c.forwarding(up) {
				return // frozen meanwhile: these bytes are dropped
			}
			m, werr := dst.Write(p[:n])
			passed += m
			c.count(up, m)
			if werr != nil {
				c.fail(up)
				return
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				c.finish(up, dst)
			} else {
				c.fail(up)
			}
			return
		}
	}
}

// dirLocked returns the state of one direction.
func (c *relayConn) dirLocked(up bool) *dirState {
	if up {
		return &c.up
	}
	return &c.down
}

// forwarding reports whether bytes just read for a direction should still
// be passed on.
func (c *relayConn) forwarding(up bool) bool {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	return !c.torn && *c.dirLocked(up) == live
}

// count records n bytes forwarded in a direction.
func (c *relayConn) count(up bool, n int) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	if up {
		c.stat.Up += int64(n)
	} else {
		c.stat.Down += int64(n)
	}
}

// freeze stops a direction whose byte budget is spent.
func (c *relayConn) freeze(up bool) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	d := c.dirLocked(up)
	if c.torn || *d != live {
		return
	}
	*d = frozen
	c.stat.Frozen = true
	if up {
		c.watchLocked()
	}
}

// finish passes a direction's EOF on as a half-close, and closes the
// sockets once both directions have finished.
func (c *relayConn) finish(up bool, dst *net.TCPConn) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	d := c.dirLocked(up)
	if c.torn || *d != live {
		return // a frozen direction passes nothing on, not even its FIN
	}
	*d = finished
	dst.CloseWrite()
	if up {
		c.endLocked()
	}
	if c.up == finished && c.down == finished {
		c.torn = true
		c.client.Close()
		c.target.Close()
	}
}

// fail handles an error reading or writing a live direction: one end
// reset or vanished, so the relay resets both, as the end would have
// reset the other without a relay in between.
func (c *relayConn) fail(up bool) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	if c.torn || *c.dirLocked(up) != live {
		return // the relay's own doing: a freeze's deadline or a close
	}
	c.torn = true
	c.endLocked()
	abort(c.client)
	abort(c.target)
}

// silenceLocked freezes every live direction, for an outage or a silent
// cut. The past deadlines wake pumps blocked in a read or a write without
// closing anything.
func (c *relayConn) silenceLocked() {
	if c.torn {
		return
	}
	past := time.Unix(1, 0)
	if c.up == live {
		c.up = frozen
		c.stat.Frozen = true
		c.client.SetReadDeadline(past)
		if c.target != nil {
			c.target.SetWriteDeadline(past)
		}
	}
	if c.down == live {
		c.down = frozen
		c.stat.Frozen = true
		c.client.SetWriteDeadline(past)
		if c.target != nil {
			c.target.SetReadDeadline(past)
		}
	}
	if c.up == frozen {
		c.watchLocked()
	}
}

// cutAfter cuts the connection d after it was accepted, by a reset or
// silently, unless it ended first.
func (c *relayConn) cutAfter(d time.Duration, reset bool) {
	r := c.r
	defer r.wg.Done()
	t := time.NewTimer(time.Until(c.stat.Accepted.Add(d)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.ended:
		return
	case <-r.ctx.Done():
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.torn || c.up != live && c.down != live {
		return // nothing left to cut
	}
	if !reset {
		c.silenceLocked()
		return
	}
	c.torn = true
	c.stat.Reset = true
	c.endLocked()
	abort(c.client)
	abort(c.target) // nil while dialling; run then resets what it dialled
}

// watchLocked adds the connection, once, to those whose client's close
// watchLoop looks out for: its upload is frozen, so the relay no longer
// reads the client and would not otherwise learn of it.
func (c *relayConn) watchLocked() {
	if c.watching || !c.stat.Ended.IsZero() || c.r.closed {
		return
	}
	c.watching = true
	c.r.watched = append(c.r.watched, c)
}

// watchLoop ends, every 50 ms, the watched connections whose clients have
// closed them.
func (r *Relay) watchLoop() {
	defer r.wg.Done()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-r.ctx.Done():
			return
		}
		r.mu.Lock()
		open := r.watched[:0]
		for _, c := range r.watched {
			if c.stat.Ended.IsZero() && !c.torn {
				open = append(open, c)
			}
		}
		clear(r.watched[len(open):])
		r.watched = open
		watched := slices.Clone(open)
		r.mu.Unlock()

		var table map[string]int // read once a tick, and only if needed
		for _, c := range watched {
			gone := peerClosed(c.client)
			if !gone && c.clientKey != "" {
				if table == nil {
					r.in(func() { table = readTCPTable() })
				}
				st, ok := table[c.clientKey]
				gone = ok && st != tcpEstablished && st != tcpCloseWait
			}
			if gone {
				r.mu.Lock()
				c.endLocked()
				r.mu.Unlock()
			}
		}
	}
}

// endLocked marks the connection ended, once.
func (c *relayConn) endLocked() {
	if !c.stat.Ended.IsZero() {
		return
	}
	c.stat.Ended = time.Now()
	c.r.open--
	close(c.ended)
}

// abort closes c with an RST rather than a FIN. c may be nil.
func abort(c *net.TCPConn) {
	if c == nil {
		return
	}
	c.SetLinger(0)
	c.Close()
}

// Linux TCP states (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpCloseWait   = 8
)

// peerClosed reports whether the peer of c, the relay's end, has sent a
// FIN or an RST, without reading c: the kernel's TCP state moves on (to
// CLOSE_WAIT, CLOSING, TIME_WAIT or CLOSE) even when unread bytes hide the
// FIN from recv. A socket that can no longer be asked counts as closed.
func peerClosed(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	state := -1
	err = rc.Control(func(fd uintptr) {
		// struct tcp_info begins with the state byte, and Linux copies
		// as much of the struct as the caller has room for, so a 4-byte
		// getsockopt reads it without a struct syscall does not define.
		v, err := syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO)
		if err == nil {
			var b [4]byte
			binary.NativeEndian.PutUint32(b[:], uint32(v))
			state = int(b[0])
		}
	})
	if err != nil || state < 0 {
		return true
	}
	return state != tcpEstablished && state != tcpFinWait1 && state != tcpFinWait2
}

// procAddr writes an IPv4 socket address as /proc/net/tcp does: the
// address's four bytes read as one native-endian word, and the port, in
// hex. It returns "" for other addresses.
func procAddr(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return ""
	}
	ip4 := ta.IP.To4()
	if ip4 == nil {
		return ""
	}
	return fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip4), ta.Port)
}

// readTCPTable returns the state of every IPv4 TCP socket in the calling
// thread's network namespace, keyed by "local remote" as procAddr writes
// them. A socket closed by its owner but still sending its FIN
// (FIN_WAIT1, perhaps for minutes behind a shut window) is listed with
// that state. Entries can be missed while the table changes, so only a
// state found says anything, never an absence. It returns an empty map if
// the table cannot be read.
func readTCPTable() map[string]int {
	table := make(map[string]int)
	// /proc/net is /proc/self/net, the main thread's namespace; the
	// calling thread's may differ (NewRelayIn). thread-self needs Linux
	// 3.17.
	b, err := os.ReadFile("/proc/thread-self/net/tcp")
	if err != nil {
		if b, err = os.ReadFile("/proc/net/tcp"); err != nil {
			return table
		}
	}
	for line := range strings.Lines(string(b)) {
		// "sl local_address rem_address st ...", the first line a header.
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			continue
		}
		table[f[1]+" "+f[2]] = int(st)
	}
	return table
}
