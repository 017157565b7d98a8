//go:build linux

package transport

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xtaci/smux"

	"github.com/mirage-pt/mirage/transport/transporttest"
)

// The baseline of BenchmarkSession: smux straight over one TLS
// connection, with the framing, padding and batching Mirage used before
// sessions outlived their connections (the "plain session"). It lives in
// a test file: nothing but the benchmark uses it.

const batchLimit = 256 << 10

// plainReader returns the DATA bodies of a frame stream, reading them
// straight into the caller's buffer, as the plain session's reader did.
type plainReader struct {
	r   io.Reader
	rem int // bytes left in the current DATA frame
	hdr [frameHeaderLen]byte
}

func (f *plainReader) Read(p []byte) (int, error) {
	for f.rem == 0 {
		if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
			return 0, err
		}
		n := int(binary.BigEndian.Uint16(f.hdr[1:]))
		switch f.hdr[0] {
		case frameData:
			f.rem = n
		case framePad:
			if _, err := io.CopyN(io.Discard, f.r, int64(n)); err != nil {
				return 0, io.ErrUnexpectedEOF
			}
		default:
			return 0, errBadFrame
		}
	}
	if len(p) > f.rem {
		p = p[:f.rem]
	}
	n, err := f.r.Read(p)
	f.rem -= n
	return n, err
}

// plainConn sits between smux and the TLS connection. smux writes every
// frame (8-byte header plus data) with its own Write, and crypto/tls turns
// each Write into at least one record: a stream of 30-byte records is both a
// fingerprint and a syscall per frame. plainConn queues writes and a single
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
type plainConn struct {
	net.Conn // deadlines go straight to the carrier
	in       plainReader

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

func newPlainConn(c net.Conn) *plainConn {
	b := &plainConn{Conn: c, in: plainReader{r: c}, flushed: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flushLoop()
	return b
}

// Read returns the smux bytes the peer sent, without framing or padding.
func (b *plainConn) Read(p []byte) (int, error) { return b.in.Read(p) }

func (b *plainConn) Write(p []byte) (int, error) {
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
	if len(p) >= smuxHeaderLen && b.policy.young(p[:smuxHeaderLen], len(p)-smuxHeaderLen) {
		b.pad = true
	}
	b.cond.Broadcast()
	return len(p), nil
}

func (b *plainConn) flushLoop() {
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
func (b *plainConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.queue = nil
	b.cond.Broadcast()
	b.mu.Unlock()
	return b.Conn.Close()
}

var _ io.ReadWriteCloser = (*plainConn)(nil)

// plainSession returns the client side of a plain session (smux over one
// framed TLS connection) on loopback, whose server runs handler on each
// stream.
func plainSession(b *testing.B, handler func(*smux.Stream)) *smux.Session {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	scfg := &tls.Config{Certificates: []tls.Certificate{siteCertificate(b)}}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		sess, err := smux.Server(newPlainConn(tls.Server(c, scfg)), muxConfig(false))
		if err != nil {
			return
		}
		defer sess.Close()
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			go handler(st)
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		b.Fatal(err)
	}
	sess, err := smux.Client(newPlainConn(c), muxConfig(true))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sess.Close() })
	return sess
}

// plainHandler answers a 2-byte request as a bridge does, then echoes.
func plainHandler(st *smux.Stream) {
	defer st.Close()
	var req [2]byte
	if _, err := io.ReadFull(st, req[:]); err != nil {
		return
	}
	st.Write(marshalReply(StatusOK))
	io.Copy(st, st)
}

// BenchmarkSession compares the session that outlives its connections
// (carrier) with the plain session it replaced (smux over one framed TLS
// connection), side by side in one run: bulk throughput on one stream, on
// one healthy carrier, and the cost of opening a stream (request, reply
// and a one-byte echo).
//
//	go test -run XXX -bench Session -count 6 ./transport/ | benchstat -col /impl -
func BenchmarkSession(b *testing.B) {
	const chunk = 256 << 10
	buf := make([]byte, chunk)
	bulk := func(b *testing.B, st net.Conn) {
		b.SetBytes(chunk)
		b.ResetTimer()
		cpu := processCPU(b)
		for range b.N {
			if _, err := st.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		// Both ends run in this process: its CPU time is what client and
		// server spend together, a figure that, unlike the rate, hardly
		// moves when other work shares the machine.
		b.ReportMetric(float64(processCPU(b)-cpu)/float64(b.N*chunk), "cpu-ns/B")
	}
	discard := func(st *Stream) {
		st.Reply(StatusOK)
		io.Copy(io.Discard, st)
	}
	mirage := func(b *testing.B, handler func(*Stream)) *Session {
		br := startBridge(b, newSiteFace(b), handler, func(c *ServerConfig) { c.Logger = nil })
		sess, err := Dial(context.Background(), br.clientConfig())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sess.Close() })
		return sess
	}
	b.Run("throughput/impl=plain", func(b *testing.B) {
		sess := plainSession(b, func(st *smux.Stream) { io.Copy(io.Discard, st) })
		st, err := sess.OpenStream()
		if err != nil {
			b.Fatal(err)
		}
		bulk(b, st)
	})
	b.Run("throughput/impl=carrier", func(b *testing.B) {
		sess := mirage(b, discard)
		st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
		if err != nil {
			b.Fatal(err)
		}
		bulk(b, st)
	})
	echoOne := func(b *testing.B, st net.Conn) {
		if _, err := st.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
	b.Run("open/impl=plain", func(b *testing.B) {
		sess := plainSession(b, plainHandler)
		req, _ := Request{Command: CmdDefault}.MarshalBinary()
		for range b.N {
			st, err := sess.OpenStream()
			if err != nil {
				b.Fatal(err)
			}
			st.Write(req)
			if err := readReply(st); err != nil {
				b.Fatal(err)
			}
			echoOne(b, st)
		}
	})
	b.Run("open/impl=carrier", func(b *testing.B) {
		sess := mirage(b, echoHandler)
		for range b.N {
			st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
			if err != nil {
				b.Fatal(err)
			}
			echoOne(b, st)
		}
	})
}

