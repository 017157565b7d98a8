//go:build linux

package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// relayedBridge starts a bridge with loadHandler behind a relay.
func relayedBridge(t *testing.T, opts transporttest.RelayOptions, configure func(*ServerConfig)) (*testBridge, *transporttest.Relay) {
	t.Helper()
	b := startBridge(t, newSiteFace(t), loadHandler, configure)
	r, err := transporttest.NewRelay(b.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return b, r
}

// checkPacing fails the test if the client opened carriers faster, or
// held more at once, than a browser would.
func checkPacing(t *testing.T, r *transporttest.Relay) {
	t.Helper()
	if n := r.MaxOpen(); n > maxOpenCarriers {
		t.Errorf("%d connections open at once, more than %d", n, maxOpenCarriers)
	}
	if n := r.MaxAcceptsWithin(handshakeWindow); n > maxHandshakeBurst {
		t.Errorf("%d handshakes within %v, more than %d", n, handshakeWindow, maxHandshakeBurst)
	}
}

// freezeAt is where the test relays freeze a connection, as TSPU does
// after 12 to 24 KB.
const freezeAt = 16000

// TestBudgetCarriesThroughFreezes: on a path that freezes every
// connection after 16 KB, a budget of 14k carries a 1 MiB download, a
// 1 MiB upload and ten concurrent 128 KiB downloads intact, with no
// connection carrying more than the budget, and browser pacing.
func TestBudgetCarriesThroughFreezes(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"down", "up"} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			opts := transporttest.RelayOptions{FreezeDown: freezeAt}
			mode := byte('D')
			if dir == "up" {
				opts = transporttest.RelayOptions{FreezeUp: freezeAt}
				mode = 'U'
			}
			b, r := relayedBridge(t, opts, nil)
			cfg := b.clientConfig()
			cfg.Address = r.Addr()
			cfg.Budget = 14 << 10
			cfg.Logger = testLogger(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			sess, err := Dial(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			start := time.Now()
			if err := transfer(ctx, sess, mode, 1<<20, 1, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("1 MiB %s in %v over %d connections", dir, time.Since(start).Round(time.Millisecond), len(r.Stats()))
			if dir == "down" {
				var wg sync.WaitGroup
				errs := make(chan error, 10)
				for i := range 10 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs <- transfer(ctx, sess, 'D', 128<<10, uint64(10+i), 40*time.Second)
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			for i, c := range r.Stats() {
				if c.Down > int64(cfg.Budget) || c.Up > int64(cfg.Budget) {
					t.Errorf("connection %d carried %d down, %d up: over the %d budget", i, c.Down, c.Up, cfg.Budget)
				}
			}
			checkPacing(t, r)
		})
	}
}

// TestFreezeWithoutCarriersHangs is the control: the same freezing path
// stops a session that cannot move to another connection.
func TestFreezeWithoutCarriersHangs(t *testing.T) {
	t.Parallel()
	b, r := relayedBridge(t, transporttest.RelayOptions{FreezeDown: freezeAt}, nil)
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	cfg.singleCarrier = true
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	err = transfer(context.Background(), sess, 'D', 1<<20, 1, 3*time.Second)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a single frozen connection: err = %v, want a stall", err)
	}
	t.Logf("control: %v", err)
}

// TestFreezeDetectedAndBudgetLearned: without a budget, the client
// notices each frozen connection, moves on, and after two freezes at the
// same offset applies a budget below it on its own, and says so.
func TestFreezeDetectedAndBudgetLearned(t *testing.T) {
	t.Parallel()
	b, r := relayedBridge(t, transporttest.RelayOptions{FreezeDown: freezeAt}, nil)
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	var logs lockedBuffer
	cfg.Logger = newTextLogger(&logs)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sess, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	start := time.Now()
	if err := transfer(ctx, sess, 'D', 1<<20, 2, 15*time.Second); err != nil {
		t.Fatalf("%v; client log:\n%s", err, logs.String())
	}
	t.Logf("1 MiB in %v over %d connections; learned budget %d", time.Since(start).Round(time.Millisecond), len(r.Stats()), sess.Budget())
	if got := sess.Budget(); got <= 0 || got >= freezeAt {
		t.Fatalf("learned budget %d, want one below %d", got, freezeAt)
	}
	if n := strings.Count(logs.String(), "freeze after about the same number of bytes"); n != 1 {
		t.Fatalf("the log says %d times that a budget was learned, want once:\n%s", n, logs.String())
	}
	checkPacing(t, r)
}

