package transport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// probeCase is one kind of visitor a censor may send to a suspected bridge.
type probeCase struct {
	name string
	data func(t *testing.T, b *testBridge) []byte
}

// genuineHello records a ClientHello from a real client of bridge b,
// optionally mutated.
func genuineHello(mutate func(*ClientConfig)) func(t *testing.T, b *testBridge) []byte {
	return func(t *testing.T, b *testBridge) []byte {
		cfg := b.clientConfig()
		if mutate != nil {
			mutate(cfg)
		}
		return recordHello(t, cfg)
	}
}

func fixedBytes(p []byte) func(*testing.T, *testBridge) []byte {
	return func(*testing.T, *testBridge) []byte { return p }
}

// goTLSHello records the ClientHello of Go's own TLS client.
func goTLSHello(t *testing.T, _ *testBridge) []byte {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		tc := tls.Client(c, &tls.Config{ServerName: testSNI, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(2 * time.Second))
		tc.Handshake()
		tc.Close()
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4096)
	n, _ := c.Read(buf)
	return buf[:n]
}

func probeCases() []probeCase {
	other, _ := keys.GenerateKey(nil)
	return []probeCase{
		{"silence", fixedBytes(nil)},
		{"random-1", fixedBytes(payload(1, 1))},
		{"random-7", fixedBytes(payload(7, 7))},
		{"random-517", fixedBytes(payload(517, 517))},
		{"random-10000", fixedBytes(payload(10000, 10000))},
		{"plain-http", fixedBytes([]byte("GET / HTTP/1.1\r\nHost: " + testSNI + "\r\n\r\n"))},
		{"lone-record-header", fixedBytes([]byte{0x16, 0x03, 0x01, 0x02, 0x00})},
		{"bad-tls-version", fixedBytes([]byte{0x16, 0x09, 0x09, 0x00, 0x05, 1, 0, 0, 1, 0})},
		{"go-tls-client", goTLSHello},
		{"truncated-hello", func(t *testing.T, b *testBridge) []byte {
			h := genuineHello(nil)(t, b)
			return h[:len(h)/2]
		}},
		{"flipped-byte-hello", func(t *testing.T, b *testBridge) []byte {
			h := bytes.Clone(genuineHello(nil)(t, b))
			h[len(h)/3] ^= 0x01
			return h
		}},
		{"flipped-tag-hello", func(t *testing.T, b *testBridge) []byte {
			h := bytes.Clone(genuineHello(nil)(t, b))
			h[5+4+2+32+1] ^= 0x80 // first byte of the session_id
			return h
		}},
		{"wrong-key-hello", genuineHello(func(c *ClientConfig) { c.PublicKey = other.Public() })},
		{"stale-timestamp-hello", genuineHello(func(c *ClientConfig) {
			c.Now = func() time.Time { return time.Now().Add(-5 * time.Minute) }
		})},
		{"replayed-hello", func(t *testing.T, b *testBridge) []byte {
			h := genuineHello(nil)(t, b)
			// The first use is genuine and accepted; the probe is the replay.
			probe(t, b.addr, h, 300*time.Millisecond)
			return h
		}},
	}
}

// TestSiteFaceProbes proves that for every kind of probe, the bridge in
// site mode answers exactly as the plain website with the same certificate,
// handler and settings does: the same bytes (for TLS, the same records),
// ending the same way.
func TestSiteFaceProbes(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	plain := startPlainSite(t)
	runProbes(t, b, plain)
}

// TestCoverFaceProbes proves the same for cover mode: the bridge answers
// every probe as the cover itself does when dialed directly.
func TestCoverFaceProbes(t *testing.T) {
	cover := startPlainSite(t)
	// The default hello timeout (20 s) is far longer than the cover's
	// (1.5 s): silence must still end when the cover ends it.
	b := startBridge(t, &CoverFace{Address: cover}, echoHandler, nil)
	runProbes(t, b, cover)
}

func runProbes(t *testing.T, b *testBridge, direct string) {
	for _, pc := range probeCases() {
		t.Run(pc.name, func(t *testing.T) {
			t.Parallel()
			data := pc.data(t, b)
			const wait = 3500 * time.Millisecond
			var viaBridge, viaDirect transporttest.ProbeResult
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); viaBridge = probe(t, b.addr, data, wait) }()
			go func() { defer wg.Done(); viaDirect = probe(t, direct, data, wait) }()
			wg.Wait()
			if got, want := viaBridge.Shape(), viaDirect.Shape(); got != want {
				t.Errorf("bridge answered\n  %s\nthe face alone answered\n  %s", got, want)
			}
		})
	}
}

