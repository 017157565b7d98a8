package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

const testSNI = "www.example.com"

var (
	certOnce sync.Once
	testCert tls.Certificate
)

// siteCertificate returns the test site's certificate for testSNI, made
// once (RSA, so that handshakes compare; see transporttest.RSACertificate).
func siteCertificate(t testing.TB) tls.Certificate {
	certOnce.Do(func() { testCert = transporttest.RSACertificate(t, testSNI) })
	return testCert
}

// siteHandler is the content of the test website.
var siteHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT") // fixed, so answers compare
	fmt.Fprintf(w, "<html><body>Hello from %s, you asked for %s over %s</body></html>\n", r.Host, r.URL.Path, r.Proto)
})

// testFaceServer is the http.Server template for the site face in tests:
// short timeouts so that silence tests finish quickly.
func testFaceServer() *http.Server {
	s := NewSiteServer(nil, nil)
	s.ReadHeaderTimeout = 1500 * time.Millisecond
	s.IdleTimeout = 2 * time.Second
	return s
}

type testBridge struct {
	addr    string
	params  link.Params
	server  *Server
	private keys.PrivateKey
	roots   *x509.CertPool // for ClientConfig.RootCAs: the cover's root
}

// echoHandler replies OK to every request and echoes the stream back,
// half-closing when the client does.
func echoHandler(st *Stream) {
	if err := st.Reply(StatusOK); err != nil {
		return
	}
	io.Copy(st, st)
	st.CloseWrite()
	// Drain until the client closes, so the echo is not cut short.
	io.Copy(io.Discard, st)
}

