//go:build linux

package main

import (
	"context"
	"net"
	"sync"
	"syscall"
	"time"
)

// link is one direction of a shared bottleneck: every connection of a system
// that crosses the delay line queues on the same serializer, so 8 streams
// share the rate as they would on a real access link instead of each getting
// a private copy of it.
type link struct {
	mu       sync.Mutex
	rate     float64 // bytes per second; 0 means unlimited
	oneWay   time.Duration
	nextFree time.Time
	moved    int64 // bytes that crossed, TCP payload only
}

// schedule returns when the last bit of n bytes leaves the serializer. The
// schedule is kept as absolute times so that timer slop does not accumulate
// into a lower rate than asked for.
func (l *link) schedule(n int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.moved += int64(n)
	now := time.Now()
	start := l.nextFree
	if start.Before(now) {
		start = now
	}
	done := start
	if l.rate > 0 {
		done = start.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	}
	l.nextFree = done
	return done
}

// delayLine listens on loopback and forwards every connection to upstream
// through two shared links (one per direction), each adding rtt/2 and
// limiting to rate.
type delayLine struct {
	ln       net.Listener
	upstream string
	up, down *link
	// handshake makes each new connection pay the TCP handshake's round
	// trip: the delay line is itself a TCP endpoint on loopback, so the
	// client's connect() completes at once and, left alone, a system that
	// opens a TCP connection per stream would get its handshake for free
	// while one that reuses a session gains nothing from doing so.
	handshake bool
	rtt       time.Duration
}

func newDelayLine(upstream string, rtt time.Duration, bitsPerSec float64, handshake bool) (*delayLine, error) {
	// The client's connections are accepted with a small receive buffer
	// (the up direction's queue), the upstream ones dialled with one
	// (the down direction's): see queueBuffer.
	lc := net.ListenConfig{Control: queueBuffer(bitsPerSec / 8)}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &delayLine{
		ln:        ln,
		upstream:  upstream,
		handshake: handshake,
		rtt:       rtt,
		up:        &link{rate: bitsPerSec / 8, oneWay: rtt / 2},
		down:      &link{rate: bitsPerSec / 8, oneWay: rtt / 2},
	}
	go d.serve()
	return d, nil
}

func (d *delayLine) Addr() string { return d.ln.Addr().String() }

func (d *delayLine) Close() { d.ln.Close() }

// moved returns the bytes that crossed the delay line so far, both ways:
// what the system puts on the wire (TCP payload: its handshakes,
// framing, padding and the data it carries).
func (d *delayLine) moved() int64 {
	var n int64
	for _, l := range []*link{d.up, d.down} {
		l.mu.Lock()
		n += l.moved
		l.mu.Unlock()
	}
	return n
}

func (d *delayLine) serve() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		// On a real path the client's first bytes can leave only when the
		// SYN-ACK is back, one RTT after connect().
		var notBefore time.Time
		if d.handshake {
			notBefore = time.Now().Add(d.rtt)
		}
		go func() {
			dialer := net.Dialer{Timeout: 10 * time.Second, Control: queueBuffer(d.down.rate)}
			u, err := dialer.Dial("tcp", d.upstream)
			if err != nil {
				c.Close()
				return
			}
			// Both directions run to their end (half-closes pass
			// through) before either socket is closed.
			var both sync.WaitGroup
			both.Add(2)
			go func() { pipeDelayed(u, c, d.up, notBefore); both.Done() }()
			go func() { pipeDelayed(c, u, d.down, time.Time{}); both.Done() }()
			both.Wait()
			c.Close()
			u.Close()
		}()
	}
}

// readAhead is how far ahead of the serializer a connection's reader may
// be: the bottleneck queue, per connection, in link time.
const readAhead = 5 * time.Millisecond

// queueBuffer returns a socket Control function that sets the receive
// buffer of the delay line's side of a connection to 1 ms of link time at
// rate (bytes a second; at least 4 KiB; Linux doubles either), before it
// connects. The reader's read-ahead is meant to be the connection's whole
// bottleneck queue, but the kernel's receive buffer in front of it, which
// grows to hundreds of KiB on loopback, was a second one: a FIFO of its
// own that a busy connection filled and that a new connection beside it
// skipped. On a real path a sender's bytes wait in the bottleneck's queue
// and no other (what is in flight beyond it does not hold later bytes
// back). A system that carries all its streams in one connection paid
// that extra queue on every new stream behind a download: 100 ms more at
// 60 ms and 20 Mbit/s, and still 52 ms at 5 Mbit/s with a buffer of 16
// KiB (doubled: 32 KiB).
// With no rate (unlimited), the buffer is left to the kernel.
func queueBuffer(rate float64) func(network, address string, rc syscall.RawConn) error {
	return func(network, address string, rc syscall.RawConn) error {
		if rate <= 0 {
			return nil
		}
		n := max(int(rate*time.Millisecond.Seconds()), 4<<10)
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
		}); err != nil {
			return err
		}
		return serr
	}
}

type chunk struct {
	b  []byte
	at time.Time
}

// pipeDelayed copies src to dst through l. The reader waits until each chunk
// has left the serializer before reading the next, which pushes back on the
// sender the way a full bottleneck queue would; a second goroutine delivers
// each chunk one propagation delay later.
//
// Nothing reaches dst before notBefore plus the one-way delay.
func pipeDelayed(dst, src net.Conn, l *link, notBefore time.Time) {
	q := make(chan chunk, 4096) // ample for a BDP of 64 MiB at 16 KiB chunks
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 16<<10)
			n, err := src.Read(buf)
			if n > 0 {
				done := l.schedule(n)
				at := done
				if at.Before(notBefore) {
					at = notBefore
				}
				q <- chunk{buf[:n], at.Add(l.oneWay)}
				// Read ahead by a few ms of link time: sleeping exactly
				// until done would let each timer overshoot idle the
				// serializer, and one stream would get ~60% of the rate.
				if w := time.Until(done) - readAhead; w > 0 {
					time.Sleep(w)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			// Drain so the reader is not stuck on a full queue, and tell
			// the other side.
			src.Close()
			for range q {
			}
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}
