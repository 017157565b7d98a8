package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestPausedDownloadsDoNotStallTheSession proves that downloads an app
// has stopped reading (a browser's paused downloads, a video paused with
// its socket full) do not stop the session's other streams, and cost the
// client bounded memory: a new stream opens and echoes at once, the
// client holds no more than a session's room for them, and once the app
// reads again every download finishes. Before, the client's smux session
// could hold only two streams' windows unread (32 MiB): with three
// paused 20 MiB downloads its receive loop stopped reading the session,
// and a new stream's reply never came. Then each paused download held
// its whole window at the client, for as many as the app paused: 4 MiB
// each, 48 MiB for twelve (this test failed so), 144 MB of RSS for 24
// paused through mirage-client, more than a phone gives a VPN.
func TestPausedDownloadsDoNotStallTheSession(t *testing.T) {
	t.Parallel()
	const size = 20 << 20 // more than a stream's window
	_, sess := dialCommandBridge(t, func(st *Stream, cmd byte) bool {
		if cmd == 'B' {
			st.Write(make([]byte, size))
		}
		return cmd == 'B'
	})
	const paused = 32
	var streams []net.Conn
	for range paused {
		st := openStream(t, sess)
		if _, err := st.Write([]byte{'B'}); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	// Wait until the bridge has sent all it may.
	waitSettled(t, "the paused downloads to fill what they may", sess.conn.received)
	held := sess.conn.received()
	t.Logf("the client holds %d KiB for %d paused downloads", held>>10, paused)
	if held > sessionWindow {
		t.Errorf("the client holds %d bytes for %d paused downloads, want at most %d", held, paused, sessionWindow)
	}
	echoBeside(t, sess, fmt.Sprintf("%d paused downloads", paused))
	// The app reads again: every download finishes. It must keep moving,
	// not finish within a set time: 640 MiB under -race, beside every
	// other package's tests on two cores, once took more than 30 s
	// (CI: every download 13-20 MiB of 20 when a single deadline fell).
	var wg sync.WaitGroup
	for _, st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// progressReader: each read may wait 15 s, the whole copy longer.
			if n, err := io.Copy(io.Discard, io.LimitReader(&progressReader{c: st, idle: 15 * time.Second}, size)); n != size {
				t.Errorf("a paused download, read again: %d bytes of %d, %v", n, size, err)
			}
			st.Close()
		}()
	}
	wg.Wait()
	// Closed, they leave nothing counted.
	a := sess.conn.acct
	waitUntil(t, "the client's count to let go of the closed downloads", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.held == 0 && a.promised == 0 && len(a.streams) == 0
	})
}

// dialCommandBridge starts a bridge whose streams reply OK and read a
// command byte, which special may take the stream for (it returns true),
// or else is echoed ('K' is keepSession's); it refuses CONNECT streams
// (StatusNotAllowed). And it dials a session to it, closed when the test
// ends.
func dialCommandBridge(t *testing.T, special func(st *Stream, cmd byte) bool) (*testBridge, *Session) {
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if st.Request.Command == CmdConnect {
			st.Reply(StatusNotAllowed)
			return
		}
		if err := st.Reply(StatusOK); err != nil {
			return
		}
		var cmd [1]byte
		if _, err := st.Read(cmd[:]); err != nil {
			return
		}
		if cmd[0] == 'K' {
			st.Write(cmd[:])
			io.Copy(io.Discard, st) // open until the client closes it
			return
		}
		if special(st, cmd[0]) {
			return
		}
		st.Write(cmd[:])
	}, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return b, sess
}

