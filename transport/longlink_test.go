package transport

import (
	"context"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/sockcopy"
)

// longLink is a user-space link between clients and one target: every
// byte is delayed by delay (one way) and the link as a whole carries at
// most rate bytes a second each way (0: no limit), shared by all
// connections, as a long thin path would.
type longLink struct {
	delay time.Duration
	rate  float64
	mu    sync.Mutex
	next  [2]time.Time // when each direction's link is free again
}

// pass returns when a chunk of n bytes has left the link's near end (its
// last bit is on the wire); it reaches the far end delay later.
func (l *longLink) pass(dir, n int) time.Time {
	now := time.Now()
	if l.rate == 0 {
		return now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	start := now
	if l.next[dir].After(now) {
		start = l.next[dir]
	}
	l.next[dir] = start.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	return l.next[dir]
}

// startLongLink starts a long link to target and returns its address.
// Its queue is unbounded: a sender never waits for it, so the bytes it
// has sent and not yet seen acknowledged are only those on the link.
func startLongLink(t testing.TB, target string, rtt time.Duration, bitsPerSecond float64) string {
	return startQueuedLongLink(t, target, rtt, bitsPerSecond, 0)
}

// startQueuedLongLink is startLongLink with a bounded queue, as a real
// bottleneck has and as the bench harness's delay line emulates
// (integration/bench/delay.go): each connection's reader reads only queue
// (of link time) ahead of the link, so a faster sender is pushed back
// and its bytes wait in the TCP buffers of loopback, which can hold
// megabytes. A sender that bounds its unacknowledged bytes counts those
// too. 0: unbounded.
func startQueuedLongLink(t testing.TB, target string, rtt time.Duration, bitsPerSecond float64, queue time.Duration) string {
	l := &longLink{delay: rtt / 2, rate: bitsPerSecond / 8}
	// With a bounded queue, the link's sockets get a small receive
	// buffer, set before they connect: 1 ms of the link's rate, at least
	// 4 KiB (Linux doubles either). The reader's read-ahead is the
	// link's queue, shared by its connections as a bottleneck's is; the
	// kernel's own buffer, which grows to hundreds of KiB on loopback,
	// was a second queue in front of it, one that a busy connection
	// filled and a new one beside it skipped (the bench harness's delay
	// line had the same flaw: integration/bench/delay.go, queueBuffer).
	var control func(network, address string, rc syscall.RawConn) error
	if queue > 0 && l.rate > 0 {
		control = receiveBuffer(max(int(l.rate*time.Millisecond.Seconds()), 4<<10))
	}
	ln, err := (&net.ListenConfig{Control: control}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	pipe := func(dst, src net.Conn, dir int) {
		defer wg.Done()
		type chunk struct {
			b  []byte
			at time.Time
		}
		q := make(chan chunk, 4096)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range q {
				time.Sleep(time.Until(c.at))
				if _, err := dst.Write(c.b); err != nil {
					break
				}
			}
			dst.Close()
			src.Close()
		}()
		for {
			buf := make([]byte, 16<<10)
			n, err := src.Read(buf)
			if n > 0 {
				done := l.pass(dir, n)
				q <- chunk{buf[:n], done.Add(l.delay)}
				if w := time.Until(done) - queue; queue > 0 && w > 0 {
					time.Sleep(w)
				}
			}
			if err != nil {
				close(q)
				return
			}
		}
	}
	serveRelay(ln, target, &wg, pipe, control)
	return ln.Addr().String()
}

// serveRelay accepts clients on ln until it is closed, connects each to
// target, and copies with pipe both ways (dir 0: client to target, 1:
// back), each pipe counted in wg (which it must mark done). control, if
// not nil, is the dialer's socket Control function.
func serveRelay(ln net.Listener, target string, wg *sync.WaitGroup, pipe func(dst, src net.Conn, dir int), control func(network, address string, rc syscall.RawConn) error) {
	dialer := net.Dialer{Control: control}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := dialer.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go pipe(up, c, 0)
			go pipe(c, up, 1)
		}
	}()
}