// processCPU returns the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBudget measures what a user on a freezing network gets: 256 KiB
// downloads through a relay that freezes every connection after 16 KB,
// with budget=14k, against the bound that carrier pacing sets (at most 2
// handshakes per 400 ms, so 5 carriers a second, each carrying its budget
// less its handshake). Reported: KB/s, the bound, and their ratio, for
// carriers that resume the TLS session of an earlier one (as they do) and
// for carriers that each make a full handshake (the baseline: what
// resumption leaves of each budget for data, and the CPU it saves),
// with the tests' self-signed RSA certificate and with a chain of a leaf
// and its CA's certificate, as an ACME face sends.
//
//	go test -run XXX -bench Budget -benchtime 4x ./transport/
func BenchmarkBudget(b *testing.B) {
	for _, cert := range []struct {
		name string
		make func(*testing.B) tls.Certificate
	}{
		{"self-signed", func(b *testing.B) tls.Certificate { return siteCertificate(b) }},
		{"chain", func(b *testing.B) tls.Certificate { return chainCertificate(b) }},
	} {
		for _, mode := range []string{"resumed", "full"} {
			b.Run(cert.name+"/"+mode, func(b *testing.B) { benchmarkBudget(b, cert.make(b), mode == "full") })
		}
	}
}

func benchmarkBudget(b *testing.B, cert tls.Certificate, noResumption bool) {
	face := newSiteFace(b)
	face.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	br := startBridge(b, face, loadHandler, func(c *ServerConfig) { c.Logger = nil })
	r, err := transporttest.NewRelay(br.addr, transporttest.RelayOptions{FreezeDown: freezeAt})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	cfg := br.clientConfig()
	cfg.Address = r.Addr()
	cfg.Budget = 14 << 10
	cfg.noResumption = noResumption
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	// What the first carrier's handshake cost downstream: everything it
	// received before any stream (server flight, ticket, opening).
	sess.conn.mu.Lock()
	handshake := sess.conn.carriers[0].raw.read.Load()
	sess.conn.mu.Unlock()
	const size = 256 << 10
	var times []time.Duration
	carriers := len(r.Stats())
	b.SetBytes(size)
	b.ResetTimer()
	cpu := processCPU(b)
	for i := range b.N {
		start := time.Now()
		if err := transfer(context.Background(), sess, 'D', size, uint64(i), 30*time.Second); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(start))
	}
	b.StopTimer()
	cpu = processCPU(b) - cpu
	carriers = len(r.Stats()) - carriers
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	median := times[len(times)/2]
	got := float64(size) / median.Seconds() / 1000
	// 2 handshakes per 400 ms: 5 carriers a second.
	bound := float64(cfg.Budget-int(handshake)) * float64(time.Second) / float64(handshakeWindow) * maxHandshakeBurst / 1000
	b.ReportMetric(got, "KB/s")
	b.ReportMetric(bound, "bound-KB/s")
	b.ReportMetric(got/bound, "of-bound")
	// What the client allows itself: 2 per handshakeWindow+pacingMargin.
	paced := float64(cfg.Budget-int(handshake)) * float64(time.Second) / float64(handshakeWindow+pacingMargin) * maxHandshakeBurst / 1000
	b.ReportMetric(got/paced, "of-paced")
	// Data per carrier: what each budget carried of the downloads.
	b.ReportMetric(float64(size)*float64(b.N)/float64(max(carriers, 1)), "B/carrier")
	b.ReportMetric(float64(sess.resumed.Load()), "resumed")
	// Client, bridge and relay run in this process: what a carrier costs
	// them together, its handshake and its share of the bytes.
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(max(carriers, 1)), "cpu-ms/carrier")
	b.Log(fmt.Sprintf("median %v per 256 KiB: %.1f KB/s; pacing bound %.1f KB/s (first handshake %d bytes of a %d budget); %d carriers, %d resumed", median, got, bound, handshake, cfg.Budget, carriers, sess.resumed.Load()))
}
