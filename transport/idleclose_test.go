package transport

import (
	"io"
	"runtime"
	"testing"
	"time"
)

// TestBytesWaitingInTheSocketAreNotIdle: a carrier whose client has sent
// bytes the bridge's reader has not got to yet is not idle, however long
// ago its last DATA was read. A bridge whose CPU was taken (a test
// machine under -race) ended a carrier 2 s into an upload, with the
// upload's first 64 KB in its socket; the face would have read them.
// Once they are read, the carrier is idle again and ends.
func TestBytesWaitingInTheSocketAreNotIdle(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the bridge asks for a socket's unread bytes on Linux only")
	}
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	ours, peer := tcpPair(t)
	c := &carrier{seq: 1, conn: ours, raw: &countingConn{Conn: ours}}
	if !s.attach(c, 0) {
		t.Fatal("session refused the carrier")
	}
	// No reader runs: the bridge has not got to the carrier. The client's
	// bytes arrive.
	sent := make([]byte, 64<<10)
	if _, err := peer.Write(sent); err != nil {
		t.Fatal(err)
	}
	waitUnread(t, c, len(sent))
	const idle = 2 * time.Second
	later := time.Now().Add(2 * idle)
	s.closeIdle(later, idle)
	if n := carrierCount(s); n != 1 {
		t.Fatalf("the bridge ended the carrier as idle with %d bytes from the client waiting in its socket", len(sent))
	}
	if _, err := io.ReadFull(ours, sent); err != nil {
		t.Fatal(err)
	}
	s.closeIdle(later, idle)
	if n := carrierCount(s); n != 0 {
		t.Fatalf("an idle carrier with nothing waiting was kept (%d carriers)", n)
	}
}

// waitUnread waits (up to 10 s) until n bytes wait unread in c's socket.
func waitUnread(t *testing.T, c *carrier, n int) {
	deadline := time.Now().Add(10 * time.Second)
	for unreadBytes(c.raw) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes arrived of %d", unreadBytes(c.raw), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func carrierCount(s *sessionConn) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.carriers)
}