// openStream opens a stream of sess, closed when the test ends.
func openStream(t *testing.T, sess *Session) net.Conn {
	t.Helper()
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// waitSettled waits until count, once above 0, has not changed for half
// a second.
func waitSettled(t *testing.T, what string, count func() uint64) {
	t.Helper()
	last, still := uint64(0), 0
	waitUntil(t, what, func() bool {
		if n := count(); n != last || n == 0 {
			last, still = n, 0
			return false
		}
		still++
		return still >= 50 // 50 polls of 10 ms
	})
}

// echoBeside checks that a new stream of sess opens and echoes a byte
// within 5 s each, beside what (the streams that might stall it).
func echoBeside(t *testing.T, sess *Session, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := sess.OpenStream(ctx, Request{Command: CmdDefault})
	if err != nil {
		t.Fatalf("a new stream beside %s: %v", what, err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Write([]byte{'e'}); err != nil {
		t.Fatal(err)
	}
	var got [1]byte
	if _, err := st.Read(got[:]); err != nil || got[0] != 'e' {
		t.Fatalf("echo beside %s: %q, %v", what, got, err)
	}
}

// TestStuckUploadsDoNotStallTheSession proves that uploads towards
// destinations that stopped reading (a throttled server, a peer that went
// away without closing) hold little at the bridge and do not stop the
// session's other streams: a new stream opens and echoes at once. Before
// windows were tuned, every stream was granted 16 MiB at once, so two
// stuck uploads filled the bridge's 32 MiB per session: its smux stopped
// reading the session, and every other app of that user froze with them
// (this test failed so: no new stream within 5 s, 32 MiB held). Then each
// held its initial window, and eight filled the session: with twelve,
// the ninth stream's request was never answered, and the client, its
// PINGs unread, dialled 14 carriers in 30 s. Then the windows of the
// streams that hold a backlog shared half the session (window.go), but
// each stream could still send a quarter of its window and 1.1 MiB before
// the cuts came back: 64 stuck at the same moment filled the session
// (this test failed so at 64 and 128: a stream's request unanswered
// within 30 s). Now the client's streams together keep clear of the
// bridge's room, however many there are (streamsend.go, sessionRoom).
func TestStuckUploadsDoNotStallTheSession(t *testing.T) {
	t.Parallel()
	for _, stuck := range []int{4, 12, 64, 128} {
		t.Run(fmt.Sprint(stuck), func(t *testing.T) {
			t.Parallel()
			stuckUploads(t, stuck)
		})
	}
}

// stuckUploads runs n uploads whose destinations do not read through one
// session, and checks what the bridge holds for them, that a stream
// beside them echoes, that an upload beside them finishes (its reads
// announced though it is held below smux's step), that the client kept
// its carrier, that once the destinations read again every upload
// finishes (a window cut to make room for the others grows again), and
// that once all are closed, the client counts nothing in flight.
func stuckUploads(t *testing.T, stuck int) {
	b, sess, released := dialUploadBridge(t)
	// More than any window a stuck stream may have: its window grows only
	// as its destination reads.
	const size = initialWindow + 2<<20
	upload := append([]byte{'U'}, make([]byte, size)...)
	done := make(chan error, stuck)
	var streams []net.Conn
	for range stuck {
		st := openStream(t, sess)
		streams = append(streams, st)
		go func() {
			_, err := st.Write(upload)
			done <- err
		}()
	}
	// Wait until the client has sent all it may.
	written := func() uint64 {
		sess.conn.mu.Lock()
		defer sess.conn.mu.Unlock()
		return sess.conn.written
	}
	waitSettled(t, "the stuck uploads to send what they may", written)
	held := b.server.buffers.held.Load()
	t.Logf("the bridge holds %d KiB for %d stuck uploads", held>>10, stuck)
	// Each holds at most its initial window, and all of them together
	// less than the session's smux holds, which stops reading when
	// full.
	most := min(int64(stuck*(initialWindow+2*maxFrameSize)), clientMostInflight)
	if held > most {
		t.Errorf("the bridge holds %d bytes for %d stuck uploads, want at most %d", held, stuck, most)
	}
	echoBeside(t, sess, fmt.Sprintf("%d stuck uploads", stuck))
	uploadBeside(t, sess, fmt.Sprintf("%d stuck uploads", stuck))
	if n := sess.nextSeq.Load(); n > 1 {
		t.Errorf("the client dialled %d carriers beside %d stuck uploads, want 1: it took its carrier for frozen", n, stuck)
	}
	released()
	// The uploads must keep moving until they finish, not finish within
	// a set time: 768 MiB at 128 under -race, beside every other
	// package's tests on two cores, once took more than 30 s in CI.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastAt := written(), time.Now()
	for left := stuck; left > 0; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("an upload, once its destination read again: %v", err)
			}
			left--
		case <-tick.C:
			if w := written(); w != last {
				last, lastAt = w, time.Now()
			} else if time.Since(lastAt) > 30*time.Second {
				t.Fatalf("%d uploads stopped moving for 30 s after their destinations read again", left)
			}
		}
	}
	for _, st := range streams {
		st.Close()
	}
	waitNothingInFlight(t, sess)
}

// waitNothingInFlight waits until the client's bound of sess counts
// nothing in flight and keeps no stream's send window: what every stream
// sent was read and announced, or the stream ended on both sides. A count
// left behind would shrink the session's room for good.
func waitNothingInFlight(t *testing.T, sess *Session) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		sess.conn.mu.Lock()
		inflight, windows := sess.conn.inflight, len(sess.conn.sendWins)
		sess.conn.mu.Unlock()
		if inflight == 0 && windows == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client still counts %d bytes in flight in %d streams' send windows, all of them closed", inflight, windows)
		}
	}
}

