package transport

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/mirage-pt/mirage/transport/ratelimit"
)

// BenchmarkThroughput measures one-way bulk transfer over loopback through
// a Mirage stream, side by side with its baselines in the same process:
// bare TCP and a plain TLS 1.3 connection (what Mirage wraps). Compare the
// MB/s columns: mirage/tls is the cost of smux, framing and batching.
//
//	go test -run XXX -bench Throughput -benchtime 2s ./transport/
func BenchmarkThroughput(b *testing.B) {
	const chunk = 256 << 10
	buf := make([]byte, chunk)
	// sink accepts one connection and discards everything it reads.
	sink := func(b *testing.B, ln net.Listener, wrap func(net.Conn) net.Conn) {
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(io.Discard, wrap(c))
		}()
	}
	run := func(b *testing.B, c net.Conn) {
		b.SetBytes(chunk)
		b.ResetTimer()
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		c.Close()
	}
	b.Run("tcp", func(b *testing.B) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		sink(b, ln, func(c net.Conn) net.Conn { return c })
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		run(b, c)
	})
	b.Run("tls", func(b *testing.B) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		scfg := &tls.Config{Certificates: []tls.Certificate{siteCertificate(b)}}
		sink(b, ln, func(c net.Conn) net.Conn { return tls.Server(c, scfg) })
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			b.Fatal(err)
		}
		run(b, c)
	})
	b.Run("mirage", func(b *testing.B) {
		discard := func(st *Stream) {
			st.Reply(StatusOK)
			io.Copy(io.Discard, st)
		}
		br := startBridge(b, newSiteFace(b), discard, nil)
		sess, err := Dial(context.Background(), br.clientConfig())
		if err != nil {
			b.Fatal(err)
		}
		defer sess.Close()
		st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
		if err != nil {
			b.Fatal(err)
		}
		run(b, st)
	})
}

// BenchmarkHandshake measures connection setup over loopback: a Mirage
// Dial (browser hello with tag, TLS 1.3, server proof, openings) side by
// side with a plain TLS 1.3 handshake against the same certificate.
//
//	go test -run XXX -bench Handshake ./transport/
func BenchmarkHandshake(b *testing.B) {
	b.Run("tls", func(b *testing.B) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		scfg := &tls.Config{Certificates: []tls.Certificate{siteCertificate(b)}}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					tc := tls.Server(c, scfg)
					tc.Handshake()
					io.Copy(io.Discard, tc)
					tc.Close()
				}()
			}
		}()
		b.ResetTimer()
		for range b.N {
			c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("mirage", func(b *testing.B) {
		br := startBridge(b, newSiteFace(b), echoHandler, func(c *ServerConfig) {
			c.Logger = nil
			// Thousands of handshakes from one user: past the default
			// rate, the bridge answers as its face, as it should.
			c.RateLimiter = ratelimit.New(1e6, 1e6, 16)
		})
		cfg := br.clientConfig()
		b.ResetTimer()
		for range b.N {
			sess, err := Dial(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			sess.Close()
		}
	})
}
