package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/sockcopy"
)

// socketFeed returns the reading end of a loopback TCP connection whose
// other end writes data in bursts of random sizes, with pauses, then
// half-closes: a destination or an app as sockcopy meets it.
func socketFeed(t *testing.T, data []byte) net.Conn {
	t.Helper()
	w, r := tcpPair(t)
	go func() {
		rest := data
		for len(rest) > 0 {
			k := min(len(rest), 1+rand.IntN(3*sendChunk))
			if _, err := w.Write(rest[:k]); err != nil {
				return
			}
			rest = rest[k:]
			if rand.IntN(8) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		w.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, w) // until the test's end closes it
	}()
	return r
}

// TestFilledStreamsArriveWhole proves the fill path (sockcopy reading a
// socket straight into chunks of the send queue, fillStream) carries a
// download and an upload whole and in order, the reads of all sizes that
// a socket gives (short reads too, whose bytes are copied into the queue
// rather than linked), beside each other on one session; and that once
// they are done nothing stays reserved.
func TestFilledStreamsArriveWhole(t *testing.T) {
	down := payload(24<<20+12345, 1)
	up := payload(16<<20+777, 2)
	upGot := make(chan []byte, 1)
	var bridgeConn atomic.Pointer[sessionConn]
	handler := func(st *Stream) {
		if _, ok := any(st).(sockcopy.Filler); !ok {
			t.Error("the bridge's Stream is no sockcopy.Filler")
		}
		st.Reply(StatusOK)
		bridgeConn.Store(st.Conn.(*countedStream).sc)
		read := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(st)
			read <- b
		}()
		src := socketFeed(t, down)
		if _, err := sockcopy.Copy(st, src, src, nil); err != nil {
			t.Errorf("bridge's copy: %v", err)
		}
		st.CloseWrite()
		upGot <- <-read // the stream ends with the handler
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	st := openOneStream(t, b)
	if _, ok := st.(sockcopy.Filler); !ok {
		t.Fatalf("the client's stream (%T) is no sockcopy.Filler", st)
	}
	upDone := make(chan error, 1)
	go func() {
		src := socketFeed(t, up)
		_, err := sockcopy.Copy(st, src, src, nil)
		if err == nil {
			err = st.(interface{ CloseWrite() error }).CloseWrite()
		}
		upDone <- err
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("reading the download: %v", err)
	}
	if !bytes.Equal(got, down) {
		t.Fatalf("the download came as %d bytes, want the %d sent, in order", len(got), len(down))
	}
	if err := <-upDone; err != nil {
		t.Fatalf("the upload's copy: %v", err)
	}
	select {
	case b := <-upGot:
		if !bytes.Equal(b, up) {
			t.Fatalf("the upload came as %d bytes, want the %d sent, in order", len(b), len(up))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the bridge did not get the whole upload")
	}
	sc := bridgeConn.Load()
	sc.mu.Lock()
	reserved := sc.reserved
	sc.mu.Unlock()
	if reserved != 0 {
		t.Fatalf("the bridge's session still reserves %d bytes after the download", reserved)
	}
}

// TestFillClosedWhileReadingQueuesNothing proves a fill whose stream is
// closed while it reads (its read runs without the session's lock) queues
// nothing after the stream's FIN, says so, and gives back what it
// reserved: the session's other streams go on as before.
func TestFillClosedWhileReadingQueuesNothing(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	sess, st := dialAndOpen(t, b)
	sc := sess.conn
	sc.mu.Lock()
	written := sc.written
	sc.mu.Unlock()
	n, err := st.(sockcopy.Filler).Fill(func(p []byte) (int, error) {
		st.Close() // queues the FIN while the fill holds its room
		return copy(p, "late bytes"), nil
	})
	if n != 0 || !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Fill on a stream closed during its read = %d, %v; want 0, io.ErrClosedPipe", n, err)
	}
	sc.mu.Lock()
	queued, reserved, inflight := sc.written-written, sc.reserved, sc.inflight
	sc.mu.Unlock()
	if queued != smuxHeaderLen || reserved != 0 {
		t.Fatalf("after the fill: %d bytes queued (want the FIN's %d only), %d reserved", queued, smuxHeaderLen, reserved)
	}
	if inflight != 0 {
		t.Fatalf("the session counts %d bytes in flight for a closed stream that sent none", inflight)
	}
	echoBeside(t, sess, "a fill closed in its read")
}

// TestFillWaitingForWindowHoldsNoBuffer proves a copy from a socket into
// a stream that waits for the stream's window holds no buffer while it
// waits: fillStream waits for room before it takes a chunk to read into.
// Through Write, sockcopy read into a 64 KiB buffer first and held it
// while Write waited, so a bridge with a thousand stalled downloads (apps
// that stopped reading) held 64 MiB in them.
func TestFillWaitingForWindowHoldsNoBuffer(t *testing.T) {
	const n = 64
	release := make(chan struct{})
	handler := func(st *Stream) {
		st.Reply(StatusOK)
		<-release // reads nothing
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	defer close(release)
	sess, first := dialAndOpen(t, b)
	streams := make([]*clientStream, n)
	sources := make([]net.Conn, n)
	for i := range streams {
		st := first
		if i > 0 {
			var err error
			if st, err = sess.OpenStream(context.Background(), Request{Command: CmdDefault}); err != nil {
				t.Fatal(err)
			}
			defer st.Close()
		}
		streams[i] = st.(*clientStream)
		sources[i] = socketFeed(t, make([]byte, 256<<10))
	}
	// The bridge granted no more window: each stream's has been used.
	sc := sess.conn
	sc.mu.Lock()
	for _, st := range streams {
		w := sc.sendWins[st.Stream.ID()]
		w.window = w.sent - w.consumed
	}
	sc.mu.Unlock()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	done := make(chan error, n)
	for i, st := range streams {
		go func() {
			_, err := sockcopy.Copy(st, sources[i], sources[i], nil)
			done <- err
		}()
	}
	waitUntil(t, "every copy waiting for window", func() bool {
		for _, st := range streams {
			if !st.waiting.Load() {
				return false
			}
		}
		return true
	})
	grew := int64(heap()) - int64(before)
	t.Logf("%d copies waiting for window: heap grew %d KiB", n, grew>>10)
	if grew > n*16<<10 {
		t.Fatalf("%d copies waiting for window hold %d KiB of heap, %d KiB each", n, grew>>10, grew/n>>10)
	}
	for _, st := range streams {
		st.Close()
	}
	for range streams {
		if err := <-done; !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("a copy waiting for window ended with %v when its stream was closed, want io.ErrClosedPipe", err)
		}
	}
}

