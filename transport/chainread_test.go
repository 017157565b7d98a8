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
// between them, and leaves any other frame to the carrier's reader: an
// ACK in the middle of a bulk transfer still frees what it acknowledges,
// and the DATA after it still reaches Read, every byte in order.
func TestFramesAfterChainedDataAreHandled(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	peer := pipeCarrier(t, s)
	go peerFrames(peer)
	// Something of ours for the peer to acknowledge: an smux NOP.
	nop := []byte{smuxVersion, smuxCmdNOP, 0, 0, 0, 0, 0, 0}
	if _, err := s.Write(nop); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "our bytes to leave", func() bool { return s.next == uint64(len(nop)) })
	a := bytes.Repeat([]byte{'a'}, maxFrameBody)
	b := bytes.Repeat([]byte{'b'}, maxFrameBody)
	c := bytes.Repeat([]byte{'c'}, maxFrameBody)
	got := readFromSession(s, 3*maxFrameBody)
	waitFor(t, s, "Read to wait", func() bool { return s.readWaiting })
	var w []byte
	w = appendFrames(w, a, 0)
	w = appendPad(w, 200)
	w = appendFrames(w, b, 0)
	w = appendOffsetFrame(w, frameAck, uint64(len(nop)))
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
		t.Fatal("Read did not get the DATA after the ACK within 10 s")
	}
	// The ACK came before the last DATA, which its reader handled after it.
	s.mu.Lock()
	acked := s.acked
	s.mu.Unlock()
	if acked != uint64(len(nop)) {
		t.Fatalf("the peer's ACK between chained DATA frames was lost: %d bytes acknowledged, want %d", acked, len(nop))
	}
}

// TestChainedReadEndsTheCarrier: what ends a carrier right after an
// offered body, read by Read (a malformed frame, the peer's close between
// frames), ends it as it would have ended it read by the carrier's
// reader, and the body is delivered first.
func TestChainedReadEndsTheCarrier(t *testing.T) {
	a := bytes.Repeat([]byte{'a'}, maxFrameBody-10)
	for _, tc := range []struct {
		name string
		then func(peer net.Conn) // after the DATA frame
	}{
		{"bad frame", func(peer net.Conn) { peer.Write([]byte{0xee, 0, 1, 0}) }}, // no such type
		{"peer's close", func(peer net.Conn) { peer.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSessionConn(false, time.Minute, testLogger(t))
			defer s.Close()
			peer := pipeCarrier(t, s)
			go peerFrames(peer)
			// Room for more than the body: Read reads the next header.
			got := readFromSession(s, 2*maxFrameBody)
			waitFor(t, s, "Read to wait", func() bool { return s.readWaiting })
			go func() {
				peer.Write(appendFrames(nil, a, 0))
				tc.then(peer)
			}()
			waitFor(t, s, "the carrier to end", func() bool { return len(s.carriers) == 0 })
			s.mu.Lock()
			recvd := s.recvd
			s.mu.Unlock()
			if recvd != uint64(len(a)) {
				t.Fatalf("%d bytes received, want the %d of the body", recvd, len(a))
			}
			s.Close()
			if r := <-got; !bytes.Equal(r.b, a) {
				t.Fatalf("Read returned %d bytes, want the %d of the body", len(r.b), len(a))
			}
		})
	}
}
