package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"github.com/mirage-pt/mirage/transport/keys"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// chromiumVisits are the HTTP/2 openings measured between Chromium 156 and
// real servers (testdata/h2-openings).
type chromiumVisit struct {
	Face      string `json:"face"`
	Authority string `json:"authority"`
	Client    []int  `json:"client"`
	Server    []int  `json:"server"`
}

func chromiumVisits(t *testing.T) []chromiumVisit {
	t.Helper()
	b, err := os.ReadFile("testdata/h2-openings/chromium-156.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Visits []chromiumVisit }
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f.Visits
}

// near reports whether two record length lists are equal but for the
// records listed in loose, which may differ by up to slack bytes (a
// response's HEADERS carry a date and a length that HPACK codes in a
// byte or two more or less).
func near(got, want []int, loose map[int]bool, slack int) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		d := got[i] - want[i]
		if d != 0 && (!loose[i] || d < -slack || d > slack) {
			return false
		}
	}
	return true
}

// alike reports whether two openings (plaintext lengths) of Go's HTTP/2 server are the same
// but for flushes: Go writes SETTINGS at once, and the rest in as many
// records as its flushes make (WINDOW_UPDATE, the ACK and the HEADERS
// share one or not, by timing, as measured with Chromium too), so the
// same first record and the same bytes after it, but for a byte or two of
// the HEADERS' date and length.
func alike(a, b []int) bool {
	return len(a) > 0 && len(b) > 0 && a[0] == b[0] && sameBytes(a[1:], b[1:]) <= 2
}

// sameBytes returns how far apart the sums of two lists of plaintext
// lengths are.
func sameBytes(a, b []int) int {
	d := 0
	for _, n := range a {
		d += n
	}
	for _, n := range b {
		d -= n
	}
	return max(d, -d)
}

func plus(lengths []int, k int) []int {
	out := make([]int, len(lengths))
	for i, n := range lengths {
		out[i] = n + k
	}
	return out
}

