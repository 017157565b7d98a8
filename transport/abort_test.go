package transport

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestAbortedStreamFailsTheClientsWrites proves a bridge's Stream.Abort
// reaches the client: a handler whose destination failed aborts the
// stream, and the client's writes to it fail with ErrStreamAborted, so
// that its local proxy ends the app's connection. After a plain Close the
// client takes the stream for half-closed (smux's FIN says no more), and
// an app still sending went on into a stream nobody read until its window
// ran out, then waited for good: curl uploading to a hung server through
// mirage waited for its own 60 s timeout. The session's other streams go
// on.
func TestAbortedStreamFailsTheClientsWrites(t *testing.T) {
	_, sess := dialCommandBridge(t, func(st *Stream, cmd byte) bool {
		if cmd != 'A' {
			return false
		}
		io.CopyN(io.Discard, st, 64<<10)
		st.Abort()
		return true
	})
	st := openStream(t, sess)
	if _, err := st.Write([]byte{'A'}); err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			if _, err := st.Write(chunk); err != nil {
				failed <- err
				return
			}
		}
	}()
	select {
	case err := <-failed:
		if !errors.Is(err, ErrStreamAborted) {
			t.Fatalf("write to an aborted stream failed with %v, want ErrStreamAborted", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writes to a stream the bridge aborted still go on after 20 s")
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, st); !errors.Is(err, ErrStreamAborted) || n != 0 {
		t.Fatalf("reading the aborted stream: %d bytes, %v; want ErrStreamAborted", n, err)
	}
	other := openStream(t, sess)
	other.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := other.Write([]byte{'e'}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(other, b[:]); err != nil || b[0] != 'e' {
		t.Fatalf("another stream of the session: %q, %v", b, err)
	}
	st.Close()
	other.Close()
	waitNothingInFlight(t, sess)
}

// TestClientAbortStopsTheBridgesWrites proves the other way: a client
// that aborts a stream (its app reset or dropped the connection of a
// download) stops the bridge's writes to it at once, with
// ErrStreamAborted, so that the bridge closes the destination. After a
// plain Close the bridge took the stream for half-closed and went on
// sending the download: a window's worth through the link for nobody,
// then a wait of five minutes (the stall timeout) with the destination's
// connection held. A video player that seeks drops a connection at every
// seek.
func TestClientAbortStopsTheBridgesWrites(t *testing.T) {
	ended := make(chan error, 1)
	_, sess := dialCommandBridge(t, func(st *Stream, cmd byte) bool {
		if cmd != 'D' {
			return false
		}
		chunk := make([]byte, 32<<10)
		for {
			if _, err := st.Write(chunk); err != nil {
				ended <- err
				return true
			}
		}
	})
	st := openStream(t, sess)
	if _, err := st.Write([]byte{'D'}); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.CopyN(io.Discard, st, 256<<10); err != nil {
		t.Fatal(err)
	}
	if err := Abort(st); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, ErrStreamAborted) {
			t.Fatalf("the bridge's write to an aborted stream failed with %v, want ErrStreamAborted", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the bridge still writes to a stream its client aborted after 20 s")
	}
	waitNothingInFlight(t, sess)
}

// TestAbortLetsGoOfWhatTheStreamHeld proves that a stream aborted, at
// either end, lets go of the bytes it held unread, as a closed one does:
// they no longer count against its session's room. Before, a client's
// Abort closed the smux stream and skipped the count (the embedded
// stream's Abort ran, and with it the embedded Close, not the counting
// one's): a client whose app reset a paused download counted its unread
// bytes until the session ended, and the room of the session's other
// streams shrank by as much with every such reset (the client subtest
// failed so). A bridge's handler that aborts is closed by serveStream,
// which counts; the bridge subtest keeps it so.
func TestAbortLetsGoOfWhatTheStreamHeld(t *testing.T) {
	t.Run("client", func(t *testing.T) {
		_, sess := dialCommandBridge(t, func(st *Stream, cmd byte) bool {
			if cmd == 'B' {
				st.Write(make([]byte, 4<<20))
			}
			return cmd == 'B'
		})
		keepSession(t, sess)
		st := openStream(t, sess)
		if _, err := st.Write([]byte{'B'}); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, "the paused download to fill what it may", sess.conn.received)
		if err := Abort(st); err != nil {
			t.Fatal(err)
		}
		a := sess.conn.acct
		waitUntil(t, "the client's count to let go of the aborted download", func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.held == 0 && len(a.streams) == 1
		})
	})
	t.Run("bridge", func(t *testing.T) {
		aborted := make(chan struct{})
		b, sess := dialCommandBridge(t, func(st *Stream, cmd byte) bool {
			if cmd == 'U' {
				<-aborted // the destination does not read, then resets
				st.Abort()
			}
			return cmd == 'U'
		})
		keepSession(t, sess)
		st := openStream(t, sess)
		st.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := st.Write(append([]byte{'U'}, make([]byte, 256<<10)...)); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the bridge to hold the upload", func() bool {
			return b.server.buffers.held.Load() > 0
		})
		close(aborted)
		waitUntil(t, "the bridge to let go of the aborted upload", func() bool {
			return b.server.buffers.held.Load() == 0
		})
	})
}

// keepSession opens a stream of sess's command bridge that both ends
// keep open until the test ends, so that the session is not idle, and
// that holds nothing unread.
func keepSession(t *testing.T, sess *Session) {
	t.Helper()
	exchange(t, openStream(t, sess), 'K')
}

// echo has st's command bridge echo a byte, and reads it: st then holds
// nothing unread, its reply read too.
func echo(t *testing.T, st net.Conn) {
	t.Helper()
	exchange(t, st, 'e')
}

// exchange writes command cmd to st's command bridge, and reads the
// byte it answers, which must be cmd.
func exchange(t *testing.T, st net.Conn, cmd byte) {
	t.Helper()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	defer st.SetDeadline(time.Time{})
	var b [1]byte
	if _, err := st.Write([]byte{cmd}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, b[:]); err != nil || b[0] != cmd {
		t.Fatalf("%q to the command bridge: %q, %v", cmd, b, err)
	}
}