// TestCarriersCutAtRandom: a path that cuts every connection at random
// moments (reset or silence, 0.5 to 3 s apart) still carries rounds of
// 100 streams of 4 MiB intact, across at least three cuts.
func TestCarriersCutAtRandom(t *testing.T) {
	t.Parallel()
	b, r := relayedBridge(t, transporttest.RelayOptions{CutMin: 500 * time.Millisecond, CutMax: 3 * time.Second}, nil)
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	var logs lockedBuffer
	cfg.Logger = newTextLogger(&logs)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sess, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	const streams, size = 100, 4 << 20
	start := time.Now()
	// Rounds of 100 streams until the path has cut at least three
	// connections: without the race detector a round can take about a
	// second, less than the gap between cuts.
	rounds := 0
	for ; rounds < 20 && (rounds == 0 || len(r.Stats()) < 4); rounds++ {
		sem := make(chan struct{}, 10)
		errs := make(chan error, streams)
		var wg sync.WaitGroup
		for i := range streams {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				errs <- transfer(ctx, sess, 'D', size, uint64(100*rounds+i), 20*time.Second)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("%v; client log:\n%s", err, logs.String())
			}
		}
	}
	resets := 0
	for _, c := range r.Stats() {
		if c.Reset {
			resets++
		}
	}
	t.Logf("%d MiB in %v over %d connections (%d reset, the rest silent or whole)", rounds*streams*size>>20, time.Since(start).Round(time.Millisecond), len(r.Stats()), resets)
	// Each cut is a reset or a silence at even odds, so a run of a few
	// cuts may have no reset at all (1 in 32 with five): what must hold
	// is that cuts happened and the session moved on every time.
	if len(r.Stats()) < 4 {
		t.Fatalf("only %d connections: the cuts were not exercised", len(r.Stats()))
	}
	checkPacing(t, r)
}

