package transport

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestRetiredCarriersEndWithFINs: a carrier retired at its budget ends
// with a FIN each way, not a reset: the client's without close_notify, as
// Chromium's connections end, the bridge's with it, as a web server's do. Both ends close at the same moment; a socket closed with the
// peer's close_notify on its way answers it with a reset, and a reset at
// the end of budget carriers would mark the connections to a bridge.
func TestRetiredCarriersEndWithFINs(t *testing.T) {
	b := startBridge(t, newSiteFace(t), loadHandler, nil)
	relay := startTapRelay(t, b.addr)
	// The tap relay hands over its taps on channels of 16: collect them
	// as carriers come, or the 17th would wait.
	var mu sync.Mutex
	var taps [][2]*recordTap // client's side, bridge's side
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case up := <-relay.up:
				down := <-relay.down
				mu.Lock()
				taps = append(taps, [2]*recordTap{up, down})
				mu.Unlock()
			}
		}
	}()
	cfg := b.clientConfig()
	cfg.Address = relay.addr
	cfg.Budget = 14 << 10
	cfg.Logger = testLogger(t)
	ctx, sess := dialForAMinute(t, cfg)
	if err := transfer(ctx, sess, 'D', 128<<10, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := transfer(ctx, sess, 'U', 128<<10, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Every carrier but the session's last two (the one in use and the
	// one dialled ahead) is retired, or about to be.
	ended := func() (n, total int) {
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range taps {
			if tp[0].ended() && tp[1].ended() {
				n++
			}
		}
		return n, len(taps)
	}
	waitUntil(t, "the retired carriers to end", func() bool { n, total := ended(); return n >= total-2 })
	mu.Lock()
	defer mu.Unlock()
	if len(taps) < 6 {
		t.Fatalf("%d carriers: want several retired at the budget", len(taps))
	}
	resets, ends := 0, 0
	for i, tp := range taps {
		if tp[0].ended() && tp[1].ended() {
			ends += 2
			resets += checkCarrierEnds(t, fmt.Sprintf("carrier %d", i), tp[0], tp[1])
		}
	}
	if resets > 0 {
		t.Errorf("%d of %d ends of retired carriers were resets, want FINs", resets, ends)
	}
}

// TestSessionEndsWithFINs: when a session ends, its carriers end with a
// FIN each way, not a reset, whichever side ends it: the client's app
// closing it, or the bridge (its idle timeout, its shutdown). The client
// closes as Chromium does, without close_notify, the bridge as a web
// server does, with it. Both used to close their sockets right after the
// CLOSE frame, and a socket closed with the peer's bytes on their way
// answers them with a reset: the end of every session, seen by a censor.
func TestSessionEndsWithFINs(t *testing.T) {
	for _, by := range []string{"client", "bridge"} {
		t.Run("ended by the "+by, func(t *testing.T) {
			t.Parallel()
			b := startBridge(t, newSiteFace(t), loadHandler, func(c *ServerConfig) {
				if by == "bridge" {
					c.IdleTimeout = 300 * time.Millisecond
				}
			})
			relay := startTapRelay(t, b.addr)
			cfg := b.clientConfig()
			cfg.Address = relay.addr
			const sessions = 12
			resets := 0
			for i := range sessions {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				sess, err := Dial(ctx, cfg)
				if err != nil {
					cancel()
					t.Fatal(err)
				}
				up, down := <-relay.up, <-relay.down
				err = transfer(ctx, sess, 'D', 64<<10, uint64(i), 5*time.Second)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if by == "client" {
					sess.Close()
				} else {
					select {
					case <-sess.CloseChan():
					case <-time.After(10 * time.Second):
						t.Fatal("the bridge did not end the idle session")
					}
				}
				waitUntil(t, "the carrier to end both ways", func() bool { return up.ended() && down.ended() })
				resets += checkCarrierEnds(t, fmt.Sprintf("session %d", i), up, down)
				sess.Close()
			}
			if resets > 0 {
				t.Errorf("%d of %d carrier ends were resets, want FINs", resets, 2*sessions)
			}
		})
	}
}

// checkCarrierEnds checks how a carrier that ended both ways ended, as
// the client's side (up) and the bridge's (down) of a tap relay saw it:
// the client closes as Chromium does, without close_notify (a 19-byte
// record), the bridge as a web server does, with it. It returns how many
// sides ended with a reset, not a FIN.
func checkCarrierEnds(t *testing.T, name string, up, down *recordTap) (resets int) {
	t.Helper()
	for j, tap := range []*recordTap{up, down} {
		if err := tap.endErr(); err != nil {
			resets++
			t.Logf("%s: the %s ended it with %v", name, []string{"client", "bridge"}[j], err)
		}
		n, _ := tap.count()
		all := plus(tap.lengths(0, n), recordOverhead13)
		if last := all[len(all)-1]; j == 0 && last == 19 {
			t.Errorf("%s: the client's last record is a close_notify; Chromium sends none", name)
		} else if j == 1 && last != 19 {
			t.Errorf("%s: the bridge's last record is %d bytes, not a close_notify (19)", name, last)
		}
	}
	return resets
}