// TestCoverEndings proves the cover face ends connections the way the cover
// does: a FIN as a half-close (the stranger may still send, and the cover
// still reads), a reset as a reset.
func TestCoverEndings(t *testing.T) {
	cases := map[string]func(c *net.TCPConn){
		// Answers, half-closes, then echoes what it reads after that.
		"half-close": func(c *net.TCPConn) {
			io.WriteString(c, "greeting\n")
			c.CloseWrite()
			io.Copy(io.Discard, c)
		},
		"reset": func(c *net.TCPConn) {
			buf := make([]byte, 10)
			c.Read(buf)
			c.SetLinger(0)
			c.Close()
		},
		"answer-and-close": func(c *net.TCPConn) {
			buf := make([]byte, 100)
			n, _ := c.Read(buf)
			c.Write(bytes.ToUpper(buf[:n]))
			c.Close()
		},
	}
	for name, serve := range cases {
		t.Run(name, func(t *testing.T) {
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.AcceptTCP()
					if err != nil {
						return
					}
					go func() { defer c.Close(); serve(c) }()
				}
			}()
			b := startBridge(t, &CoverFace{Address: ln.Addr().String()}, echoHandler, nil)
			data := []byte("GET / HTTP/1.0\r\n\r\n")
			viaBridge := probe(t, b.addr, data, 2*time.Second)
			direct := probe(t, ln.Addr().String(), data, 2*time.Second)
			if viaBridge.Shape() != direct.Shape() {
				t.Fatalf("bridge: %s\ndirect: %s", viaBridge.Shape(), direct.Shape())
			}
			if name == "reset" && direct.End != "reset" {
				t.Fatalf("test cover did not reset: %s", direct.Shape())
			}
		})
	}
}

// TestCoverHalfCloseKeepsReading proves that after the cover half-closes,
// bytes the stranger sends still reach the cover.
func TestCoverHalfCloseKeepsReading(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.CloseWrite()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				data, _ := io.ReadAll(c)
				if bytes.HasPrefix(data, []byte("not tls")) { // not the bridge's own probe
					got <- data
				}
			}()
		}
	}()
	b := startBridge(t, &CoverFace{Address: ln.Addr().String()}, echoHandler, nil)
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "not tls")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("waiting for the cover's FIN: %v", err)
	}
	io.WriteString(c, " and more")
	c.(*net.TCPConn).CloseWrite()
	if data := <-got; string(data) != "not tls and more" {
		t.Fatalf("cover read %q", data)
	}
}

// TestClientHelloCarriesTagOnly proves the tag rides in the 32-byte
// session_id a browser sends anyway (nothing is added to the hello), and
// that such a hello authenticates.
func TestClientHelloCarriesTagOnly(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	h := recordHello(t, b.clientConfig())
	if h[0] != 0x16 || h[5] != 0x01 {
		t.Fatalf("not a ClientHello: % x", h[:6])
	}
	if sidLen := h[5+4+2+32]; sidLen != 32 {
		t.Fatalf("session_id length %d, want 32", sidLen)
	}
	// The tag verifies against the server's key: the bridge accepts it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, err := Dial(ctx, b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
}

// slowHelloConn sends the first write (the ClientHello) in two parts with
// a pause between them, as a slow network or a careful prober would.
type slowHelloConn struct {
	net.Conn
	pause time.Duration
	done  bool
}

func (c *slowHelloConn) Write(p []byte) (int, error) {
	if c.done || len(p) < 10 {
		return c.Conn.Write(p)
	}
	c.done = true
	n, err := c.Conn.Write(p[:10])
	if err != nil {
		return n, err
	}
	time.Sleep(c.pause)
	m, err := c.Conn.Write(p[10:])
	return n + m, err
}

