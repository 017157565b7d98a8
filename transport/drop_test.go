package transport

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// TestLostDropGoesAgain: a client's DROP of a dead carrier that went out
// on a carrier which then failed too goes again on the next one. A path
// that cut connections at random silenced the carrier a DROP went on, and
// the bridge, never told, kept sending into the dead one.
func TestLostDropGoesAgain(t *testing.T) {
	s := newSessionConn(true, time.Minute, testLogger(t))
	t.Cleanup(func() { s.Close() })
	join := func(seq uint32) (*carrier, net.Conn) {
		ours, peer := tcpPair(t)
		c := &carrier{seq: seq, conn: ours, raw: &countingConn{Conn: ours}}
		if !s.attach(c, 0) {
			t.Fatalf("session refused carrier %d", seq)
		}
		return c, peer
	}
	// drops reads frames from peer until DROPs for all of want came.
	drops := func(peer net.Conn, want ...uint32) {
		t.Helper()
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		fr := &frameReader{r: peer}
		left := map[uint32]bool{}
		for _, w := range want {
			left[w] = true
		}
		for len(left) > 0 {
			typ, n, err := fr.header()
			if err != nil {
				t.Fatalf("DROPs of %v never came: %v", want, err)
			}
			body, err := fr.readBody(n)
			if err != nil {
				t.Fatal(err)
			}
			if typ == frameDrop && n == 4 {
				delete(left, binary.BigEndian.Uint32(body))
			}
		}
	}
	a, _ := join(1)
	b, bPeer := join(2)
	s.mu.Lock()
	s.carrierEnded(a, errCarrierFrozen)
	s.mu.Unlock()
	drops(bPeer, 1) // the DROP of a goes on b...
	s.mu.Lock()
	s.carrierEnded(b, errCarrierFrozen) // ...which a cut silenced
	s.mu.Unlock()
	_, cPeer := join(3)
	go io.Copy(io.Discard, bPeer)
	drops(cPeer, 1, 2)
}
