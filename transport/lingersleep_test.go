//go:build linux

package transport

import (
	"testing"
	"time"
)

// TestLingeringSessionSleeps: a session whose client vanished (a phone
// that went to sleep, an app killed, a network gone) waits on the bridge
// for its client to come back, for the linger time, two minutes by
// default. It has no carrier to watch and nothing a tick could send, so
// it does not wake up four times a second meanwhile: a bridge that had
// served 337 such short-lived clients spent 3% of a core on their
// sessions' checks while it carried nothing. When the client comes back,
// the sleeping session takes the new carrier and carries on at once.
func TestLingeringSessionSleeps(t *testing.T) {
	t.Parallel()
	b, nw, ctx, sess := switchedSession(t)
	b.server.mu.Lock()
	var bridge *sessionConn
	for _, ss := range b.server.sessions {
		bridge = ss.conn
	}
	b.server.mu.Unlock()
	if bridge == nil {
		t.Fatal("the bridge has no session")
	}

	// The client vanishes: its connection goes, and it cannot reach the
	// bridge.
	nw.cut()
	deadline := time.Now().Add(10 * time.Second)
	for {
		bridge.mu.Lock()
		gone := bridge.watchedCarrier() == nil
		bridge.mu.Unlock()
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the bridge's session still has a carrier 10 s after the client's connection was reset")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Past the second after which a quiet session lets its buffers go.
	time.Sleep(1500 * time.Millisecond)
	before := bridge.checks.Load()
	time.Sleep(3 * time.Second)
	wakes := bridge.checks.Load() - before
	t.Logf("the lingering session's check woke %d times in 3 s", wakes)
	if wakes > 2 {
		t.Errorf("a session lingering without a carrier woke its check %d times in 3 s, want at most 2", wakes)
	}
	b.server.mu.Lock()
	n := len(b.server.sessions)
	b.server.mu.Unlock()
	if n != 1 {
		t.Fatalf("the bridge has %d sessions while the client is away, want 1 (lingering)", n)
	}

	// The client comes back: the same session carries a new stream.
	nw.off.Store(false)
	start := time.Now()
	if err := transfer(ctx, sess, 'D', 64<<10, 2, 10*time.Second); err != nil {
		t.Fatalf("a stream after the client came back: %v", err)
	}
	t.Logf("the client came back: a 64 KiB download took %v", time.Since(start).Round(time.Millisecond))
	if sess.IsClosed() {
		t.Fatal("the client's session ended: the bridge did not take it back")
	}
}
