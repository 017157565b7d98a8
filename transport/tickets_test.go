//go:build linux

package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// helloRecorder is a ClientConfig.Dial that keeps the ClientHello each
// connection sends, as the bridge (and a censor) reads it.
type helloRecorder struct {
	mu     sync.Mutex
	hellos []*hello.ClientHello
	raw    [][]byte // the bytes of each hello's first write, as sent
}

func (h *helloRecorder) dial(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &firstWrite{Conn: c, rec: h}, nil
}

type firstWrite struct {
	net.Conn
	rec  *helloRecorder
	once sync.Once
}

func (f *firstWrite) Write(p []byte) (int, error) {
	f.once.Do(func() {
		_, msg, err := hello.ReadClientHello(bytes.NewReader(p))
		if err != nil {
			return
		}
		if ch, err := hello.Parse(bytes.Clone(msg)); err == nil {
			f.rec.mu.Lock()
			f.rec.hellos = append(f.rec.hellos, ch)
			f.rec.raw = append(f.rec.raw, bytes.Clone(p))
			f.rec.mu.Unlock()
		}
	})
	return f.Conn.Write(p)
}

// pskIdentity returns the data of a hello's pre_shared_key, nil if none.
func pskIdentity(ch *hello.ClientHello) []byte {
	for _, e := range ch.Extensions {
		if e.Type == 0x0029 {
			return e.Data
		}
	}
	return nil
}

