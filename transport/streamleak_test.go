package transport

import (
	"context"
	"testing"
	"time"
)

// TestClosedStreamsLeaveNothingOnTheBridge proves a client cannot grow a
// bridge's memory with streams it never closes. It opens streams and
// never reads what the bridge answers or closes them: 3000 whose requests
// the bridge refuses, then, on a bridge whose session takes 8 streams at
// once, 8 that the handler holds and 300 more refused for want of room.
// Once the bridge has closed them all, its session keeps no send window,
// no count and no tuned window of any. Before, it kept every stream's
// send window until the client's FIN, which never came: 3000 windows, for
// good, and 300 more.
func TestClosedStreamsLeaveNothingOnTheBridge(t *testing.T) {
	t.Run("refused by the handler", func(t *testing.T) {
		b := startBridge(t, newSiteFace(t), func(st *Stream) {
			st.Reply(StatusConnectionRefused)
		}, nil)
		openNeverClosed(t, b, 3000)
		bridgeKeepsNothing(t, b)
	})
	t.Run("refused for want of room", func(t *testing.T) {
		release := make(chan struct{})
		b := startBridge(t, newSiteFace(t), func(st *Stream) {
			<-release
			st.Reply(StatusConnectionRefused)
		}, func(c *ServerConfig) { c.maxStreamsPerSession = 8 })
		openNeverClosed(t, b, 8+300)
		close(release)
		bridgeKeepsNothing(t, b)
	})
}

// openNeverClosed dials a session to b and opens n bare smux streams with
// a request each, which nobody reads or closes.
func openNeverClosed(t *testing.T, b *testBridge, n int) {
	t.Helper()
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	req, err := (&Request{Command: CmdDefault}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		st, err := sess.mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write(req); err != nil {
			t.Fatal(err)
		}
	}
}

// bridgeKeepsNothing waits until b's sessions keep no send window,
// counted stream, tuned window or open stream.
func bridgeKeepsNothing(t *testing.T, b *testBridge) {
	t.Helper()
	var windows, counted, tuned, open int
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		windows, counted, tuned, open = 0, 0, 0, 0
		b.server.mu.Lock()
		for _, ss := range b.server.sessions {
			ss.conn.mu.Lock()
			windows += len(ss.conn.sendWins)
			tuned += len(ss.conn.windows.streams)
			ss.conn.mu.Unlock()
			ss.conn.acct.mu.Lock()
			counted += len(ss.conn.acct.streams)
			ss.conn.acct.mu.Unlock()
			open += ss.mux.NumStreams()
		}
		b.server.mu.Unlock()
		if windows+counted+tuned+open == 0 || time.Now().After(deadline) {
			break
		}
	}
	if windows+counted+tuned+open != 0 {
		t.Fatalf("the bridge keeps %d send windows, %d counted streams, %d tuned windows, %d open streams of streams it closed; want none", windows, counted, tuned, open)
	}
}
