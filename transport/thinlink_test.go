package transport

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkThinLink compares parallel downloads over a 60 ms, 20 Mbit/s
// link with a bottleneck queue of 5 ms per connection (the bench
// harness's delay line, -rtt 60ms -rate 20mbit): N plain TCP connections
// across the link against N streams of one Mirage session. On such a
// link the bytes a sender keeps ready beyond what is in flight decide
// whether the link idles when the sender is late; the bounds of
// backlog.go keep them small for the sake of new streams' latency, and
// this is what that costs in throughput. Rounds alternate TCP and Mirage;
// reported: the median of each, in MB/s of all streams together, from
// the first byte of any to the last of all, and the median of the
// rounds' ratios. Each round moves 8 MiB, split among the streams.
//
// Before the writers topped up the session's queue (frameRoom), Mirage
// got 0.94 of TCP with 1 stream and with 8; after, 1.00 with either.
// At 10 Mbit/s, where the bound is at its floor, 0.98.
//
//	go test -run XXX -bench ThinLink -benchtime 1x ./transport/
func BenchmarkThinLink(b *testing.B) {
	const (
		rtt    = 60 * time.Millisecond
		rate   = 20e6
		queue  = 5 * time.Millisecond
		total  = 8 << 20 // bytes of each round, all streams together
		rounds = 5
	)
	source := startSizedSource(b)
	// The session outlives the TCP rounds: the face keeps idle
	// connections for a minute (the tests' face, for two seconds).
	face := newSiteFace(b)
	face.Server.IdleTimeout = time.Minute
	br := startBridge(b, face, relayTo(source), func(c *ServerConfig) { c.Logger = nil })
	tcpLink := startQueuedLongLink(b, source, rtt, rate, queue)
	sess := br.dialVia(b, startQueuedLongLink(b, br.addr, rtt, rate, queue))
	// all runs n downloads at once and returns their total rate in MB/s,
	// from the first byte of any to the last of all.
	all := func(n int, open func() (net.Conn, error)) float64 {
		size := total / n
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first time.Time
		errs := make(chan error, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := open()
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				var ask [4]byte
				binary.BigEndian.PutUint32(ask[:], uint32(size))
				if _, err := c.Write(ask[:]); err != nil {
					errs <- err
					return
				}
				one := make([]byte, 1)
				if _, err := io.ReadFull(c, one); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if first.IsZero() {
					first = time.Now()
				}
				mu.Unlock()
				if _, err := io.CopyN(io.Discard, c, int64(size-1)); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Error(err)
		}
		if b.Failed() {
			b.FailNow()
		}
		return float64(total) / time.Since(first).Seconds() / 1e6
	}
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			for range b.N {
				var tcp, mir, ratio []float64
				for range rounds {
					t := all(n, func() (net.Conn, error) { return net.Dial("tcp", tcpLink) })
					m := all(n, func() (net.Conn, error) {
						return sess.OpenStream(context.Background(), Request{Command: CmdDefault})
					})
					tcp, mir, ratio = append(tcp, t), append(mir, m), append(ratio, m/t)
				}
				med := func(x []float64) float64 { slices.Sort(x); return x[len(x)/2] }
				b.ReportMetric(med(tcp), "MB/s-tcp")
				b.ReportMetric(med(mir), "MB/s-mirage")
				b.ReportMetric(med(ratio), "of-tcp")
			}
		})
	}
}

// startSizedSource serves each connection the number of bytes it asks
// for (4 bytes, big-endian), then closes it, and returns its address.
func startSizedSource(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	src := make([]byte, 64<<10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var ask [4]byte
				if _, err := io.ReadFull(c, ask[:]); err != nil {
					return
				}
				for left := int(binary.BigEndian.Uint32(ask[:])); left > 0; left -= len(src) {
					if _, err := c.Write(src[:min(left, len(src))]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