// startGo404 runs a stock Go HTTPS server with no pages: what Chromium
// was measured against.
func startGo404(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := SelfSignedCertificate([]string{"example.test"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewSiteServer(http.NewServeMux(), &tls.Config{Certificates: []tls.Certificate{cert}})
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestLearnShapeMatchesChromium proves the bridge's visit to a face sees
// the records Chromium saw from the same kind of server: Go's HTTP/2
// SETTINGS, WINDOW_UPDATE, SETTINGS ACK, and the 404's HEADERS and DATA.
func TestLearnShapeMatchesChromium(t *testing.T) {
	addr := startGo404(t)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	shape, err := learnShape(context.Background(), raw, "", "127.0.0.1:8443", 1)
	if err != nil {
		t.Fatal(err)
	}
	want := chromiumVisits(t)[0]
	if !alike(shape, plus(want.Server, -recordOverhead13)) {
		t.Errorf("learned records %v, Chromium saw %v", plus(shape, recordOverhead13), want.Server)
	}
}

// tapRelay passes connections to target and records the TLS records each
// way. It keeps only the last connection's taps.
type tapRelay struct {
	addr     string
	up, down chan *recordTap // client→bridge, bridge→client
}

func startTapRelay(t *testing.T, target string) *tapRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tapRelay{addr: ln.Addr().String(), up: make(chan *recordTap, 16), down: make(chan *recordTap, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			up, down := &recordTap{Conn: c}, &recordTap{Conn: s}
			r.up <- up
			r.down <- down
			// Each way ends with a FIN of its own, as on the wire: a
			// Close when the other way ended made the tap's read of
			// the client's last bytes and FIN fail ("use of closed
			// network connection") when the site closed first.
			var both sync.WaitGroup
			both.Add(2)
			go func() { io.Copy(s, up); s.(*net.TCPConn).CloseWrite(); both.Done() }()
			go func() { io.Copy(c, down); c.(*net.TCPConn).CloseWrite(); both.Done() }()
			go func() { both.Wait(); c.Close(); s.Close() }()
		}
	}()
	return r
}

// after returns the plaintext-plus-overhead lengths of the encrypted
// records after the first skip of them, once there are want of them.
func (tap *recordTap) after(t *testing.T, skip, want int) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		i := tap.encryptedAt(skip)
		if i >= 0 {
			n, _ := tap.count()
			if got := plus(tap.lengths(i, n), recordOverhead13); len(got) >= want || time.Now().After(deadline) {
				return got
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("fewer than %d encrypted records", skip)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTunnelOpensAsItsFace proves a carrier's first records, both ways,
// are those of a browser opening the face's front page: the client's are
// Chromium's (preface, request, SETTINGS ACK), the bridge's are what its
// face sends such a visit, record for record. Before, the bridge sent one
// 60-byte record and nothing more, and the client's request record was of
// its own size.
func TestTunnelOpensAsItsFace(t *testing.T) {
	face := &SiteFace{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{siteCertificate(t)}},
		Handler:   http.NewServeMux(), // Go's 404, as measured
	}
	b := startBridge(t, face, echoHandler, nil)
	waitUntil(t, "the bridge to learn its face", func() bool { return b.server.shape.Load() != nil })
	shapes := *b.server.shape.Load()
	shape := shapes[0]

	// What a visit to the face itself gets, through the bridge's port.
	raw, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	visit, err := learnShape(context.Background(), raw, testSNI, testSNI, 1)
	raw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !alike(visit, shape) {
		t.Fatalf("learned shape %v, a visit now sees %v", shape, visit)
	}

	relay := startTapRelay(t, b.addr)
	cfg := b.clientConfig()
	cfg.Address = relay.addr
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	up, down := <-relay.up, <-relay.down

	// The bridge: its flight (four records and Go's session ticket), then
	// the face's records.
	// the face's records: one of the learned openings, exactly.
	got := down.after(t, handshakeRecords+1, 2)
	waitUntil(t, "the bridge's opening records", func() bool {
		got = down.after(t, handshakeRecords+1, 2)
		for _, sh := range shapes {
			if near(got, plus(sh, recordOverhead13), nil, 0) {
				return true
			}
		}
		return false
	})
	for _, v := range chromiumVisits(t) {
		if v.Face != "go-404" || v.Authority != "127.0.0.1:8443" {
			continue
		}
		// Go's server writes SETTINGS at once, and the rest in as many
		// records as its flushes make (WINDOW_UPDATE, the ACK and the
		// HEADERS share one or not, by timing): the same first record,
		// and the same bytes after it.
		if !alike(plus(got, -recordOverhead13), plus(v.Server, -recordOverhead13)) {
			t.Errorf("bridge's first records %v, Chromium saw %v from a Go website", got, v.Server)
		}
	}
	// The client: its Finished, then Chromium's three records, with the
	// request's record as long as Chromium's would be for this address.
	got = up.after(t, 1, 3)
	want := []int{87, chromeRequestLen(authority(cfg)) + recordOverhead13, 26}
	if !near(got, want, nil, 0) {
		t.Errorf("client's first records %v, Chromium's would be %v", got, want)
	}
	if d := chromeRequestLen("example.test:8443") + recordOverhead13 - 465; d != 0 {
		t.Errorf("request record for example.test:8443 is %d bytes off Chromium's", d)
	}
	// The carrier works.
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := roundTrip(st, payload(4096, 1)); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond until it holds, for up to ten seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestPingSizedAsHTTP2 proves a PING, and the ACK that answers one, go
// out as 17 bytes, HTTP/2's PING frame either way, not as 3 and 11 (which
// a keepalive every half minute would show as 20- and 28-byte records).
func TestPingSizedAsHTTP2(t *testing.T) {
	s := newSessionConn(true, time.Minute, testLogger(t))
	defer s.Close()
	c := &carrier{raw: &countingConn{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pingDue = true
	if out := s.compose(nil, c); len(out) != h2PingLen {
		t.Errorf("a PING goes out as %d bytes, want %d", len(out), h2PingLen)
	}
	s.recvd, s.ackDue, s.pongDue = 100, true, true
	if out := s.compose(nil, c); len(out) != h2PingLen {
		t.Errorf("the answer to a PING goes out as %d bytes, want %d", len(out), h2PingLen)
	}
}

// wantIdleClose waits for the relay's first carrier to end and a second
// to come, and checks the first ended as an idle HTTP/2 connection is
// ended: a GOAWAY-sized record, then close_notify.
func (r *tapRelay) wantIdleClose(t *testing.T) {
	t.Helper()
	down := <-r.down
	<-r.up
	select {
	case <-r.down:
	case <-time.After(10 * time.Second):
		t.Fatal("no new carrier after the idle close")
	}
	n, _ := down.count()
	all := down.lengths(0, n)
	if len(all) < 2 || all[len(all)-2] != h2GoAwayLen || all[len(all)-1] != 2 {
		t.Errorf("the idle carrier's last records are %v (plaintext), want a %d-byte GOAWAY then close_notify (2)", all, h2GoAwayLen)
	}
}

// TestIdleCarrierClosedAsTheFace proves a carrier idle for longer than the
// face lets an idle connection live is closed by the bridge as the face
// would close it (a GOAWAY-sized record, then close_notify), and that a
// session with a stream open goes on over a new connection, the stream
// with it. (A session with nothing open ends instead:
// TestIdleSessionDoesNotReconnect.)
func TestIdleCarrierClosedAsTheFace(t *testing.T) {
	face := newSiteFace(t)
	face.Server.IdleTimeout = 500 * time.Millisecond
	b := startBridge(t, face, echoHandler, nil)
	relay := startTapRelay(t, b.addr)
	sess := b.dialVia(t, relay.addr)
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	relay.wantIdleClose(t)
	if err := roundTrip(st, payload(4096, 2)); err != nil {
		t.Fatal(err)
	}
}

// TestLandingOnTheFaceIsAVisit proves a client whose opening meets the
// face instead of the bridge (a censor raced its hello to the bridge, or
// its key is wrong) behaves as a browser visiting the site: its opening
// is a valid HTTP/2 request the site answers without complaint, it
// acknowledges the site's SETTINGS, reads the whole response and closes
// with close_notify and a FIN. Before, it sent 70 and ~450 bytes that are
// not HTTP/2 (the site logged a bad preface and closed), then reset the
// connection.
func TestLandingOnTheFaceIsAVisit(t *testing.T) {
	var siteLog bytes.Buffer
	var mu sync.Mutex
	face := &SiteFace{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{siteCertificate(t)}},
		Handler:   siteHandler,
		Server:    NewSiteServer(nil, nil),
	}
	face.Server.ErrorLog = log.New(lockedWriter{&mu, &siteLog}, "", 0)
	b := startBridge(t, face, echoHandler, nil)
	relay := startTapRelay(t, b.addr)
	cfg := b.clientConfig()
	cfg.Address = relay.addr
	other, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.PublicKey = other.Public() // not this bridge's: its hello meets the face
	_, err = Dial(context.Background(), cfg)
	if !errors.Is(err, ErrNotBridge) {
		t.Fatalf("Dial with another bridge's key: %v, want ErrNotBridge", err)
	}
	up, down := <-relay.up, <-relay.down
	// The visit ends as Chromium 156 ends its connections: a FIN, and no
	// close_notify (a capture of Chromium closing its connection to a Go
	// site: Finished, 87, the request, the SETTINGS ACK, then the FIN).
	waitUntil(t, "the client to close the visit", func() bool { return up.ended() })
	if err := up.endErr(); err != nil {
		t.Errorf("the client ended the visit with %v, want a FIN", err)
	}
	got := up.after(t, 1, 3)
	if len(got) < 3 || got[0] != 87 || got[2] != 26 || slices.Contains(got, 19) {
		t.Errorf("client's records after Finished %v: want 87, the request, the SETTINGS ACK (26), ..., and no close_notify (19)", got)
	}
	// The site answered the request: the response's HEADERS and DATA
	// came after its SETTINGS, WINDOW_UPDATE and ACK.
	if d := down.after(t, handshakeRecords+1, 3); sameBytes(plus(d, -recordOverhead13), []int{39, 13, 9}) < 100 {
		t.Errorf("the site sent %v: no response to the request", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if siteLog.Len() > 0 {
		t.Errorf("the site logged: %s", siteLog.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// FuzzOpenings feeds the openings' parsers anything: an authenticated
// client's opening (the bridge reads it) and the server's status after
// the proof (the client reads it). Neither may panic, read past a bound
// or accept what the writer could not have written; what they accept
// must survive a round trip.
func FuzzOpenings(f *testing.F) {
	op := clientOpeningInfo{New: true, Carrier: 3, Received: 1 << 40, Budget: 14 << 10}
	op.Session[0] = 7
	f.Add(append(chromePreface(), op.marshal("example.test")...))
	f.Add(append(chromePreface(), op.marshal(strings.Repeat("a", 300))...))
	f.Add(statusFrame(statusResumed, 99, 13))
	f.Add(append(padFrame(9), statusFrame(statusBusy, 0, 40)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		if o, err := readClientOpening(bytes.NewReader(b)); err == nil {
			again, err := readClientOpening(bytes.NewReader(append(chromePreface(), o.marshal("x")...)))
			if err != nil || again != o {
				t.Fatalf("opening %+v did not survive a round trip: %+v, %v", o, again, err)
			}
		}
		if st, recvd, err := readStatus(&frameReader{r: bytes.NewReader(b)}); err == nil {
			st2, recvd2, err := readStatus(&frameReader{r: bytes.NewReader(statusFrame(st, recvd, 12))})
			if err != nil || st2 != st || recvd2 != recvd {
				t.Fatalf("status %d/%d did not survive a round trip", st, recvd)
			}
		}
	})
}

// TestCoverIdleLearned proves a cover-mode bridge learns how long its
// cover keeps an idle connection, and ends idle carriers as the cover
// would: a GOAWAY-sized record, then close_notify.
func TestCoverIdleLearned(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cert := siteCertificate(t)
	cover := NewSiteServer(siteHandler, &tls.Config{Certificates: []tls.Certificate{cert}})
	cover.IdleTimeout = 700 * time.Millisecond
	go cover.ServeTLS(ln, "", "")
	t.Cleanup(func() { cover.Close() })
	b := startBridge(t, &CoverFace{Address: ln.Addr().String()}, echoHandler, nil)
	waitUntil(t, "the bridge to learn the cover's idle timeout", func() bool { return b.server.faceIdle() > 0 })
	if d := b.server.faceIdle(); d < 600*time.Millisecond || d > 3*time.Second {
		t.Fatalf("learned idle %v, the cover's is 700ms", d)
	}
	relay := startTapRelay(t, b.addr)
	sess := b.dialVia(t, relay.addr)
	// A stream held open, so that the session goes on after the close.
	st, err := sess.OpenStream(context.Background(), Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	relay.wantIdleClose(t)
}

// TestShapeWithinBudget proves a large face's opening does not spend a
// budget carrier: past the proof and status records, at most a quarter of
// the budget goes to padding.
func TestShapeWithinBudget(t *testing.T) {
	big := openingShape{39, 13, 9, 86, 16000, 16000, 16000}
	if got := big.within(0); len(got) != len(big) {
		t.Errorf("no budget: %v, want the whole shape", got)
	}
	if got := big.within(14 << 10); !near(got, openingShape{39, 13, 9, 86}, nil, 0) {
		t.Errorf("14k budget: %v, want 39 13 9 86", got)
	}
	if got := (openingShape{2000, 2000, 9}).within(8 << 10); !near(got, openingShape{2000, 2000}, nil, 0) {
		t.Errorf("8k budget: %v, want the proof and status records only", got)
	}
}

// TestIdleSessionDoesNotReconnect proves that a client with nothing open
// does not reconnect each time the bridge closes its idle connection as
// the face would: a browser opens a new connection when it next needs
// one. Before, the client dialled a new carrier at once, every time, so
// an idle client reconnected every face idle timeout (six carriers in
// three seconds here, every two minutes behind a site face), carrying
// nothing, until the bridge's idle timeout ended the session. Now the
// session ends with its last carrier, and the next stream opens a new
// one.
func TestIdleSessionDoesNotReconnect(t *testing.T) {
	face := newSiteFace(t)
	face.Server.IdleTimeout = 300 * time.Millisecond
	b := startBridge(t, face, echoHandler, nil)
	client, err := NewClient(*b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	openAndEcho(t, ctx, client, 5)
	first, err := client.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Ten face idle timeouts with nothing open.
	time.Sleep(10 * face.Server.IdleTimeout)
	if n := first.nextSeq.Load(); n > 1 {
		t.Errorf("an idle session dialled %d carriers in %v, want 1: it reconnected after each idle close", n, 10*face.Server.IdleTimeout)
	}
	if !first.IsClosed() {
		t.Error("the idle session outlived its last carrier")
	}
	// A program that holds the Session itself learns what happened, and
	// what to do, where it got "io: read/write on closed pipe".
	_, err = first.OpenStream(ctx, Request{Command: CmdDefault})
	if !errors.Is(err, ErrSessionEnded) || !errors.Is(err, errIdleNoCarrier) {
		t.Errorf("OpenStream on the ended session: %v; want ErrSessionEnded, saying it had no stream open when it lost its last connection", err)
	}
	openAndEcho(t, ctx, client, 5) // a new session
	if s, _ := client.Session(ctx); s == first {
		t.Error("the next stream went on the ended session")
	}
}
