package transport

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/xtaci/smux"
)

// Flow-control sizing. A stream must carry 100 Mbit/s over a 100 ms RTT path,
// which needs a window of at least one bandwidth-delay product:
// 100e6/8 * 0.1 = 1.25 MB. We round up to 2 MiB per stream, and let the
// session as a whole buffer four such streams.
const (
	streamWindow  = 2 << 20
	sessionWindow = 4 * streamWindow
	// maxFrameSize is the largest smux data frame. Together with the
	// batching writer it lets TLS fill whole 16 KiB records under load.
	maxFrameSize = 32 << 10
	// Keepalives find dead sessions (a NAT that dropped us, a bridge that
	// rebooted) so the client redials instead of hanging.
	keepAliveInterval = 15 * time.Second
	keepAliveTimeout  = 45 * time.Second
	// batchLimit bounds the bytes queued in a batchConn before writers block.
	batchLimit = 256 << 10
)

// muxConfig is the smux configuration both ends use.
func muxConfig() *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2 // per-stream flow control
	c.MaxFrameSize = maxFrameSize
	c.MaxReceiveBuffer = sessionWindow
	c.MaxStreamBuffer = streamWindow
	c.KeepAliveInterval = keepAliveInterval
	c.KeepAliveTimeout = keepAliveTimeout
	return c
}

// batchConn sits between smux and the TLS connection. smux writes every
// frame (8-byte header plus data) with its own Write, and crypto/tls turns
// each Write into at least one record: a stream of 30-byte records is both a
// fingerprint and a syscall per frame. batchConn queues writes and a single
// flusher goroutine writes everything queued so far in one call, so under
// load records come out full, while an idle connection still sends a lone
// frame at once (no added latency, no timer).
//
// It also speaks the framing of framing.go both ways: each flush goes out
// as DATA frames, padded when it carries a young stream's bytes, and Read
// returns the DATA bodies the peer sent.
//
// Write returns once the bytes are queued; a write error from the network
// is returned by the next Write. At most batchLimit bytes are queued; past
// that, writers block. Write and Close are safe for concurrent use (Read
// is smux's alone); Close is idempotent.
type batchConn struct {
	net.Conn // deadlines go straight to the carrier
	in       frameReader

	mu      sync.Mutex
	cond    *sync.Cond // signalled when queue drains, data arrives, or on close
	queue   []byte
	pad     bool // the queue holds bytes of a young stream: pad the flush
	policy  padPolicy
	spare   []byte // the flusher's previous buffer, reused
	err     error  // sticky write error
	closed  bool
	flushed chan struct{} // closed when the flusher exits
}

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, in: frameReader{r: c}, flushed: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flushLoop()
	return b
}

// Read returns the smux bytes the peer sent, without framing or padding.
func (b *batchConn) Read(p []byte) (int, error) { return b.in.Read(p) }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.queue) >= batchLimit && b.err == nil && !b.closed {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		return 0, net.ErrClosed
	}
	// Frame as we queue, so the flush writes the queue as it is: no
	// second copy of every byte on the way out.
	b.queue = appendFrames(b.queue, p, 0)
	if b.policy.young(p) {
		b.pad = true
	}
	b.cond.Broadcast()
	return len(p), nil
}

func (b *batchConn) flushLoop() {
	defer close(b.flushed)
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && !b.closed {
			b.cond.Wait()
		}
		if len(b.queue) == 0 { // closed and drained
			b.mu.Unlock()
			return
		}
		buf, pad := b.queue, b.pad
		b.queue, b.pad = b.spare[:0], false
		b.cond.Broadcast() // writers waiting on the limit may go on
		b.mu.Unlock()

		if pad {
			// In the same Write: the padding shares the last TLS
			// record with the data.
			buf = appendFrames(buf, nil, padLen())
		}
		_, err := b.Conn.Write(buf)

		b.mu.Lock()
		b.spare = buf[:0]
		if cap(b.spare) > 4*batchLimit {
			b.spare = nil // don't keep a burst's buffer forever
		}
		if err != nil {
			b.err = err
			b.queue = nil
			b.cond.Broadcast()
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
	}
}

// Close closes the carrier. Queued bytes are dropped: smux only closes a
// session when it is finished with it or the carrier has failed.
func (b *batchConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.queue = nil
	b.cond.Broadcast()
	b.mu.Unlock()
	return b.Conn.Close()
}

var _ io.ReadWriteCloser = (*batchConn)(nil)
