package localproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestMain fails the package if a test leaves a goroutine running: every
// relay, UDP association and handler must end with its connection.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

// fakeOpener stands in for the tunnel: CONNECT streams are TCP
// connections to local servers, UDP streams echo each datagram back as if
// it came from its destination.
type fakeOpener struct {
	mu     sync.Mutex
	routes map[string]string // requested "host:port" → local address to dial
	refuse map[uint16]transport.Status
	err    error // returned for every request, when set: the bridge is down
	reqs   []transport.Request
	wg     sync.WaitGroup // UDP echo goroutines
}

func (f *fakeOpener) OpenStream(ctx context.Context, req transport.Request) (net.Conn, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	target, routed := f.routes[req.Addr.String()]
	status, refused := f.refuse[req.Addr.Port]
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	switch req.Command {
	case transport.CmdUDP:
		app, tunnel := net.Pipe()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer tunnel.Close()
			buf := make([]byte, 2+transport.MaxDatagramLen)
			for {
				addr, payload, err := transport.ReadDatagram(tunnel, buf)
				if err != nil {
					return
				}
				if err := transport.WriteDatagram(tunnel, addr, payload); err != nil {
					return
				}
			}
		}()
		return app, nil
	case transport.CmdConnect:
		if refused {
			return nil, &transport.StatusError{Status: status}
		}
		if !routed {
			target = req.Addr.String()
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", target)
	}
	return nil, &transport.StatusError{Status: transport.StatusCommandNotSupported}
}

// requests returns the requests the opener saw.
func (f *fakeOpener) requests() []transport.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transport.Request(nil), f.reqs...)
}

// startEcho runs a TCP echo server on 127.0.0.1 that half-closes after
// echoing everything, and returns its address.
func startEcho(t *testing.T) string {
	return transporttest.StartTCPEcho(t, testTimeout).String()
}

// startProxy serves p on a loopback port and returns its address; the
// proxy is closed, and its Serve joined, when the test ends.
// opts adjust the proxy's limits before it serves.
func startProxy(t *testing.T, opener StreamOpener, auth string, opts ...func(*Config)) (*Server, string) {
	t.Helper()
	creds, err := ParseCredentials(auth)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Opener: opener, Auth: creds, RequestTimeout: testTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	p := NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if f, ok := opener.(*fakeOpener); ok {
			f.wg.Wait()
		}
	})
	return p, ln.Addr().String()
}

// dialProxy connects to the proxy with a deadline on everything.
func dialProxy(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

// expectClosed reads until the proxy closes c, and fails if that does not
// happen in time; it returns what was read.
func expectClosed(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("waiting for the proxy to close the connection: %v (read %x)", err, b)
	}
	return b
}