// dialUploadBridge dials a session to a command bridge whose streams
// take uploads: after 'U', towards a destination that does not read
// until released is called (at the latest when the test ends); after
// 'C', towards one that reads besideUpload bytes, then answers 'k'
// (uploadBeside).
func dialUploadBridge(t *testing.T) (b *testBridge, sess *Session, released func()) {
	release := make(chan struct{})
	released = sync.OnceFunc(func() { close(release) })
	b, sess = dialCommandBridge(t, func(st *Stream, cmd byte) bool {
		switch cmd {
		case 'U':
			<-release // the destination does not read
			io.Copy(io.Discard, st)
		case 'C':
			if _, err := io.CopyN(io.Discard, st, besideUpload); err == nil {
				st.Write([]byte{'k'})
			}
		}
		return cmd == 'U' || cmd == 'C'
	})
	t.Cleanup(released) // before the bridge closes
	return b, sess, released
}

// besideUpload is what uploadBeside sends: more than a stream's floor
// and smux's step between UPDs.
const besideUpload = 8 << 20

// uploadBeside checks that an upload of besideUpload bytes through a new
// stream of sess, whose destination reads, finishes within 20 s beside
// what (the streams that might hold the session's room).
func uploadBeside(t *testing.T, sess *Session, what string) {
	t.Helper()
	st := openStream(t, sess)
	st.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := st.Write(append([]byte{'C'}, make([]byte, besideUpload)...)); err != nil {
		t.Fatalf("an upload beside %s: %v", what, err)
	}
	var got [1]byte
	if _, err := st.Read(got[:]); err != nil || got[0] != 'k' {
		t.Fatalf("an upload beside %s: answer %q, %v", what, got, err)
	}
	st.Close()
}

// TestRefusedStreamsLeaveNoCount: streams the bridge refuses, or whose
// request fails, are let go of by the client's count of what its
// streams hold. A refused stream's window granted with its SYN stayed
// promised (this test failed so: 16 MiB promised after four), and past
// four every new download of the session started on a cut window.
func TestRefusedStreamsLeaveNoCount(t *testing.T) {
	t.Parallel()
	b := startBridge(t, newSiteFace(t), func(st *Stream) { st.Reply(StatusNotAllowed) }, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	for range 6 {
		if _, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault}); err == nil {
			t.Fatal("a refused stream opened")
		}
		st, err := sess.OpenStreamFast(Request{Command: CmdDefault})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Read(make([]byte, 1)); err == nil {
			t.Fatal("a refused fast stream read")
		}
	}
	a := sess.conn.acct
	a.mu.Lock()
	promised, streams := a.promised, len(a.streams)
	a.mu.Unlock()
	if promised != 0 || streams != 0 {
		t.Errorf("after 12 refused streams the client counts %d streams and %d bytes promised, want none", streams, promised)
	}
}

// TestWaitingStreamsStopCountingAsPromised: the window a client grants
// a new stream with its SYN counts as held only for promiseFor, while its
// answer may come: streams opened at the same moment share the session's
// room, but streams whose answer takes longer (long polls, idle
// connections) do not shrink the windows of those opened after them.
func TestWaitingStreamsStopCountingAsPromised(t *testing.T) {
	t.Parallel()
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if st.Reply(StatusOK) == nil {
			io.Copy(io.Discard, st) // answers nothing more
		}
	}, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	window := func(st net.Conn) uint32 {
		sess.conn.mu.Lock()
		defer sess.conn.mu.Unlock()
		return sess.conn.windows.streams[st.(*clientStream).Stream.ID()].announced
	}
	var first []net.Conn
	for range 8 {
		first = append(first, openStream(t, sess))
	}
	if w := window(first[0]); w != initialWindow {
		t.Errorf("the first stream's window is %d, want %d", w, initialWindow)
	}
	if w := window(first[7]); w >= initialWindow {
		t.Errorf("the eighth stream opened at once has a window of %d, want less than %d", w, initialWindow)
	}
	time.Sleep(time.Duration(promiseFor) + 100*time.Millisecond)
	if w := window(openStream(t, sess)); w != initialWindow {
		t.Errorf("a stream opened after eight waiting ones has a window of %d, want %d", w, initialWindow)
	}
}

// TestAStreamsReplyIsCountedAsRead proves that once an app has read all
// a stream brought, strict or fast, the session counts nothing held for
// it. Before, the client read the bridge's two-byte answer past the count:
// every open stream counted as holding bytes for good, so no stream was
// ever seen drained (the session announces a drained stream's reads), and
// the session's room for new data was lowered by two bytes a stream.
func TestAStreamsReplyIsCountedAsRead(t *testing.T) {
	_, sess := dialCommandBridge(t, func(*Stream, byte) bool { return false })
	opens := map[string]func() (net.Conn, error){
		"strict": func() (net.Conn, error) {
			return sess.OpenStream(context.Background(), Request{Command: CmdDefault})
		},
		"fast": func() (net.Conn, error) { return sess.OpenStreamFast(Request{Command: CmdDefault}) },
	}
	for name, open := range opens {
		t.Run(name, func(t *testing.T) {
			st, err := open()
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			echo(t, st)
			a := sess.conn.acct
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.held != 0 {
				t.Errorf("a stream whose app read all it brought counts %d bytes held", a.held)
			}
		})
	}
}
