//go:build linux

package transport

import (
	"testing"
	"time"
)

// TestOfflineClientWaitsOutItsBackoff: a client whose network is gone
// (a phone in a tunnel, with Telegram's connection open through it) tries
// again on its backoff's schedule, and sleeps in between: each wake-up
// keeps a phone's CPU from sleeping, and with no carrier there is nothing
// to watch until the next try. When the network is back, the next try
// carries the session on.
func TestOfflineClientWaitsOutItsBackoff(t *testing.T) {
	t.Parallel()
	_, nw, ctx, sess := switchedSession(t)
	// An app's connection stays open through the outage.
	st, err := sess.OpenStream(ctx, Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	nw.cut()
	// Past the first tries, whose backoff is short.
	time.Sleep(1500 * time.Millisecond)
	wakes0, tries0 := sess.conn.checks.Load(), nw.tries.Load()
	time.Sleep(3 * time.Second)
	wakes, tried := sess.conn.checks.Load()-wakes0, nw.tries.Load()-tries0
	t.Logf("offline for 3 s: %d tries, %d wake-ups of the manager", tried, wakes)
	if tried == 0 {
		t.Fatal("the client stopped trying while it had a stream open")
	}
	if wakes > 3*tried+4 {
		t.Errorf("offline for 3 s, the client's manager woke %d times for %d tries, want at most %d", wakes, tried, 3*tried+4)
	}

	nw.off.Store(false)
	if err := transfer(ctx, sess, 'D', 64<<10, 2, 15*time.Second); err != nil {
		t.Fatalf("a stream once the network was back: %v", err)
	}
}
