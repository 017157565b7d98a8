package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/ratelimit"
)

// TestCloseIsPrompt: Close with 100 silent connections, 100 that sent
// half a ClientHello (opened after the sessions: from one address, they
// would hold its pending-handshake slots) and 100 live sessions each in
// the middle of a transfer returns promptly, and closes the pending
// connections (TestMain checks that no goroutine is left). Promptly: within
// 5 s, far below every timeout Close must not wait out (a handshake's 20 s,
// a request's 30 s, a session's 2-minute linger). It takes 0.02 s alone;
// under -race on a slow 2-core VM, telling 100 busy clients took 0.4-1.0 s
// alone and 2.05 s beside every other package's tests.
func TestCloseIsPrompt(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) {
		c.Logger = nil
		c.RateLimiter = ratelimit.New(1000, 1000, 16) // 100 sessions at once from one user
	})
	var sessions []*Session
	var streams []net.Conn
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	for range 100 {
		// On a loaded machine a session's carriers may be redialled
		// meanwhile, and a newcomer from the same address may then evict
		// a dial still silent (TestSilentFlood...): try again, after a
		// pause that lets the machine catch up (CI, with every package's
		// tests under -race at once, saw three dials in a row cut so).
		// Dial returns before the bridge's proof is in (early data), so
		// such a cut may show only at the first stream ("reading the
		// bridge's proof: EOF", once in CI): the stream is part of the
		// try.
		var s *Session
		var st net.Conn
		var err error
		for try := 0; try < 8; try++ {
			if s, err = Dial(context.Background(), b.clientConfig()); err == nil {
				if st, err = s.OpenStream(context.Background(), Request{Command: CmdDefault}); err == nil {
					break
				}
				s.Close()
			}
			time.Sleep(time.Duration(try+1) * 100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
		streams = append(streams, st)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	hello := recordHello(t, b.clientConfig())
	for i := range 200 {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 1 {
			c.Write(hello[:len(hello)/2])
		}
	}
	// The transfers start last, once every session and probe is in
	// place. A hundred busy sessions keep rotating carriers, and on two
	// cores under -race their handshakes, all from this one address,
	// crowded out the later dials (CI: eight tries in a row reset, after
	// 123 s), and each of the probes' connects then waited 0.6 s for the
	// scheduler (two minutes for 200).
	for _, st := range streams {
		// Keep the echo busy both ways until Close. (An app that stops
		// reading fills the pipe back to the bridge, and then the bridge's
		// CLOSE cannot reach it: that client learns of the end only when
		// it next writes, and keeps the session for its linger time.)
		// (Busy, not flat out: a hundred sessions echoing at full speed
		// on two cores under -race starve everything, the bridge's
		// handshakes included.)
		go io.Copy(io.Discard, st)
		go func() {
			buf := make([]byte, 4<<10)
			for {
				if _, err := st.Write(buf); err != nil {
					st.Close()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the transfers get going
	start := time.Now()
	b.server.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v", d)
	}
	// The probes' connections were closed too.
	for _, c := range conns[:10] {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("a pending connection is still open after Close")
			}
		}
	}
}

// TestCloseTellsClients: a bridge that shuts down tells its clients, so
// their sessions end at once instead of waiting out the linger time.
// (Under the load of TestCloseIsPrompt, a client whose carrier was being
// replaced, or whose app stopped reading, can miss the message: it then
// learns when its next dial fails, after its linger time.)
func TestCloseTellsClients(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	var sessions []*Session
	for range 3 {
		s, err := Dial(context.Background(), b.clientConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sessions = append(sessions, s)
		st, err := s.OpenStream(context.Background(), Request{Command: CmdDefault})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := roundTripOnce(st); err != nil {
			t.Fatal(err)
		}
	}
	b.server.Close()
	for i, s := range sessions {
		select {
		case <-s.CloseChan():
		case <-time.After(5 * time.Second):
			t.Fatalf("client session %d still open after the bridge closed", i)
		}
		if _, err := s.OpenStreamFast(Request{Command: CmdDefault}); !errors.Is(err, ErrSessionEnded) {
			t.Errorf("OpenStreamFast on client session %d, ended by the bridge: %v; want ErrSessionEnded", i, err)
		}
	}
}

// TestOpenOnClosedSession: a stream asked of a session closed here fails
// saying so, and what to do, not with smux's "io: read/write on closed
// pipe".
func TestOpenOnClosedSession(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	s, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = s.OpenStream(context.Background(), Request{Command: CmdDefault})
	if !errors.Is(err, ErrSessionEnded) || !errors.Is(err, ErrClosed) {
		t.Fatalf("OpenStream on a closed session: %v; want ErrSessionEnded and ErrClosed", err)
	}
	if strings.Contains(err.Error(), "closed pipe") {
		t.Errorf("OpenStream on a closed session: %q speaks of a pipe", err)
	}
}

// roundTripOnce echoes a few bytes through st.
func roundTripOnce(st net.Conn) error {
	if _, err := st.Write([]byte("ping")); err != nil {
		return err
	}
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.ReadFull(st, make([]byte, 4))
	st.SetReadDeadline(time.Time{})
	return err
}

// TestClientCloseEndsItsDial proves that closing a Client while it dials
// (mirage-client does when its proxy cannot start) makes the callers
// waiting for the session learn that the client was closed, not that a
// dial failed: mirage-client logs the latter as a bridge it cannot use.
// Before, they got the dial's cancellation.
func TestClientCloseEndsItsDial(t *testing.T) {
	// A "bridge" that accepts and never answers: the dial waits in its
	// handshake until Close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	cfg := b.clientConfig()
	cfg.Address = ln.Addr().String()
	c, err := NewClient(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := c.Session(context.Background())
		got <- err
	}()
	select {
	case conn := <-accepted:
		defer conn.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the client did not dial")
	}
	c.Close()
	select {
	case err := <-got:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Session during Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the dial")
	}
}