// BenchmarkLongLink compares one stream's download over a 200 ms RTT,
// 200 Mbit/s link: a plain TCP connection across the link, and a Mirage
// stream. A stream's flow-control window caps it at window/RTT. Reported:
// MB/s from the first byte to the last (the set-up differs: this link
// emulates no TCP handshake, while a stream's request crosses it), and
// the ratio to TCP's in the same run.
//
//	go test -run XXX -bench LongLink -benchtime 2x ./transport/
func BenchmarkLongLink(b *testing.B) {
	const size = 48 << 20
	src := make([]byte, 256<<10)
	// A TCP source of size bytes per connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for sent := 0; sent < size; sent += len(src) {
					if _, err := c.Write(src); err != nil {
						return
					}
				}
			}()
		}
	}()
	var tcpRate float64
	b.Run("tcp", func(b *testing.B) {
		addr := startLongLink(b, ln.Addr().String(), 200*time.Millisecond, 200e6)
		b.SetBytes(size)
		for range b.N {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			tcpRate = steady(b, c, size)
			b.ReportMetric(tcpRate, "MB/s-steady")
			c.Close()
		}
	})
	b.Run("mirage", func(b *testing.B) {
		br := startBridge(b, newSiteFace(b), func(st *Stream) {
			st.Reply(StatusOK)
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			// As the bridge's egress copies a destination: read
			// straight into the session's send queue (fillStream).
			sockcopy.Copy(st, c, c, nil)
			st.CloseWrite()
			io.Copy(io.Discard, st)
		}, func(c *ServerConfig) { c.Logger = nil })
		sess := br.dialVia(b, startLongLink(b, br.addr, 200*time.Millisecond, 200e6))
		b.SetBytes(size)
		b.ResetTimer()
		for range b.N {
			st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
			if err != nil {
				b.Fatal(err)
			}
			r := steady(b, st, size)
			b.ReportMetric(r, "MB/s-steady")
			if tcpRate > 0 {
				b.ReportMetric(r/tcpRate, "of-tcp")
			}
			st.Close()
		}
	})
}

// steady reads size bytes from c and returns the rate from the first byte
// to the last, in MB/s.
func steady(b *testing.B, c net.Conn, size int) float64 {
	r, err := steadyRate(c, size)
	if err != nil {
		b.Fatal(err)
	}
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		b.Fatalf("got %d bytes", int64(size)+n)
	}
	return r
}

// BenchmarkLongLinkUpload is BenchmarkLongLink the other way: one
// stream's upload over the same 200 ms RTT, 200 Mbit/s link, a plain TCP
// connection across the link against a Mirage stream that the bridge
// relays to the same sink. The stream opens with fast open, as the local
// proxy opens an app's: its bytes follow the request at once. The sink
// measures both, from the first byte to the last, so the set-up (a
// stream's request, the bridge's dial) is left out as it is for
// downloads. The link's queue is bounded (5 ms of link time, as the bench
// harness's delay line): a sender's unacknowledged bytes then include
// those waiting in loopback's TCP buffers.
//
//	go test -run XXX -bench LongLinkUpload -benchtime 2x ./transport/
func BenchmarkLongLinkUpload(b *testing.B) {
	const size = 48 << 20
	src := make([]byte, 256<<10)
	// A TCP sink: each connection's rate, from its first byte to its last.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	rates := make(chan float64, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r, err := steadyRate(c, size)
				if err != nil {
					r = -1
				}
				c.Write([]byte{1}) // done: the sender may close
				rates <- r
			}()
		}
	}()
	send := func(b *testing.B, c net.Conn) float64 {
		for sent := 0; sent < size; sent += len(src) {
			if _, err := c.Write(src); err != nil {
				b.Fatal(err)
			}
		}
		r := <-rates
		if r < 0 {
			b.Fatal("the sink got a short upload")
		}
		return r
	}
	var tcpRate float64
	b.Run("tcp", func(b *testing.B) {
		addr := startQueuedLongLink(b, ln.Addr().String(), 200*time.Millisecond, 200e6, 5*time.Millisecond)
		b.SetBytes(size)
		for range b.N {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			tcpRate = send(b, c)
			b.ReportMetric(tcpRate, "MB/s-steady")
			c.Close()
		}
	})
	b.Run("mirage", func(b *testing.B) {
		br := startBridge(b, newSiteFace(b), func(st *Stream) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				st.Reply(StatusConnectionRefused)
				return
			}
			st.Reply(StatusOK)
			Relay(st, c)
			c.Close()
		}, func(c *ServerConfig) { c.Logger = nil })
		sess := br.dialVia(b, startQueuedLongLink(b, br.addr, 200*time.Millisecond, 200e6, 5*time.Millisecond))
		b.SetBytes(size)
		b.ResetTimer()
		for range b.N {
			st, err := sess.OpenStreamFast(Request{Command: CmdDefault})
			if err != nil {
				b.Fatal(err)
			}
			r := send(b, st)
			b.ReportMetric(r, "MB/s-steady")
			if tcpRate > 0 {
				b.ReportMetric(r/tcpRate, "of-tcp")
			}
			st.Close()
		}
	})
}

// steadyRate reads size bytes from c and returns the rate from the first
// byte to the last, in MB/s.
func steadyRate(c net.Conn, size int) (float64, error) {
	first := make([]byte, 1)
	if _, err := io.ReadFull(c, first); err != nil {
		return 0, err
	}
	start := time.Now()
	n, err := io.CopyN(io.Discard, c, int64(size-1))
	if err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds() / 1e6, nil
}
