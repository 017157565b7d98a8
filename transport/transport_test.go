package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
)

// faces returns the two faces for table-driven tests. The cover face
// borrows a plain HTTPS site started for the test.
func faces(t *testing.T) map[string]func() any {
	return map[string]func() any{
		"site":  func() any { return newSiteFace(t) },
		"cover": func() any { return &CoverFace{Address: startPlainSite(t)} },
	}
}

// TestRoundTrip proves that streams carry data intact both ways through
// either face: 100 streams in parallel with hashed payloads, one of 64 MiB,
// all on one shared session.
func TestRoundTrip(t *testing.T) {
	for name, face := range faces(t) {
		t.Run(name, func(t *testing.T) {
			b := startBridge(t, face(), echoHandler, nil)
			client, err := NewClient(*b.clientConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			const streams = 100
			big := 64 << 20
			if testing.Short() {
				big = 4 << 20
			}
			var wg sync.WaitGroup
			errs := make(chan error, streams)
			for i := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					n := 1 + i*997
					if i == 0 {
						n = big
					}
					st, err := client.OpenStream(ctx, Request{Command: CmdDefault})
					if err != nil {
						errs <- err
						return
					}
					defer st.Close()
					if err := roundTrip(st, payload(n, uint64(i))); err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// TestRequestAndStatus proves the handler sees the request the client
// sent, and the client gets the handler's status before any data: a
// refusal is a *StatusError at OpenStream, not a reset later.
func TestRequestAndStatus(t *testing.T) {
	got := make(chan Request, 10)
	handler := func(st *Stream) {
		got <- st.Request
		if st.Request.Command == CmdConnect && st.Request.Addr.Port == 9 {
			st.Reply(StatusConnectionRefused)
			return
		}
		st.Reply(StatusOK)
		io.WriteString(st, "hi")
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ctx := context.Background()
	for _, req := range []Request{
		{Command: CmdConnect, Addr: Addr{Host: "example.org", Port: 443}},
		{Command: CmdConnect, Addr: Addr{Host: "192.0.2.7", Port: 80}},
		{Command: CmdConnect, Addr: Addr{Host: "2001:db8::1", Port: 8080}},
		{Command: CmdDefault},
		{Command: CmdUDP},
	} {
		st, err := sess.OpenStream(ctx, req)
		if err != nil {
			t.Fatalf("%v: %v", req, err)
		}
		if r := <-got; r != req {
			t.Errorf("server saw %v, client sent %v", r, req)
		}
		data, _ := io.ReadAll(st)
		if string(data) != "hi" {
			t.Errorf("%v: read %q", req, data)
		}
		st.Close()
	}
	_, err = sess.OpenStream(ctx, Request{Command: CmdConnect, Addr: Addr{Host: "127.0.0.1", Port: 9}})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != StatusConnectionRefused {
		t.Fatalf("refused request: err = %v, want StatusError(connection refused)", err)
	}
	<-got
}

// TestWrongKeyFailsClearly proves that a client holding the wrong key (or
// a wrong short id, or a far-off clock) gets ErrNotBridge, and quickly,
// instead of hanging: the bridge shows it the website.
func TestWrongKeyFailsClearly(t *testing.T) {
	for name, face := range faces(t) {
		t.Run(name, func(t *testing.T) {
			b := startBridge(t, face(), echoHandler, nil)
			other, _ := keys.GenerateKey(nil)
			for what, mutate := range map[string]func(*ClientConfig){
				"key":   func(c *ClientConfig) { c.PublicKey = other.Public() },
				"id":    func(c *ClientConfig) { c.ShortID = keys.ShortID{1} },
				"clock": func(c *ClientConfig) { c.Now = func() time.Time { return time.Now().Add(-10 * time.Minute) } },
			} {
				cfg := b.clientConfig()
				cfg.HandshakeTimeout = 4 * time.Second
				mutate(cfg)
				start := time.Now()
				_, err := Dial(context.Background(), cfg)
				if !errors.Is(err, ErrNotBridge) {
					t.Errorf("wrong %s: err = %v, want ErrNotBridge", what, err)
				}
				if d := time.Since(start); d > cfg.HandshakeTimeout+time.Second {
					t.Errorf("wrong %s: took %v, over the handshake timeout", what, d)
				}
			}
		})
	}
}

// TestReachingTheRealSite proves a client pointed at an ordinary HTTPS
// website (not a bridge) gets ErrNotBridge, not a hang or a tunnel.
func TestReachingTheRealSite(t *testing.T) {
	addr := startPlainSite(t)
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	cfg := b.clientConfig()
	cfg.Address = addr
	cfg.HandshakeTimeout = 4 * time.Second
	if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrNotBridge) {
		t.Fatalf("err = %v, want ErrNotBridge", err)
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestOneSessionManyStreams proves that many concurrent stream opens on a
// fresh Client cause exactly one connection to the bridge.
func TestOneSessionManyStreams(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	// Put a counting listener in front: a second server on the same config.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	cl := &countingListener{Listener: ln}
	go b.server.Serve(cl)
	cfg := b.clientConfig()
	cfg.Address = ln.Addr().String()
	client, _ := NewClient(*cfg)
	defer client.Close()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := client.OpenStream(context.Background(), Request{Command: CmdDefault})
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			if err := roundTrip(st, payload(1000, uint64(i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := cl.n.Load(); n != 1 {
		t.Fatalf("50 concurrent opens made %d connections, want 1", n)
	}
}

// TestRedialAfterBridgeRestart proves that after the bridge goes away and
// comes back on the same address, new streams succeed on the same Client.
func TestRedialAfterBridgeRestart(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	client, _ := NewClient(*b.clientConfig())
	defer client.Close()
	open := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := client.OpenStream(ctx, Request{Command: CmdDefault})
		if err != nil {
			return err
		}
		defer st.Close()
		return roundTrip(st, payload(5000, 1))
	}
	if err := open(); err != nil {
		t.Fatal(err)
	}
	b.server.Close()
	// A new server with the same key, on the same address.
	cfg := b.server.cfg
	cfg.ReplayFilter = nil
	srv2, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	var ln net.Listener
	for range 50 {
		if ln, err = net.Listen("tcp", b.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	go srv2.Serve(ln)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := open()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stream 15 s after the restart: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSiteFaceServesHTTP proves that a browser-like visitor (Go's HTTP
// client over TLS, HTTP/1.1 and HTTP/2) gets from the bridge exactly what it
// gets from the plain website.
func TestSiteFaceServesHTTP(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	plain := startPlainSite(t)
	for _, proto := range []string{"http/1.1", "h2"} {
		get := func(addr string) (string, string, string) {
			tr := &http.Transport{
				TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: testSNI, NextProtos: []string{proto}},
				ForceAttemptHTTP2: proto == "h2",
			}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			resp, err := c.Get("https://" + addr + "/index.html")
			if err != nil {
				t.Fatalf("%s %s: %v", proto, addr, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			cert := string(resp.TLS.PeerCertificates[0].Raw)
			return resp.Proto + " " + resp.Status + " " + resp.Header.Get("Content-Type"), string(body), cert
		}
		s1, b1, c1 := get(b.addr)
		s2, b2, c2 := get(plain)
		if s1 != s2 || c1 != c2 {
			t.Errorf("%s: bridge answered %q, plain site %q (same cert: %v)", proto, s1, s2, c1 == c2)
		}
		// The body names the Host, which carries the port: compare the rest.
		if len(b1) == 0 || stripHost(b1) != stripHost(b2) {
			t.Errorf("%s: bodies differ:\n%s\n%s", proto, b1, b2)
		}
	}
}

func stripHost(s string) string {
	i, j := len("<html><body>Hello from "), 0
	if len(s) < i {
		return s
	}
	for j = i; j < len(s) && s[j] != ','; j++ {
	}
	return s[:i] + s[j:]
}

// TestEveryFingerprintConnects proves each fp= a link may name produces a
// hello the bridge authenticates (its x25519 share found on both sides)
// and a working tunnel, through both faces.
func TestEveryFingerprintConnects(t *testing.T) {
	for name, face := range faces(t) {
		b := startBridge(t, face(), echoHandler, nil)
		for _, fp := range []string{"chrome", "firefox", "safari", "ios", "edge"} {
			t.Run(name+"/"+fp, func(t *testing.T) {
				cfg := b.clientConfig()
				cfg.Fingerprint = fp
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
				if err := roundTrip(st, payload(70000, 3)); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestSlowReplyCostsOnlyItsStream proves that a stream whose reply comes
// too late (a slow downlink, a slow destination) fails alone: the session
// and the other streams on it carry on.
func TestSlowReplyCostsOnlyItsStream(t *testing.T) {
	handler := func(st *Stream) {
		if st.Request.Command == CmdConnect {
			time.Sleep(1500 * time.Millisecond)
		}
		echoHandler(st)
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	cfg := b.clientConfig()
	cfg.RequestTimeout = 500 * time.Millisecond
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	busy, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = sess.OpenStream(context.Background(), Request{Command: CmdConnect, Addr: Addr{Host: "example.org", Port: 80}})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("slow reply: err = %v, want a timeout", err)
	}
	if sess.IsClosed() {
		t.Fatal("a late reply closed the whole session")
	}
	if err := roundTrip(busy, payload(100000, 9)); err != nil {
		t.Fatalf("the other stream broke: %v", err)
	}
}

// TestRelayEndsWithItsSession proves a relay half-closed by the client
// and waiting on a silent destination ends when the client's session goes
// away, so nothing leaks and Server.Close returns.
func TestRelayEndsWithItsSession(t *testing.T) {
	dest, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dest.Close()
	go func() {
		for {
			c, err := dest.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }() // reads, never answers
		}
	}()
	relayed := make(chan struct{})
	handler := func(st *Stream) {
		c, err := net.Dial("tcp", dest.Addr().String())
		if err != nil {
			st.Reply(StatusGeneralFailure)
			return
		}
		defer c.Close()
		st.Reply(StatusOK)
		Relay(st, c)
		close(relayed)
	}
	b := startBridge(t, newSiteFace(t), handler, nil)
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	st.(interface{ CloseWrite() error }).CloseWrite()
	time.Sleep(100 * time.Millisecond)
	sess.Close()
	select {
	case <-relayed:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay outlived its session by 5 s")
	}
	closed := make(chan struct{})
	go func() { b.server.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Server.Close hung")
	}
}

// TestTagFromBeforeStartRefused proves a bridge refuses tags made before
// it started, even within the clock window: its replay filter is new, so
// a hello recorded before a restart must not authenticate after it.
func TestTagFromBeforeStartRefused(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	cfg := b.clientConfig()
	cfg.HandshakeTimeout = 3 * time.Second
	cfg.Now = func() time.Time { return time.Now().Add(-30 * time.Second) }
	if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrNotBridge) {
		t.Fatalf("tag from before the start: err = %v, want ErrNotBridge", err)
	}
	cfg.Now = nil
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("a current tag: %v", err)
	}
	sess.Close()
}

// TestIdleSessionClosedAndRedialed proves a bridge with IdleTimeout closes
// a session that has no stream open, and that the client's next stream
// simply gets a new session. Nothing in it hangs on a sleep: each step
// waits for what it checks (a busy spell measured on the clock, a session
// closed by the bridge), so a slow machine makes it slower, not wrong.
func TestIdleSessionClosedAndRedialed(t *testing.T) {
	const idle = 300 * time.Millisecond
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.IdleTimeout = idle })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, _ := NewClient(*b.clientConfig())
	defer client.Close()
	open := func() {
		t.Helper()
		openAndEcho(t, ctx, client, 4)
	}
	waitClosed := func(s *Session, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !s.IsClosed(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	open()
	first, _ := client.Session(ctx)
	// Short streams one after another, for three idle timeouts by the
	// clock, keep it too: the session is busy.
	for start := time.Now(); time.Since(start) < 3*idle; {
		open()
	}
	if s, _ := client.Session(ctx); s != first {
		t.Fatal("a busy session of short streams was closed as idle")
	}
	// A stream held open keeps the session, however long. The clock is
	// a second session, made after the stream opened and idle from the
	// start: once the bridge has closed it as idle, the held session's
	// idle time has run out too, had the open stream not counted.
	st, err := client.OpenStream(ctx, Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	witness, _ := NewClient(*b.clientConfig())
	defer witness.Close()
	ws, err := witness.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(ws, "the bridge did not close a session with no stream")
	st.SetDeadline(time.Now().Add(10 * time.Second))
	if err := roundTrip(st, payload(500, 5)); err != nil || first.IsClosed() {
		t.Fatalf("a stream open past the idle timeout was cut: %v", err)
	}
	st.Close()
	waitClosed(first, "the idle session was not closed")
	open()
	if second, _ := client.Session(ctx); second == first {
		t.Fatal("the client did not make a new session")
	}
}

// TestAbandonedStreamEnds proves a stream the client closes while the
// bridge is still sending does not hold the bridge's handler (and its
// destination socket) for the rest of the session: smux has no reset, so
// the bridge gives up once the client has taken nothing for the stall
// timeout.
func TestAbandonedStreamEnds(t *testing.T) {
	ended := make(chan struct{})
	handler := func(st *Stream) {
		defer close(ended)
		st.Reply(StatusOK)
		chunk := make([]byte, 32<<10)
		for { // an endless download
			if _, err := st.Write(chunk); err != nil {
				return
			}
		}
	}
	b := startBridge(t, newSiteFace(t), handler, func(c *ServerConfig) { c.writeStallTimeout = 300 * time.Millisecond })
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(st, make([]byte, 100000))
	st.Close() // the user cancels the download
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the bridge kept writing to an abandoned stream")
	}
	if sess.IsClosed() {
		t.Fatal("abandoning one stream closed the session")
	}
}

// TestStreamCapRefusesWithoutStalling proves that past the per-session
// stream limit new streams are refused at once with a status, while the
// open ones keep working.
func TestStreamCapRefusesWithoutStalling(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.maxStreamsPerSession = 2 })
	sess, err := Dial(context.Background(), b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var held []net.Conn
	for range 2 {
		st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		held = append(held, st)
	}
	_, err = sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	var se *StatusError
	if !errors.As(err, &se) {
		t.Fatalf("a stream past the limit: err = %v, want a StatusError", err)
	}
	for i, st := range held {
		if err := roundTrip(st, payload(50000, uint64(i))); err != nil {
			t.Fatalf("held stream %d: %v", i, err)
		}
	}
}