// isReset reports a connection reset, which is how a close with unread
// input arrives.
func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// echoRoundTrip writes msg, half-closes, and checks that exactly msg comes
// back before EOF: the relay carries bytes and half-closes both ways.
func echoRoundTrip(t *testing.T, c *net.TCPConn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestParseCredentials(t *testing.T) {
	long := string(make([]byte, 256))
	for _, tt := range []struct {
		in   string
		want *Credentials
		ok   bool
	}{
		{"", nil, true},
		{"user:pass", &Credentials{"user", "pass"}, true},
		{"user:pa:ss", &Credentials{"user", "pa:ss"}, true},
		{"user:", &Credentials{"user", ""}, true},
		{"user", nil, false},
		{":pass", nil, false},
		{long + ":x", nil, false},
		{"x:" + long, nil, false},
	} {
		got, err := ParseCredentials(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseCredentials(%.20q) error = %v, want ok %v", tt.in, err, tt.ok)
			continue
		}
		if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
			t.Errorf("ParseCredentials(%.20q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

// TestCloseEndsConnections checks that Close ends open app connections
// (a relay and a handshake in progress) and returns only after their
// handlers have; TestMain's leak check would catch one left running.
func TestCloseEndsConnections(t *testing.T) {
	echo := startEcho(t)
	p, addr := startProxy(t, &fakeOpener{}, "")
	relaying := dialProxy(t, addr)
	if rep := socksConnect(t, relaying, "", "", ipv4Addr(t, echo)); rep != repSucceeded {
		t.Fatalf("REP = %#x", rep)
	}
	idle := dialProxy(t, addr)
	idle.Write([]byte{socksVersion}) // a greeting cut short
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		p.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Close did not return")
	}
	expectClosed(t, relaying)
	expectClosed(t, idle)
}

// TestConnectionLimit checks that connections beyond maxConns wait for a
// slot instead of being served.
func TestConnectionLimit(t *testing.T) {
	echo := startEcho(t)
	p := NewServer(Config{Opener: &fakeOpener{}, MaxConns: 1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	defer func() {
		p.Close()
		<-errc
	}()
	addr := ln.Addr().String()
	first := dialProxy(t, addr)
	if rep := socksConnect(t, first, "", "", ipv4Addr(t, echo)); rep != repSucceeded {
		t.Fatalf("REP = %#x", rep)
	}
	second := dialProxy(t, addr) // the kernel accepts it; the proxy does not yet
	second.Write(socksGreeting(methodNoAuth))
	second.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var b [2]byte
	if _, err := io.ReadFull(second, b[:]); err == nil {
		t.Fatal("second connection served while the first holds the only slot")
	}
	echoRoundTrip(t, first, "x")
	first.Close()
	second.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(second, b[:]); err != nil || b != [2]byte{socksVersion, methodNoAuth} {
		t.Fatalf("second connection after the first closed: %x, %v", b, err)
	}
}

// bridgeClient runs a real bridge on loopback whose streams handler
// answers (refusing port 9 with "connection refused", echoing the rest)
// and returns a *transport.Client for it: the opener the binary uses.
func bridgeClient(t *testing.T) *transport.Client {
	t.Helper()
	const sni = "bridge.test"
	priv, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	certKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: sni},
		DNSNames:     []string{sni},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &certKey.PublicKey, certKey)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := transport.NewServer(transport.ServerConfig{
		PrivateKey: priv,
		Site: &transport.SiteFace{
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: certKey}}},
			Handler:   http.NotFoundHandler(),
		},
		Handler: func(st *transport.Stream) {
			if st.Request.Command == transport.CmdConnect && st.Request.Addr.Port == 9 {
				st.Reply(transport.StatusConnectionRefused)
				return
			}
			st.Reply(transport.StatusOK)
			io.Copy(st, st)
			st.CloseWrite()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	client, err := transport.NewClient(transport.ClientConfig{
		Address: ln.Addr().String(),
		Params:  link.Params{PublicKey: priv.Public(), ServerName: sni, Pin: transporttest.Pin(t, tls.Certificate{Certificate: [][]byte{der}})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		srv.Close()
		<-errc
	})
	return client
}

// TestProxyThroughBridge runs the proxy on a real *transport.Client: the
// relay keeps half-closes across the smux stream; a strict proxy's SOCKS5
// CONNECT gets the bridge's status as its REP, and a fast one answers at
// once and then ends the app's connection promptly when the bridge
// refuses.
func TestProxyThroughBridge(t *testing.T) {
	client := bridgeClient(t)
	for _, strict := range []bool{true, false} {
		_, addr := startProxy(t, client, "", func(c *Config) { c.Strict = strict })
		c := dialProxy(t, addr)
		if rep := socksConnect(t, c, "", "", domainAddr("echo.example", 7)); rep != repSucceeded {
			t.Fatalf("strict %v: REP = %#x", strict, rep)
		}
		echoRoundTrip(t, c, "through a real session")

		c = dialProxy(t, addr)
		rep := socksConnect(t, c, "", "", domainAddr("echo.example", 9))
		if strict {
			if rep != byte(transport.StatusConnectionRefused) {
				t.Fatalf("REP = %#x, want connection refused", rep)
			}
			continue
		}
		if rep != repSucceeded {
			t.Fatalf("fast open: REP = %#x, want an answer at once", rep)
		}
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 100))
		if n != 0 || err == nil {
			t.Fatalf("fast open to a refused destination: read %d bytes, err %v; want the connection closed", n, err)
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("fast open to a refused destination: the app's connection stayed open")
		}
	}
}
