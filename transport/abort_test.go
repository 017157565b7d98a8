package transport

import (
	"errors"
	"io"
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