// downloadThroughFreezes downloads size bytes through a bridge behind a
// relay that freezes every connection after 16 KB, on a session with a
// 14 KiB budget whose hellos rec records. The session closes with t.
func downloadThroughFreezes(t *testing.T, size int) (*testBridge, *Session, *helloRecorder) {
	t.Helper()
	b, r := relayedBridge(t, transporttest.RelayOptions{FreezeDown: freezeAt}, nil)
	rec := &helloRecorder{}
	cfg := b.clientConfig()
	cfg.Address = r.Addr()
	cfg.Budget = 14 << 10
	cfg.Dial = rec.dial
	cfg.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sess, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	if err := transfer(ctx, sess, 'D', size, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return b, sess, rec
}

// TestLaterCarriersResume: on a path that freezes every connection after
// 16 KB, a session's carriers after the first resume the TLS session of
// an earlier one, as a browser coming back to a site does. Each ticket is
// offered once (Chrome never offers a TLS 1.3 ticket twice), the first
// carrier offers none, and the tag still authenticates a hello with
// binders. (What resumption leaves of a carrier's budget for data:
// BenchmarkBudget.)
func TestLaterCarriersResume(t *testing.T) {
	t.Parallel()
	_, sess, rec := downloadThroughFreezes(t, 256<<10)

	// In this order: a carrier dialled since may have sent its hello
	// but not yet finished its handshake, never the other way round.
	resumed := sess.resumed.Load()
	rec.mu.Lock()
	hellos := rec.hellos
	rec.mu.Unlock()
	if len(hellos) < 4 {
		t.Fatalf("%d carriers for 256 KiB through 16 KB freezes", len(hellos))
	}
	if pskIdentity(hellos[0]) != nil {
		t.Error("the first carrier offered a ticket: it must send a full handshake (its bound certificate lets it send before the proof)")
	}
	seen := map[string]bool{}
	offered := 0
	for i, ch := range hellos {
		id := pskIdentity(ch)
		if id == nil {
			continue
		}
		offered++
		// The identities: everything before the binders.
		key := string(id[:len(id)-(len(ch.Raw)-ch.BindersOffset)])
		if seen[key] {
			t.Errorf("carrier %d offered a ticket offered before", i)
		}
		seen[key] = true
	}
	t.Logf("%d carriers, %d offered a ticket, %d resumed", len(hellos), offered, resumed)
	// Carriers dialled side by side may find no ticket left; most find
	// one, and the bridge resumes every one offered, but for the dials
	// still in flight.
	if offered < len(hellos)/2 || resumed > int64(offered) || int64(offered)-resumed > maxHandshakeBurst {
		t.Fatalf("%d of %d carriers offered a ticket and %d resumed: later carriers should resume", offered, len(hellos), resumed)
	}
	// The session's carriers say so (its debug log's "carrier joined").
	waitFor(t, sess.conn, "a carrier that resumed", func() bool {
		for _, c := range sess.conn.carriers {
			if c.resumed {
				return true
			}
		}
		return false
	})

}

// TestTicketsOfferedOnceAndKeptOnlyWhenProven: a carrier takes the
// newest ticket and nobody gets it again; the tickets a carrier receives
// reach the session only when it keeps them (its proof checked out), so
// a website a censor sent a carrier to cannot plant one; the session
// keeps at most maxTickets.
func TestTicketsOfferedOnceAndKeptOnlyWhenProven(t *testing.T) {
	var session ticketCache
	mk := func() *utls.ClientSessionState { return &utls.ClientSessionState{} }
	a := &carrierTickets{session: &session, resume: true}
	x, y := mk(), mk()
	a.Put("", x)
	a.Put("", nil) // utls forgetting an expired ticket
	if _, ok := a.Get(""); ok || session.len() != 0 {
		t.Fatal("a ticket reached the session before its carrier was proven")
	}
	a.keep()
	b := &carrierTickets{session: &session, resume: true}
	b.Put("", y)
	b.keep()
	c := &carrierTickets{session: &session, resume: true}
	if got, ok := c.Get(""); !ok || got != y {
		t.Fatal("the newest ticket was not offered")
	}
	if got, ok := c.Get(""); !ok || got != x {
		t.Fatal("the older ticket was not offered next")
	}
	if _, ok := c.Get(""); ok {
		t.Fatal("a ticket was offered twice")
	}
	first := &carrierTickets{session: &session, resume: false}
	first.Put("", mk())
	first.keep()
	if _, ok := first.Get(""); ok {
		t.Fatal("a carrier that may not resume was offered a ticket")
	}
	for range 2 * maxTickets {
		d := &carrierTickets{session: &session}
		d.Put("", mk())
		d.keep()
	}
	if n := session.len(); n != maxTickets {
		t.Fatalf("the session keeps %d tickets, want at most %d", n, maxTickets)
	}
}

// TestReplayedResumingHelloResumesAtTheFace: a censor that replays a
// carrier's resuming hello meets the face, which must answer it as the
// one website it is: a website seals every ticket under one key set, so
// it resumes a replayed hello (its binders are valid) and says so in its
// ServerHello, which a censor reads in the clear. The face and the
// tunnels once had key sets of their own, and the face refused every
// client's ticket: an answer no website gives.
func TestReplayedResumingHelloResumesAtTheFace(t *testing.T) {
	t.Parallel()
	b, _, rec := downloadThroughFreezes(t, 64<<10)
	var replay []byte
	rec.mu.Lock()
	for i, ch := range rec.hellos {
		if pskIdentity(ch) != nil {
			replay = rec.raw[i]
			break
		}
	}
	rec.mu.Unlock()
	if replay == nil {
		t.Fatal("no carrier offered a ticket")
	}
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(replay); err != nil {
		t.Fatal(err)
	}
	exts, err := readServerHelloExtensions(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := exts[0x0029]; !ok {
		t.Fatal("the face answered a replayed resuming hello with a full handshake: it cannot open the tickets the bridge gives clients, which no website does")
	}
}

// readServerHelloExtensions reads the ServerHello off c (one handshake
// record) and returns its extensions by type.
func readServerHelloExtensions(c net.Conn) (map[uint16][]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != 0x16 {
		return nil, fmt.Errorf("record type %d, want a handshake", hdr[0])
	}
	rec := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
	if _, err := io.ReadFull(c, rec); err != nil {
		return nil, err
	}
	_, _, exts, ok := serverHello(rec)
	if !ok {
		return nil, errors.New("malformed ServerHello")
	}
	return exts, nil
}

// TestCapturedHelloCarriersFullHandshake: a client sending a captured
// hello (-hello-capture) whose capture has no pre_shared_key, a first
// visit's, makes full handshakes on every carrier, tickets or not. utls
// panicked instead, taking the client down, on the first carrier that had
// a ticket to offer (CI caught it once, in the transport tests).
func TestCapturedHelloCarriersFullHandshake(t *testing.T) {
	h, err := LoadCapturedHello(captureFiles(t, "chromium")[0])
	if err != nil {
		t.Fatal(err)
	}
	useCaptured(t, "chrome", h)
	_, sess, rec := downloadThroughFreezes(t, 64<<10)
	rec.mu.Lock()
	hellos := rec.hellos
	rec.mu.Unlock()
	if len(hellos) < 2 {
		t.Fatalf("%d carriers for 64 KiB through 16 KB freezes: nothing had a ticket to offer (the test proves nothing)", len(hellos))
	}
	for i, ch := range hellos {
		if pskIdentity(ch) != nil {
			t.Errorf("carrier %d's captured hello offered a ticket", i)
		}
	}
	if n := sess.resumed.Load(); n != 0 {
		t.Errorf("%d carriers resumed with a captured hello that has no pre_shared_key", n)
	}
}
