package transport

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// BenchmarkPadding states what padding costs once a session is past its
// young phase: the bytes on the wire (both ways, TLS included) beyond the
// payload, per MiB of payload, with tail padding (pad=tail, this
// sender) and with young-phase padding only (pad=young, the sender
// before it, under which small writes' sizes show), side by side in one
// run. The difference between the two is the cost of tail padding.
// Workloads, each on one stream: bulk (256 KiB writes one way), an
// interactive session (536-byte writes, each echoed before the next) and
// Tor-like writes (514·k bytes, k = 1…8, echoed).
//
//	go test -run XXX -bench Padding -count 6 ./transport/ | benchstat -col /pad -
func BenchmarkPadding(b *testing.B) {
	sink := func(st *Stream) {
		st.Reply(StatusOK)
		io.Copy(io.Discard, st)
	}
	type workload struct {
		name    string
		handler func(*Stream)
		// op does the i-th operation and returns the payload bytes it
		// moved (both ways).
		op func(b *testing.B, st net.Conn, i int) int
	}
	bulk := make([]byte, 256<<10)
	echo := func(b *testing.B, st net.Conn, n int) int {
		buf := bulk[:n]
		if _, err := st.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf); err != nil {
			b.Fatal(err)
		}
		return 2 * n
	}
	workloads := []workload{
		{"bulk", sink, func(b *testing.B, st net.Conn, i int) int {
			if _, err := st.Write(bulk); err != nil {
				b.Fatal(err)
			}
			return len(bulk)
		}},
		{"interactive", echoHandler, func(b *testing.B, st net.Conn, i int) int {
			return echo(b, st, 536)
		}},
		{"tor", echoHandler, func(b *testing.B, st net.Conn, i int) int {
			return echo(b, st, 514*(1+i%8))
		}},
	}
	for _, w := range workloads {
		for _, pad := range []string{"young", "tail"} {
			b.Run(w.name+"/pad="+pad, func(b *testing.B) {
				youngOnly := pad == "young"
				br := startBridge(b, newSiteFace(b), w.handler, func(c *ServerConfig) {
					c.Logger = nil
					c.padYoungOnly = youngOnly
				})
				cfg := br.clientConfig()
				cfg.padYoungOnly = youngOnly
				sess, err := Dial(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer sess.Close()
				st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				// Past the young phase each way (32 KiB of the session)
				// and TLS's small early records.
				for i := range 4 {
					w.op(b, st, i)
				}
				for sess.conn.unsent() {
					time.Sleep(time.Millisecond)
				}
				before := sess.conn.wireBytes()
				payload := 0
				b.ResetTimer()
				for i := range b.N {
					payload += w.op(b, st, i)
				}
				// Everything sent has arrived (the bridge acknowledged it).
				for sess.conn.unsent() {
					time.Sleep(time.Millisecond)
				}
				b.StopTimer()
				wire := sess.conn.wireBytes() - before
				b.SetBytes(int64(payload / b.N))
				b.ReportMetric(float64(wire-int64(payload))/float64(payload)*(1<<20), "overhead-B/MiB")
			})
		}
	}
}

// unsent reports whether bytes written are not yet acknowledged.
func (s *sessionConn) unsent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked < s.written
}

// wireBytes returns the bytes that crossed the session's carriers both
// ways, TLS included.
func (s *sessionConn) wireBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, c := range s.carriers {
		n += c.raw.read.Load() + c.raw.written.Load()
	}
	return n
}