// startBridge runs a bridge on loopback with the given face and handler.
// configure may adjust the config before the server starts.
func startBridge(t testing.TB, face any, handler func(*Stream), configure func(*ServerConfig)) *testBridge {
	t.Helper()
	priv, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := keys.NewShortID(nil)
	cfg := ServerConfig{
		PrivateKey:  priv,
		ShortIDs:    []keys.ShortID{id},
		ServerNames: []string{testSNI},
		Handler:     handler,
		Logger:      testLogger(t),
	}
	switch f := face.(type) {
	case *SiteFace:
		cfg.Site = f
	case *CoverFace:
		cfg.Cover = f
	default:
		t.Fatalf("unknown face %T", face)
	}
	if configure != nil {
		configure(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	params := link.Params{PublicKey: priv.Public(), ServerName: testSNI, ShortID: id}
	if cfg.Site != nil && cfg.Site.TLSConfig != nil && len(cfg.Site.TLSConfig.Certificates) > 0 {
		// Test sites' certificates are self-signed: their links pin
		// them, as a bridge's own links do.
		params.Pin = transporttest.Pin(t, cfg.Site.TLSConfig.Certificates[0])
	}
	b := &testBridge{
		addr:    ln.Addr().String(),
		server:  srv,
		private: priv,
		params:  params,
	}
	if cfg.Cover != nil {
		// Test covers are sites with the test certificate; a client
		// that meets one (a wrong key) checks it as it would a real
		// cover's CA-signed one.
		b.roots = x509.NewCertPool()
		leaf, err := x509.ParseCertificate(siteCertificate(t).Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		b.roots.AddCert(leaf)
	}
	return b
}

func newSiteFace(t testing.TB) *SiteFace {
	return &SiteFace{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{siteCertificate(t)}},
		Handler:   siteHandler,
		Server:    testFaceServer(),
	}
}

// startPlainSite runs the face's website on its own, as a plain Go HTTPS
// server with the same certificate, handler and settings: what the bridge
// must be indistinguishable from.
func startPlainSite(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tmpl := testFaceServer()
	srv := NewSiteServer(siteHandler, &tls.Config{Certificates: []tls.Certificate{siteCertificate(t)}})
	srv.ReadHeaderTimeout, srv.IdleTimeout = tmpl.ReadHeaderTimeout, tmpl.IdleTimeout
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func (b *testBridge) clientConfig() *ClientConfig {
	return &ClientConfig{Address: b.addr, Params: b.params, RootCAs: b.roots, HandshakeTimeout: 5 * time.Second}
}

// payload returns n deterministic pseudo-random bytes for seed.
func payload(n int, seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// roundTrip writes data to c while reading the echo, and checks that what
// came back hashes to what was sent.
func roundTrip(c net.Conn, data []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", n, err)
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) || n != int64(len(data)) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes with another hash", len(data), n)
	}
	return nil
}

// probe connects to addr, sends data and reads the answer for up to wait.
func probe(t testing.TB, addr string, data []byte, wait time.Duration) transporttest.ProbeResult {
	t.Helper()
	r, err := transporttest.Probe(addr, data, wait)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// recordHello captures the first TLS records a real client sends: it
// listens, accepts one connection, reads the ClientHello and closes.
func recordHello(t testing.TB, cfg *ClientConfig) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		consumed, _, _ := hello.ReadClientHello(c)
		got <- consumed
	}()
	cc := *cfg
	cc.Address = ln.Addr().String()
	cc.HandshakeTimeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	Dial(ctx, &cc) // fails: the recorder never answers
	h := <-got
	if len(h) == 0 {
		t.Fatal("recorded no ClientHello")
	}
	return h
}

// testLogger logs through t, so a failing test shows the server's view.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// dialVia dials a session to b through addr (a relay in front of it),
// closed when the test ends.
func (b *testBridge) dialVia(t testing.TB, addr string) *Session {
	t.Helper()
	cfg := b.clientConfig()
	cfg.Address = addr
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// openAndEcho opens a stream through client and checks a round trip of
// 1000 bytes (seeded with seed) on it, then closes it.
func openAndEcho(t *testing.T, ctx context.Context, client *Client, seed uint64) {
	t.Helper()
	st, err := client.OpenStream(ctx, Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	if err := roundTrip(st, payload(1000, seed)); err != nil {
		t.Fatal(err)
	}
}

// loadHandler serves test transfers on default-target streams. The client
// sends mode(1) size(8) seed(8): mode 'D' asks for size bytes of
// payload(size, seed); mode 'U' sends them, and the bridge answers 'k' if
// they hash right, 'x' if not.
func loadHandler(st *Stream) {
	if err := st.Reply(StatusOK); err != nil {
		return
	}
	var hdr [17]byte
	if _, err := io.ReadFull(st, hdr[:]); err != nil {
		return
	}
	size := int(binary.BigEndian.Uint64(hdr[1:]))
	seed := binary.BigEndian.Uint64(hdr[9:])
	switch hdr[0] {
	case 'D':
		st.Write(payload(size, seed))
		st.CloseWrite()
		io.Copy(io.Discard, st)
	case 'U':
		h := sha256.New()
		n, _ := io.Copy(h, io.LimitReader(st, int64(size)))
		want := sha256.Sum256(payload(size, seed))
		ok := byte('x')
		if n == int64(size) && bytes.Equal(h.Sum(nil), want[:]) {
			ok = 'k'
		}
		st.Write([]byte{ok})
		st.CloseWrite()
		io.Copy(io.Discard, st)
	}
}

// transfer runs one load transfer on a new stream of sess and checks it.
func transfer(ctx context.Context, sess *Session, mode byte, size int, seed uint64, idle time.Duration) error {
	st, err := sess.OpenStream(ctx, Request{Command: CmdDefault})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	var hdr [17]byte
	hdr[0] = mode
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	binary.BigEndian.PutUint64(hdr[9:], seed)
	if _, err := st.Write(hdr[:]); err != nil {
		return err
	}
	// r reads with a deadline that moves with progress: a stall longer
	// than idle is an error, however long the whole transfer takes.
	r := &progressReader{c: st, idle: idle}
	switch mode {
	case 'D':
		h := sha256.New()
		n, err := io.Copy(h, r)
		if err != nil {
			return fmt.Errorf("download stalled after %d of %d bytes: %w", n, size, err)
		}
		want := sha256.Sum256(payload(size, seed))
		if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
			return fmt.Errorf("download of %d bytes came back as %d bytes with another hash", size, n)
		}
	case 'U':
		errc := make(chan error, 1)
		go func() {
			_, err := st.Write(payload(size, seed))
			errc <- err
		}()
		// The verdict comes after the whole upload: wait for the upload,
		// not for progress on the read side.
		var ok [1]byte
		st.SetReadDeadline(time.Now().Add(idle + time.Duration(size/(16<<10))*time.Second))
		if _, err := io.ReadFull(st, ok[:]); err != nil {
			return fmt.Errorf("upload of %d bytes: no verdict: %w", size, err)
		}
		if err := <-errc; err != nil {
			return err
		}
		if ok[0] != 'k' {
			return fmt.Errorf("upload of %d bytes arrived damaged", size)
		}
	}
	return nil
}

type progressReader struct {
	c    net.Conn
	idle time.Duration
}

func (r *progressReader) Read(p []byte) (int, error) {
	r.c.SetReadDeadline(time.Now().Add(r.idle))
	return r.c.Read(p)
}

// dialForAMinute dials a session for a test that may take up to a
// minute: the context it returns ends then, and the session with the
// test.
func dialForAMinute(t *testing.T, cfg *ClientConfig) (context.Context, *Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	sess, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return ctx, sess
}