// TestFillStoppedDuringItsReadCountsNothing proves a fill whose stream
// stops writing while it reads (Close and CloseWrite stop the writes
// first, then queue the FIN) queues nothing and counts nothing: the
// stream's window and the session's bytes in flight are as before. The
// bytes read were counted as sent, never queued, and a client held them
// from its bound until the bridge's FIN came.
func TestFillStoppedDuringItsReadCountsNothing(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	sess, st := dialAndOpen(t, b)
	sc := sess.conn
	d := st.(*clientStream).directStream
	sid := d.Stream.ID()
	sc.mu.Lock()
	w := sc.sendWins[sid]
	sent, inflight, written := w.sent, sc.inflight, sc.written
	sc.mu.Unlock()
	n, err := d.Fill(func(p []byte) (int, error) {
		d.stopWriting() // as Close and CloseWrite do, before the FIN
		return copy(p, "bytes read from the app"), nil
	})
	if n != 0 || !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Fill on a stream stopped during its read = %d, %v; want 0, io.ErrClosedPipe", n, err)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.sendWins[sid] != w {
		t.Fatal("the stream's window was forgotten before its FIN was queued")
	}
	if w.sent != sent || sc.inflight != inflight || sc.written != written || sc.reserved != 0 {
		t.Fatalf("after the fill: the window counts %d bytes sent (was %d), the session %d in flight (was %d), %d queued, %d reserved; want no change",
			w.sent, sent, sc.inflight, inflight, sc.written-written, sc.reserved)
	}
}

// TestSendOnAStreamClosedWhileTheQueueWasFull proves a fill or a write
// that waits for room in the session's queue (sendLimit of bytes not yet
// acknowledged), and whose stream is closed meanwhile, its send window
// forgotten, ends with io.ErrClosedPipe and queues nothing. The wait lets
// go of the session's lock, and both went on with what they had looked
// up before it: a fill with no window by then, which crashed a bridge (a
// destination's reader waited so under a bulk load, and the app's side
// of its stream ended); a write queued its bytes after the stream's FIN.
func TestSendOnAStreamClosedWhileTheQueueWasFull(t *testing.T) {
	t.Run("fill", func(t *testing.T) {
		testSendOnClosedWhileQueueFull(t, func(d *directStream, read *atomic.Bool) error {
			_, err := d.Fill(func(p []byte) (int, error) {
				read.Store(true)
				return copy(p, "late bytes"), nil
			})
			return err
		})
	})
	t.Run("write", func(t *testing.T) {
		testSendOnClosedWhileQueueFull(t, func(d *directStream, _ *atomic.Bool) error {
			_, err := d.Write([]byte("late bytes"))
			return err
		})
	})
}

func testSendOnClosedWhileQueueFull(t *testing.T, send func(*directStream, *atomic.Bool) error) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	sess, st := dialAndOpen(t, b)
	sc := sess.conn
	d := st.(*clientStream).directStream
	sid := d.Stream.ID()
	waitFor(t, sc, "the bridge's acknowledgement of the stream's opening", func() bool { return sc.unacked() == 0 })
	// The queue is full: sendLimit bytes sent and not yet acknowledged
	// (made up: they never go out), none waiting to be sent. So the send
	// finds room in the stream's window and under the bound on what waits
	// to be sent (frameRoom), and waits for acknowledgements.
	sc.mu.Lock()
	sc.sendq.push(make([]byte, sendLimit))
	sc.written += sendLimit
	sc.next = sc.written
	sc.sentMax = sc.written
	written := sc.written
	sc.mu.Unlock()
	var read atomic.Bool
	done := make(chan error, 1)
	go func() { done <- send(d, &read) }()
	// The send holds the lock until it waits: once the lock is free and
	// the send has begun, it waits.
	deadline := time.Now().Add(5 * time.Second)
	for {
		sc.mu.Lock()
		if d.waiting.Load() {
			break
		}
		sc.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the send never waited for room in the full queue")
		}
		time.Sleep(time.Millisecond)
	}
	// As the bridge's Close does: the stream's window is forgotten; then
	// an acknowledgement frees the queue.
	if w := sc.sendWins[sid]; w != nil {
		sc.forgetSendWin(sid, w)
	}
	if err := sc.ackedTo(sc.written); err != nil {
		t.Fatal(err)
	}
	sc.mu.Unlock()
	select {
	case err := <-done:
		if !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("the send on a stream closed while it waited ended with %v, want io.ErrClosedPipe", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the send on a stream closed while it waited did not end")
	}
	if read.Load() {
		t.Error("the fill read from its source for a stream that was closed")
	}
	sc.mu.Lock()
	queued, reserved := sc.written-written, sc.reserved
	sc.mu.Unlock()
	if queued != 0 || reserved != 0 {
		t.Fatalf("after the send: %d bytes queued, %d reserved; want none", queued, reserved)
	}
}
