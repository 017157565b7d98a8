package transport

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// readResult is what readFromSession read, and the error that ended it.
type readResult struct {
	b   []byte
	err error
}

// readFromSession reads want bytes from s in one io.ReadFull, as smux
// reads a frame's body, and sends what it read on the returned channel.
func readFromSession(s *sessionConn, want int) <-chan readResult {
	got := make(chan readResult, 1)
	go func() {
		p := make([]byte, want)
		n, err := io.ReadFull(s, p)
		got <- readResult{p[:n], err}
	}()
	return got
}

// peerFrames reads the frames s sends to peer and passes each on.
func peerFrames(peer net.Conn) <-chan byte {
	types := make(chan byte, 64)
	go func() {
		defer close(types)
		fr := &frameReader{r: peer}
		for {
			typ, _, err := fr.next()
			if err != nil {
				return
			}
			types <- typ
		}
	}()
	return types
}

// TestFramesAfterChainedDataAreHandled: when Read reads the DATA frames
// that follow an offered body itself (chainRead), it skips PAD frames
// between them, and leaves any other frame to the carrier's reader: a
// PING in the middle of a bulk transfer is answered, and the DATA after
// it still reaches Read, every byte in order.
func TestFramesAfterChainedDataAreHandled(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	peer := pipeCarrier(t, s)
	types := peerFrames(peer)
	a := bytes.Repeat([]byte{'a'}, maxFrameBody)
	b := bytes.Repeat([]byte{'b'}, maxFrameBody)
	c := bytes.Repeat([]byte{'c'}, maxFrameBody)
	got := readFromSession(s, 3*maxFrameBody)
	waitFor(t, s, "Read to wait", func() bool { return s.readWaiting })
	var w []byte
	w = appendFrames(w, a, 0)
	w = appendPad(w, 200)
	w = appendFrames(w, b, 0)
	w = appendEmptyFrame(w, framePing)
	w = appendFrames(w, c, 0)
	go peer.Write(w)

	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if want := append(append(append([]byte(nil), a...), b...), c...); !bytes.Equal(r.b, want) {
			t.Fatal("Read returned other bytes than the DATA frames carried")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not get the DATA after the PING within 10 s")
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case typ, ok := <-types:
			if !ok {
				t.Fatal("the carrier ended before the PING was answered")
			}
			if typ == frameAck {
				return
			}
		case <-deadline:
			t.Fatal("the PING between chained DATA frames was not answered within 10 s")
		}
	}
}

// TestChainedReadEndsTheCarrierOnABadFrame: a malformed frame after an
// offered body, read by Read, ends the carrier as the carrier's reader
// would have, and the body before it is delivered.
func TestChainedReadEndsTheCarrierOnABadFrame(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	peer := pipeCarrier(t, s)
	go peerFrames(peer)
	got := readFromSession(s, maxFrameBody)
	waitFor(t, s, "Read to wait", func() bool { return s.readWaiting })
	a := bytes.Repeat([]byte{'a'}, maxFrameBody-10)
	w := appendFrames(nil, a, 0)
	w = append(w, 0xee, 0, 1, 0) // no such frame type
	go peer.Write(w)
	waitFor(t, s, "the carrier to end", func() bool { return len(s.carriers) == 0 })
	s.mu.Lock()
	recvd := s.recvd
	s.mu.Unlock()
	if recvd != uint64(len(a)) {
		t.Fatalf("%d bytes received before the bad frame, want %d", recvd, len(a))
	}
	s.Close()
	if r := <-got; !bytes.Equal(r.b, a) {
		t.Fatalf("Read returned %d bytes, want the %d of the body before the bad frame", len(r.b), len(a))
	}
}

// TestChainedReadSeesTheCarrierEnd: a carrier that ends cleanly after an
// offered body (the peer's close, between frames) ends as such, and the
// body is delivered.
func TestChainedReadSeesTheCarrierEnd(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	peer := pipeCarrier(t, s)
	got := readFromSession(s, 2*maxFrameBody)
	waitFor(t, s, "Read to wait", func() bool { return s.readWaiting })
	a := bytes.Repeat([]byte{'a'}, maxFrameBody)
	go func() {
		peer.Write(appendFrames(nil, a, 0))
		peer.Close()
	}()
	waitFor(t, s, "the carrier to end", func() bool { return len(s.carriers) == 0 })
	s.mu.Lock()
	recvd := s.recvd
	s.mu.Unlock()
	if recvd != uint64(len(a)) {
		t.Fatalf("%d bytes received, want %d", recvd, len(a))
	}
	s.Close()
	if r := <-got; !bytes.Equal(r.b, a) {
		t.Fatalf("Read returned %d bytes, want %d", len(r.b), len(a))
	}
}