// TestNetworkOutage: the route to the bridge disappears for 30 s and comes
// back; an open stream goes on. With an outage longer than the linger
// time, the stream ends cleanly on both sides.
func TestNetworkOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		outage  time.Duration
		linger  time.Duration
		survive bool
	}{
		{"30s-outage", 30 * time.Second, 0, true},
		{"past-linger", 6 * time.Second, 3 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, r := relayedBridge(t, transporttest.RelayOptions{}, func(c *ServerConfig) {
				c.Handler = echoHandler
				c.SessionLinger = tc.linger
			})
			cfg := b.clientConfig()
			cfg.Address = r.Addr()
			cfg.SessionLinger = tc.linger
			sess, err := Dial(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			echo := func(i int) error {
				msg := payload(1000, uint64(i))
				if _, err := st.Write(msg); err != nil {
					return err
				}
				got := make([]byte, len(msg))
				st.SetReadDeadline(time.Now().Add(tc.outage + 30*time.Second))
				if _, err := io.ReadFull(st, got); err != nil {
					return err
				}
				if !bytes.Equal(got, msg) {
					return errors.New("echo came back different")
				}
				return nil
			}
			if err := echo(0); err != nil {
				t.Fatal(err)
			}
			r.SetOutage(true)
			// A message sent into the outage is held, and resent.
			errc := make(chan error, 1)
			go func() { errc <- echo(1) }()
			time.Sleep(tc.outage)
			r.SetOutage(false)
			err = <-errc
			if tc.survive {
				if err != nil {
					t.Fatalf("after a %v outage: %v", tc.outage, err)
				}
				if err := echo(2); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("the stream survived an outage longer than the linger time")
			}
			select {
			case <-sess.CloseChan():
			case <-time.After(5 * time.Second):
				t.Fatal("the session did not end after the linger time")
			}
			// And the bridge forgot it.
			deadline := time.Now().Add(5 * time.Second)
			for b.server.sessionCount() > 0 {
				if time.Now().After(deadline) {
					t.Fatal("the bridge still holds the session after its linger time")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// TestSessionIDBoundToClient: a carrier naming a session that is not its
// own (unknown, or another short id's) joins nothing.
func TestSessionIDBoundToClient(t *testing.T) {
	other, _ := keys.NewShortID(nil)
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) {
		c.ShortIDs = append(c.ShortIDs, other)
	})
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	cfg := b.clientConfig()
	cfg.ShortID = other
	thief := &Session{cfg: *cfg, id: sess.id, conn: newSessionConn(true, time.Minute, testLogger(t))}
	defer thief.conn.Close()
	if _, _, _, err := thief.dialCarrier(context.Background(), false, nil); !errors.Is(err, errSessionUnknown) {
		t.Fatalf("another user naming this session: err = %v, want errSessionUnknown", err)
	}
	thief.id = sessionID{1, 2, 3}
	thief.cfg = *b.clientConfig()
	if _, _, _, err := thief.dialCarrier(context.Background(), false, nil); !errors.Is(err, errSessionUnknown) {
		t.Fatalf("an unknown session: err = %v, want errSessionUnknown", err)
	}
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := roundTrip(st, payload(5000, 9)); err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer is a bytes.Buffer safe for a logger and a test at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestIdleSessionSleeps: a client session with nothing to do does not
// wake up ten times a second: on a phone each wake-up keeps the CPU from
// sleeping, and a proxy that runs all day behind Telegram or WhatsApp is
// idle most of the time. It wakes for the next write or frame instead:
// a stream opened on a carrier that froze while the session slept is
// still carried, on a new carrier, within the freeze detector's time.
func TestIdleSessionSleeps(t *testing.T) {
	t.Parallel()
	b, r := relayedBridge(t, transporttest.RelayOptions{}, func(c *ServerConfig) {
		// The test face ends idle connections after 2 s, and the
		// client then dials anew: not the idleness measured here.
		c.Site.Server.IdleTimeout = time.Minute
	})
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	ctx, sess := dialForAMinute(t, cfg)
	if err := transfer(ctx, sess, 'D', 64<<10, 1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Past the second after which an idle session lets its buffers go.
	time.Sleep(1500 * time.Millisecond)
	b.server.mu.Lock()
	if len(b.server.sessions) != 1 {
		t.Fatalf("the bridge has %d sessions, want 1", len(b.server.sessions))
	}
	var bridge *sessionConn
	for _, ss := range b.server.sessions {
		bridge = ss.conn
	}
	b.server.mu.Unlock()
	client0, bridge0 := sess.conn.checks.Load(), bridge.checks.Load()
	time.Sleep(3 * time.Second)
	client, bridgeWakes := sess.conn.checks.Load()-client0, bridge.checks.Load()-bridge0
	t.Logf("wake-ups in 3 s of idle: client %d, bridge %d", client, bridgeWakes)
	if client > 2 || bridgeWakes > 2 {
		t.Errorf("in 3 s of idle, the client's manager woke %d times and the bridge's check %d, want at most 2 each", client, bridgeWakes)
	}

	// The carrier freezes while the session sleeps; a new stream still
	// goes through, on a new carrier.
	r.SetOutage(true)
	r.SetOutage(false)
	start := time.Now()
	if err := transfer(ctx, sess, 'D', 64<<10, 2, 10*time.Second); err != nil {
		t.Fatalf("a stream after the carrier froze while the session slept: %v", err)
	}
	t.Logf("carried %v after the freeze, over %d connections", time.Since(start).Round(time.Millisecond), len(r.Stats()))
	if n := len(r.Stats()); n != 2 {
		t.Errorf("%d connections, want 2: the one that froze and the next", n)
	}
}

// TestPushToASleepingSessionSurvivesAFreeze: data the bridge pushes on a
// stream that has long been idle (a message for a chat app) wakes the
// client's sleeping manager, so that when the carrier freezes during the
// push, the freeze is found in the detector's time (a PING after 1 s of
// silence, 1 s for its answer), not the sleep's. Before the data woke it,
// the push waited for the manager's 5-second safety wake-up.
func TestPushToASleepingSessionSurvivesAFreeze(t *testing.T) {
	t.Parallel()
	// Past activeFor with nothing moving: the manager sleeps.
	pushAcrossAFreeze(t, activeFor+1500*time.Millisecond)
}

// TestPushInTheWindowSurvivesAFreeze: a push that comes while the client's
// PINGs have backed off (TestActiveWindowPingsBackOff), and freezes on
// the way, is found in the detector's time too: its first bytes moved,
// so the next PING goes after 1 s of silence again, not the gap.
func TestPushInTheWindowSurvivesAFreeze(t *testing.T) {
	t.Parallel()
	// Two PINGs answered (at 1 and 3 s): the next would wait 4 s.
	pushAcrossAFreeze(t, 4500*time.Millisecond)
}

// pushAcrossAFreeze opens a stream through a relay that freezes its first
// connection partway through a 48 KiB push, leaves the stream idle for
// idle, then has the bridge push, and checks the push arrives whole
// within 4 s (the freeze detector's 2 s and a new carrier).
func pushAcrossAFreeze(t *testing.T, idle time.Duration) {
	const push = 48 << 10
	trigger := make(chan struct{})
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if err := st.Reply(StatusOK); err != nil {
			return
		}
		var cmd [1]byte
		if _, err := st.Read(cmd[:]); err != nil {
			return
		}
		select {
		case <-trigger:
		case <-st.SessionDone():
			return
		}
		st.Write(payload(push, 7))
		io.Copy(io.Discard, st)
	}, func(c *ServerConfig) {
		c.Site.Server.IdleTimeout = time.Minute // no idle close while the stream sleeps
	})
	// The first carrier freezes partway through the push.
	r, err := transporttest.NewRelay(b.addr, transporttest.RelayOptions{FreezeDown: 40000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	_, sess := dialForAMinute(t, cfg)
	st := openStream(t, sess)
	if _, err := st.Write([]byte{'W'}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(idle)
	start := time.Now()
	close(trigger)
	st.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, push)
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatalf("the push after %v idle: %v", idle, err)
	}
	took := time.Since(start)
	t.Logf("48 KiB pushed after %v idle in %v, over %d connections", idle, took.Round(time.Millisecond), len(r.Stats()))
	if !bytes.Equal(got, payload(push, 7)) {
		t.Fatal("the push arrived damaged")
	}
	if len(r.Stats()) < 2 {
		t.Fatal("the first carrier did not freeze: the test proves nothing")
	}
	if took > 4*time.Second {
		t.Errorf("the push took %v across a freeze, want under 4 s (the freeze detector's 2 s and a new carrier)", took)
	}
}

// TestFreezesBeforeDataTeachNoBudget: carriers that go silent before any
// DATA came down them (a path that cuts connections at random moments
// caught them just after their handshakes) do not teach the client a
// budget. Before, two such freezes, both at about a handshake's bytes,
// taught the smallest budget there is (8 KiB), for the rest of the
// session: every carrier then carried a few KiB before the next had to
// be opened, and TestCarriersCutAtRandom once stalled on it.
func TestFreezesBeforeDataTeachNoBudget(t *testing.T) {
	t.Parallel()
	// The bridge takes the stream and never answers it: nothing but
	// acknowledgements and pongs comes down.
	b := startBridge(t, newSiteFace(t), func(st *Stream) { io.Copy(io.Discard, st) }, nil)
	r, err := transporttest.NewRelay(b.addr, transporttest.RelayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	var logs lockedBuffer
	cfg.Logger = newTextLogger(&logs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("client log:\n%s", logs.String())
		}
	})
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.WaitProven(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The stream's request leaves on a carrier that the path has just
	// silenced: the first freeze.
	r.SetOutage(true)
	st, err := sess.OpenStreamFast(Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	waitUntil(t, "the first carrier frozen", func() bool { return strings.Contains(logs.String(), "carrier ended") })
	// The path comes back; the next carrier carries the request, and
	// the path silences it in turn: the second freeze.
	r.SetOutage(false)
	waitUntil(t, "a second carrier", func() bool { return strings.Contains(logs.String(), "carrier joined") })
	time.Sleep(200 * time.Millisecond) // the request and its acknowledgement
	r.SetOutage(true)
	waitUntil(t, "the second carrier frozen", func() bool { return strings.Count(logs.String(), "carrier ended") >= 2 })
	if got := sess.Budget(); got != 0 {
		t.Fatalf("learned a budget of %d bytes from carriers that froze before any DATA", got)
	}
}

// TestActiveWindowPingsBackOff: after a reply, with its stream left open
// (a chat app's connection after a message), the freeze detector makes
// sure for activeFor that the carrier is still there, as a reply may be
// on its way; but once its PINGs are answered, it asks less and less
// often. Each PING and its answer wake the phone's radio and both ends:
// before, one went every second of the window.
func TestActiveWindowPingsBackOff(t *testing.T) {
	t.Parallel()
	b, r := relayedBridge(t, transporttest.RelayOptions{}, func(c *ServerConfig) {
		c.Site.Server.IdleTimeout = time.Minute // no idle close in the window
	})
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	_, sess := dialForAMinute(t, cfg)
	st := openStream(t, sess)
	var hdr [17]byte
	hdr[0] = 'D'
	binary.BigEndian.PutUint64(hdr[1:], 4096)
	if _, err := st.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	// The reply's ACKs go first.
	time.Sleep(300 * time.Millisecond)
	moved := func() (up, down int64) {
		for _, c := range r.Stats() {
			up, down = up+c.Up, down+c.Down
		}
		return up, down
	}
	up0, down0 := moved()
	time.Sleep(activeFor)
	up, down := moved()
	up, down = up-up0, down-down0
	// A PING, and its answer, is one record of 39 bytes (an h2 PING's
	// 17 and a record's 22).
	const record = 39
	t.Logf("in the %v after a reply: %d bytes up, %d down (%d and %d PING-sized records)", activeFor, up, down, up/record, down/record)
	if up > 4*record || down > 4*record {
		t.Errorf("%d bytes up and %d down in the %v after a reply, with nothing to carry: more than 4 PINGs and their answers", up, down, activeFor)
	}
}