// TestSiteFaceIdleTimeoutAfterSlowHello proves the time the bridge spent
// reading a slow ClientHello is taken off the face's handshake timeout
// only: afterwards the site's idle timeout is its own, so a keep-alive
// connection is closed when the plain site would close it.
func TestSiteFaceIdleTimeoutAfterSlowHello(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	plain := startPlainSite(t)
	idleFor := func(addr string) time.Duration {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := tls.Client(&slowHelloConn{Conn: c, pause: time.Second},
			&tls.Config{ServerName: testSNI, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(tc, "GET / HTTP/1.1\r\nHost: "+testSNI+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		start := time.Now()
		io.Copy(io.Discard, tc) // until the server closes the idle connection
		return time.Since(start)
	}
	var viaBridge, alone time.Duration
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); viaBridge = idleFor(b.addr) }()
	go func() { defer wg.Done(); alone = idleFor(plain) }()
	wg.Wait()
	// Cutting the idle timeout short by the pause would differ by 1 s.
	if d := viaBridge - alone; d < -700*time.Millisecond || d > 700*time.Millisecond {
		t.Fatalf("idle keep-alive closed after %v by the bridge, %v by the plain site", viaBridge, alone)
	}
}

// TestSilentFloodDoesNotStallTheFace proves that connections that say
// nothing cannot make the bridge stop answering: with every classification
// slot held by silent sockets, a visitor still gets the website at once,
// as from a plain server.
func TestSilentFloodDoesNotStallTheFace(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.MaxPendingHandshakes = 2 })
	for range 4 {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Every slot is held by a silent socket (the other two met the face).
	waitPending(t, b.server, 2)
	tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: testSNI, InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	start := time.Now()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + b.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if d := time.Since(start); d > 1200*time.Millisecond { // stalled would be >= 1.5 s
		t.Fatalf("the face answered after %v behind silent sockets", d)
	}
}

// serverHelloGroup connects a genuine client to addr through a recording
// proxy and returns the key_share group of the ServerHello it got.
func serverHelloGroup(t *testing.T, cfg *ClientConfig) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	first := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			first <- nil
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", cfg.Address)
		if err != nil {
			first <- nil
			return
		}
		defer up.Close()
		go io.Copy(up, c)
		var hdr [5]byte
		io.ReadFull(up, hdr[:])
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		io.ReadFull(up, body)
		first <- body
		c.Write(append(hdr[:], body...))
		io.Copy(c, up)
	}()
	cc := *cfg
	cc.Address = ln.Addr().String()
	sess, err := Dial(context.Background(), &cc)
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
	sh := <-first
	_, _, exts, ok := serverHello(sh)
	if !ok {
		t.Fatalf("not a ServerHello: % x", sh[:min(len(sh), 8)])
	}
	if g := keyShareGroup(exts); g != 0 {
		return g
	}
	t.Fatal("ServerHello has no key_share")
	return 0
}

// TestCoverKeyExchangeMatchesCover proves that in cover mode the bridge's
// own TLS picks the key exchange group the cover picks for a Chrome hello,
// so ServerHellos from the bridge's address do not come in two sizes.
func TestCoverKeyExchangeMatchesCover(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A cover like nginx on OpenSSL 3.0: no ML-KEM, so x25519.
	cover := NewSiteServer(siteHandler, &tls.Config{
		Certificates:     []tls.Certificate{siteCertificate(t)},
		CurvePreferences: []tls.CurveID{tls.X25519},
	})
	go cover.ServeTLS(ln, "", "")
	defer cover.Close()
	b := startBridge(t, &CoverFace{Address: ln.Addr().String()}, echoHandler, nil)
	deadline := time.Now().Add(10 * time.Second)
	for b.server.coverTLS.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the bridge never learned the cover's group")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g := serverHelloGroup(t, b.clientConfig()); g != uint16(tls.X25519) {
		t.Fatalf("genuine client's ServerHello chose group %#04x; the cover chooses x25519 (0x001d)", g)
	}
}

// TestOneProberCannotFillThePool proves that silent sockets from one
// address cannot take every classification slot: a genuine client from
// another address still authenticates while they sit there.
func TestOneProberCannotFillThePool(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.MaxPendingHandshakes = 4 })
	b.server.mu.Lock()
	b.server.maxPendingPerSource = 2
	b.server.mu.Unlock()
	for range 6 { // all from 127.0.0.1
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	waitPending(t, b.server, 2)
	cfg := b.clientConfig()
	cfg.Dial = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("a client from another address: %v", err)
	}
	sess.Close()
}

