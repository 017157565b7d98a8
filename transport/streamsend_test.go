package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestDirectWritesKeepToTheWindow proves a stream's writes, which bypass
// smux's own Write (streamsend.go), still stop at the window the reader
// grants: a download the client's app does not read costs the bridge at
// most that window, not whatever the sender has to send, and reading
// lets it go on.
func TestDirectWritesKeepToTheWindow(t *testing.T) {
	var accepted atomic.Int64
	handler := func(st *Stream) {
		st.Reply(StatusOK)
		chunk := make([]byte, 32<<10)
		for { // an endless download
			n, err := st.Write(chunk)
			accepted.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	st := openOneStream(t, b)
	// The app reads nothing. The bridge may send the stream's initial
	// window, and no more until the client's UPD grants more.
	waitSettled(t, "the bridge's writes", func() uint64 { return uint64(accepted.Load()) })
	if got := accepted.Load(); got < initialWindow/2 || got > initialWindow {
		t.Fatalf("the bridge's handler wrote %d bytes into a stream nobody reads; want up to its window, %d", got, initialWindow)
	}
	// Reading grants more.
	before := accepted.Load()
	if _, err := io.ReadFull(st, make([]byte, initialWindow)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for accepted.Load() <= before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if accepted.Load() <= before {
		t.Fatal("reading the stream granted the bridge no more window")
	}
}

// openOneStream dials a session to b and opens a stream on it; both end
// with the test.
func openOneStream(t *testing.T, b *testBridge) net.Conn {
	t.Helper()
	_, st := dialAndOpen(t, b)
	return st
}

// dialAndOpen dials a session to b and opens a stream on it; both end
// with the test.
func dialAndOpen(t *testing.T, b *testBridge) (*Session, net.Conn) {
	t.Helper()
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return sess, st
}

// TestWriteWaitingForWindowEndsOnClose proves a write that waits for the
// bridge's window (its destination is not reading) ends when the app
// closes the stream, as smux's own Write did: a relay closes the stream
// to stop its other direction, which must not hang.
func TestWriteWaitingForWindowEndsOnClose(t *testing.T) {
	release := make(chan struct{})
	handler := func(st *Stream) {
		st.Reply(StatusOK)
		<-release // reads nothing: the client's writes fill the window
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	defer close(release)
	st := openOneStream(t, b)
	var wrote atomic.Int64
	done := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			n, err := st.Write(chunk)
			wrote.Add(int64(n))
			if err != nil {
				done <- err
				return
			}
		}
	}()
	waitSettled(t, "the client's writes", func() uint64 { return uint64(wrote.Load()) })
	if got := wrote.Load(); got > initialWindow {
		t.Fatalf("wrote %d bytes into a stream the bridge does not read; its window is %d", got, initialWindow)
	}
	st.Close()
	select {
	case err := <-done:
		if !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("the waiting write ended with %v, want io.ErrClosedPipe", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write waiting for window did not end when the stream was closed")
	}
}

// TestWriteWaitingForWindowEndsAtDeadline proves the write deadline ends
// a write that waits for window, with a timeout error.
func TestWriteWaitingForWindowEndsAtDeadline(t *testing.T) {
	release := make(chan struct{})
	handler := func(st *Stream) {
		st.Reply(StatusOK)
		<-release
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	defer close(release)
	st := openOneStream(t, b)
	st.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	start := time.Now()
	_, err := st.Write(make([]byte, 2*initialWindow))
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("write past the window: err = %v, want a timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the deadline ended the write after %v", took)
	}
}

// TestTrackerReadsUpdatesInPieces proves the send windows learn every
// UPD smux is handed, however its reads cut the frames: a missed UPD
// would leave a stream's writer waiting for window it has.
func TestTrackerReadsUpdatesInPieces(t *testing.T) {
	var stream []byte
	psh := []byte{smuxVersion, smuxCmdPSH, 5, 0, 7, 0, 0, 0, 1, 2, 3, 4, 5}
	stream = append(stream, psh...)
	stream = appendSmuxUPD(stream, smuxVersion, []byte{7, 0, 0, 0}, 1000, 5000)
	stream = append(stream, psh...)
	// A frame of another command 8 bytes long is not an UPD.
	stream = append(stream, smuxVersion, 3, 8, 0, 7, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9)
	stream = appendSmuxUPD(stream, smuxVersion, []byte{9, 0, 0, 0}, 70000, 1<<20)
	for _, cut := range []int{1, 3, 7, 8, 11, len(stream)} {
		type upd struct{ sid, consumed, window uint32 }
		var got []upd
		tr := smuxFrameTracker{onUpdate: func(sid, consumed, window uint32) {
			got = append(got, upd{sid, consumed, window})
		}}
		for b := stream; len(b) > 0; {
			k := min(cut, len(b))
			tr.track(b[:k])
			b = b[k:]
		}
		want := []upd{{7, 1000, 5000}, {9, 70000, 1 << 20}}
		if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("reads of %d bytes: updates %v, want %v", cut, got, want)
		}
		if !tr.between() {
			t.Fatalf("reads of %d bytes: the tracker is not between frames at the end", cut)
		}
	}
}
