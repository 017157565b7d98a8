package transport

import (
	"context"
	"testing"
	"time"
)

// TestClosedStreamsLeaveNothingOnTheBridge proves a client cannot grow a
// bridge's memory with streams it never closes: it opens 3000 streams
// whose requests the bridge refuses, and never reads the refusals or
// closes the streams. Once the bridge has closed them, its session keeps
// no send window, no count and no tuned window of any. Before, it kept
// every stream's send window until the client's FIN, which never came:
// 3000 windows, for good.
func TestClosedStreamsLeaveNothingOnTheBridge(t *testing.T) {
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		st.Reply(StatusConnectionRefused)
	}, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	req, err := (&Request{Command: CmdDefault}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	for range n {
		st, err := sess.mux.OpenStream() // a bare smux stream: nobody reads or closes it
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write(req); err != nil {
			t.Fatal(err)
		}
	}
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
		t.Fatalf("after %d refused streams the client never closed, the bridge keeps %d send windows, %d counted streams, %d tuned windows, %d open streams; want none", n, windows, counted, tuned, open)
	}
}
