package transport

import (
	"io"
	"net"
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
	// The bridge has not got to the carrier. The client's bytes arrive.
	s, c, ours, peer := unreadCarrier(t, false)
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

// unreadCarrier returns a session (a client's if client) with one carrier
// over loopback TCP that no reader reads, its socket, and the peer's end.
// It skips the test where unreadBytes cannot see a socket's queue.
func unreadCarrier(t *testing.T, client bool) (*sessionConn, *carrier, net.Conn, net.Conn) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("unread bytes are asked for on Linux only")
	}
	s := newSessionConn(client, time.Minute, testLogger(t))
	t.Cleanup(func() { s.Close() })
	ours, peer := tcpPair(t)
	c := &carrier{seq: 1, conn: ours, raw: &countingConn{Conn: ours}}
	if !s.attach(c, 0) {
		t.Fatal("session refused the carrier")
	}
	return s, c, ours, peer
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

// pingOwed sends a frame on s, so that the peer owes an acknowledgement,
// and has the freeze check find it silent for pingAfter: a PING leaves.
// It returns the time the check counts from.
func pingOwed(t *testing.T, s *sessionConn) time.Time {
	t.Helper()
	nop := []byte{smuxVersion, 3, 0, 0, 0, 0, 0, 0} // smux NOP
	if _, err := s.Write(nop); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.checkFrozen(start.Add(pingAfter+100*time.Millisecond), false)
	waitFor(t, s, "the PING to leave", func() bool { return s.pingVia != nil })
	return start
}

func carrierCount(s *sessionConn) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.carriers)
}

// TestSlowReaderIsNotAFreeze: a carrier whose bytes reached its socket
// after the PING left is not frozen, even if this process has not read
// them yet (a loaded machine, a phone that holds back a background app).
// Ending it as frozen cost a new connection, and two such false freezes
// at similar byte counts teach a session a budget it never unlearns. A
// carrier that stays silent after the PING is still frozen (the control).
func TestSlowReaderIsNotAFreeze(t *testing.T) {
	for _, answered := range []bool{true, false} {
		t.Run(map[bool]string{true: "answered", false: "silent"}[answered], func(t *testing.T) {
			// This process has not got to the carrier; the peer takes
			// what the session sends.
			s, c, _, peer := unreadCarrier(t, true)
			go io.Copy(io.Discard, peer)
			start := pingOwed(t, s)
			if answered {
				if _, err := peer.Write(make([]byte, 64)); err != nil {
					t.Fatal(err)
				}
				waitUnread(t, c, 64)
			}
			s.checkFrozen(start.Add(pingAfter+freezeWait+2*time.Second), false)
			n := carrierCount(s)
			switch {
			case answered && n != 1:
				t.Fatal("the carrier was ended as frozen with the peer's answer waiting in its socket")
			case !answered && n != 0:
				t.Fatal("a carrier silent after its PING was not found frozen")
			}
		})
	}
}

// TestBytesOnAnotherCarrierDoNotHideAFreeze: bytes that reach a newer
// carrier after the PING left do not keep the watched carrier, silent
// since, from being found frozen. A path that cut connections at random
// lost the client's DROP of a frozen carrier on the next one; the bridge
// kept sending into the frozen one, its flusher blocked there, while the
// client opened a carrier every 2 s, each of whose handshakes counted as
// the path moving: the session carried nothing for 46 s
// (TestCarriersCutAtRandom, once in CI).
func TestBytesOnAnotherCarrierDoNotHideAFreeze(t *testing.T) {
	s, frozen, _, peer := unreadCarrier(t, false)
	go io.Copy(io.Discard, peer)
	start := pingOwed(t, s)
	// The client's next carrier joins, and its bytes arrive.
	ours, newer := tcpPair(t)
	c := &carrier{seq: 2, conn: ours, raw: &countingConn{Conn: ours}}
	if !s.attach(c, 0) {
		t.Fatal("session refused the second carrier")
	}
	if _, err := newer.Write(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	waitUnread(t, c, 64)
	s.checkFrozen(start.Add(pingAfter+freezeWait+2*time.Second), false)
	s.mu.Lock()
	dead := frozen.dead
	s.mu.Unlock()
	if !dead {
		t.Fatal("the silent carrier was not found frozen: bytes on a newer carrier counted as its answer")
	}
}
