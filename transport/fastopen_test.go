package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestFastOpen: a fast stream carries data both ways like any other, and a
// refusal arrives at the first Read (and through io.Copy's WriteTo) as the
// bridge's status.
func TestFastOpen(t *testing.T) {
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if st.Request.Command == CmdConnect {
			st.Reply(StatusNotAllowed)
			return
		}
		echoHandler(st)
	}, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st, err := sess.OpenStreamFast(Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, payload(100000, 3)); err != nil {
		t.Fatal(err)
	}
	st.Close()
	for _, how := range []string{"read", "copy"} {
		st, err := sess.OpenStreamFast(Request{Command: CmdConnect, Addr: Addr{Host: "example.com", Port: 443}})
		if err != nil {
			t.Fatal(err)
		}
		// The app's first bytes go out before the answer is known.
		if _, err := st.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if how == "read" {
			_, err = st.Read(make([]byte, 10))
		} else {
			_, err = io.Copy(io.Discard, st)
		}
		var se *StatusError
		if !errors.As(err, &se) || se.Status != StatusNotAllowed {
			t.Fatalf("%s: err = %v, want the bridge's refusal", how, err)
		}
		st.Close()
	}
}

// BenchmarkTTFB measures, on a warm session over a 60 ms RTT link, the
// time from opening a stream to the first byte of the answer to the app's
// first bytes, with the stream request answered first (strict, as before)
// and with fast open. Fast open should save one round trip.
//
//	go test -run XXX -bench TTFB -benchtime 20x ./transport/
func BenchmarkTTFB(b *testing.B) {
	br := startBridge(b, newSiteFace(b), echoHandler, func(c *ServerConfig) { c.Logger = nil })
	cfg := br.clientConfig()
	cfg.Address = startLongLink(b, br.addr, 60*time.Millisecond, 0)
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	for _, mode := range []string{"strict", "fast"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				var st net.Conn
				var err error
				if mode == "fast" {
					st, err = sess.OpenStreamFast(Request{Command: CmdDefault})
				} else {
					st, err = sess.OpenStream(context.Background(), Request{Command: CmdDefault})
				}
				if err != nil {
					b.Fatal(err)
				}
				st.Write([]byte{1})
				if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
					b.Fatal(err)
				}
				st.Close()
			}
		})
	}
}