// waitPending waits until srv has exactly n connections being classified,
// so a test knows its silent sockets hold their slots (and the rest have
// been accepted and evicted or turned away) before it goes on.
func waitPending(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv.mu.Lock()
		got, accepted := len(srv.pending), len(srv.conns)
		srv.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections being classified (%d tracked), want %d", got, accepted, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialFrom connects to addr from the loopback address 127.0.0.last.
func dialFrom(t *testing.T, last byte, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, last)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialGenuineFrom runs a genuine client's Dial from 127.0.0.last.
func dialGenuineFrom(t *testing.T, b *testBridge, last byte) error {
	t.Helper()
	cfg := b.clientConfig()
	cfg.Dial = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, last)}}).DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := Dial(ctx, cfg)
	if err != nil {
		return err
	}
	return sess.Close()
}

// TestSilentFloodFromOneAddress proves that silent sockets from a client's
// own address (a carrier-grade NAT, a university) cannot send that client
// to the face: with every per-source slot held by silence, a genuine client
// from the same address still gets its tunnel, and a silent socket that
// lost its slot still gets the website when it finally speaks, as from a
// plain server. (Before: the 17th connection from the address met the
// face unread, so Dial failed.)
func TestSilentFloodFromOneAddress(t *testing.T) {
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	var silent []net.Conn
	for range defaultMaxPendingPerSource {
		silent = append(silent, dialFrom(t, 2, b.addr))
	}
	waitPending(t, b.server, defaultMaxPendingPerSource)
	if err := dialGenuineFrom(t, b, 2); err != nil {
		t.Fatalf("a genuine client behind %d silent sockets from its own address: %v", len(silent), err)
	}
	// The oldest silent socket gave way; it meets the website all the same.
	tc := tls.Client(silent[0], &tls.Config{ServerName: testSNI, InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(tc, "GET / HTTP/1.1\r\nHost: "+testSNI+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("the evicted silent socket did not get the website: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the evicted silent socket got %s", resp.Status)
	}
}

// TestSilentFloodFromManyAddresses proves that silent sockets from many
// addresses, together holding every classification slot, cannot keep a
// genuine client out either, even one from an address in the flood.
// (Before: with all slots held, every newcomer met the face unread.)
func TestSilentFloodFromManyAddresses(t *testing.T) {
	const slots = 8
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.MaxPendingHandshakes = slots })
	for i := range 2 * slots { // two rounds, as a flood renewing its sockets
		dialFrom(t, byte(2+i%4), b.addr)
	}
	waitPending(t, b.server, slots)
	if err := dialGenuineFrom(t, b, 3); err != nil {
		t.Fatalf("a genuine client behind %d silent sockets from 4 addresses: %v", 2*slots, err)
	}
}

// TestEvictedSilentSocketMeetsTheCover proves that in cover mode a silent
// socket that lost its classification slot to a newer one still meets the
// cover, byte for byte, when it finally speaks: the eviction is invisible
// from outside.
func TestEvictedSilentSocketMeetsTheCover(t *testing.T) {
	cover := startPlainSite(t)
	b := startBridge(t, &CoverFace{Address: cover}, echoHandler, func(c *ServerConfig) { c.MaxPendingHandshakes = 2 })
	oldest := dialFrom(t, 2, b.addr)
	waitPending(t, b.server, 1) // oldest is the oldest
	dialFrom(t, 3, b.addr)
	// Both slots held before the third comes: else it may take the free
	// one, and .3, accepted later, evict oldest only after the check.
	waitPending(t, b.server, 2)
	dialFrom(t, 4, b.addr) // takes oldest's slot
	pendingFrom := func(last byte) int {
		b.server.mu.Lock()
		defer b.server.mu.Unlock()
		return b.server.pendingBy[netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 0, 0, last}), 32)]
	}
	for deadline := time.Now().Add(10 * time.Second); pendingFrom(4) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the newest socket never got a slot")
		}
	}
	if pendingFrom(2) != 0 {
		t.Fatal("the oldest silent socket kept its slot")
	}
	data := []byte("GET / HTTP/1.0\r\n\r\n")
	oldest.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := oldest.Write(data); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(oldest)
	want := probe(t, cover, data, 3*time.Second)
	if want.Shape() == "" || !bytes.HasPrefix(got, []byte("HTTP/1.0 400")) {
		t.Fatalf("the evicted socket got %q; the cover answers %s", got, want.Shape())
	}
}
