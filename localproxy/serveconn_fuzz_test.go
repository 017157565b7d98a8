package localproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// duplex is one end of an in-memory connection built from two net.Pipes,
// one per direction. net.Pipe alone closes both directions at once; here
// each end can half-close (CloseWrite) as a TCP socket can, so an app can
// send its bytes, say it is done, and still read the proxy's answer.
type duplex struct {
	r      net.Conn // the pipe this end reads
	w      net.Conn // the pipe this end writes
	closed atomic.Bool
}

var _ net.Conn = (*duplex)(nil)

// duplexPair returns the two ends of a new in-memory connection.
func duplexPair() (*duplex, *duplex) {
	aw, br := net.Pipe()
	bw, ar := net.Pipe()
	return &duplex{r: ar, w: aw}, &duplex{r: br, w: bw}
}

func (d *duplex) Read(b []byte) (int, error)  { return d.r.Read(b) }
func (d *duplex) Write(b []byte) (int, error) { return d.w.Write(b) }
func (d *duplex) CloseWrite() error           { return d.w.Close() }
func (d *duplex) LocalAddr() net.Addr         { return d.r.LocalAddr() }
func (d *duplex) RemoteAddr() net.Addr        { return d.r.RemoteAddr() }

func (d *duplex) Close() error {
	d.closed.Store(true)
	d.r.Close()
	return d.w.Close()
}

func (d *duplex) SetDeadline(t time.Time) error {
	d.r.SetReadDeadline(t)
	return d.w.SetWriteDeadline(t)
}

func (d *duplex) SetReadDeadline(t time.Time) error  { return d.r.SetReadDeadline(t) }
func (d *duplex) SetWriteDeadline(t time.Time) error { return d.w.SetWriteDeadline(t) }

// destinationResponse is what every destination of pipeOpener answers,
// whatever it is sent: an HTTP request's response, or a CONNECT tunnel's
// first bytes.
const destinationResponse = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

// Ports pipeOpener treats specially, so that inputs reach the proxy's
// answers to a refusal and to a tunnel that cannot be opened.
const (
	refusedPort = 9  // the bridge answers "connection refused"
	downPort    = 10 // the bridge cannot be reached
)

// pipeOpener is an in-process tunnel that touches no network: each
// CONNECT stream is a duplex whose far end is a destination goroutine
// that sends destinationResponse, reads until the proxy closes or
// half-closes the stream, and closes.
type pipeOpener struct {
	opened atomic.Int32   // OpenStream calls
	wg     sync.WaitGroup // destination goroutines

	mu      sync.Mutex
	streams []*duplex // the proxy's ends of the streams opened
}

// unclosed returns how many streams the proxy has not closed.
func (o *pipeOpener) unclosed() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, st := range o.streams {
		if !st.closed.Load() {
			n++
		}
	}
	return n
}

func (o *pipeOpener) OpenStream(ctx context.Context, req transport.Request) (net.Conn, error) {
	o.opened.Add(1)
	if req.Command != transport.CmdConnect {
		return nil, &transport.StatusError{Status: transport.StatusCommandNotSupported}
	}
	switch req.Addr.Port {
	case refusedPort:
		return nil, &transport.StatusError{Status: transport.StatusConnectionRefused}
	case downPort:
		return nil, errors.New("transport: cannot reach the bridge (test)")
	}
	proxySide, dest := duplexPair()
	o.mu.Lock()
	o.streams = append(o.streams, proxySide)
	o.mu.Unlock()
	// A destination that outlives the proxy's handler is a stream the
	// proxy failed to close; the deadline keeps it from hanging the
	// fuzzer, and the leak check reports it.
	dest.SetDeadline(time.Now().Add(fuzzConnTimeout))
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		defer dest.Close()
		io.WriteString(dest, destinationResponse)
		io.Copy(io.Discard, dest)
	}()
	return proxySide, nil
}

// fuzzConnTimeout bounds one fuzzed connection: every read and write of
// the app and the destinations, and the handler's return. An input is
// served in well under a millisecond; a handler still running after this
// long is hung.
const fuzzConnTimeout = 5 * time.Second

// fuzzUser and fuzzPass are the credentials of the proxy with
// authentication; fuzzSOCKSAuth and fuzzHTTPAuth are how an app sends
// them.
const (
	fuzzUser = "user"
	fuzzPass = "pass"
)

var (
	fuzzSOCKSAuth = []byte("\x01\x04" + fuzzUser + "\x04" + fuzzPass)
	fuzzHTTPAuth  = base64.StdEncoding.EncodeToString([]byte(fuzzUser + ":" + fuzzPass))
)

// FuzzServeConn feeds the local proxy's front door (serveConn, which
// tells SOCKS5 from HTTP by the first byte) anything an app may send on
// one connection, with and without credentials configured, over an
// in-memory connection and tunnel: the app writes the input and
// half-closes, then reads the answer. It proves that the handler never
// panics and returns within fuzzConnTimeout; that once it has, every
// stream it opened is closed and no goroutine it or its streams started
// is left running; that an
// HTTP-looking connection gets an HTTP/1.x response or nothing, a SOCKS5
// one a SOCKS5 method choice or nothing, and a SOCKS4 one nothing; and
// that with credentials configured, no stream is opened for an app that
// did not send them.
func FuzzServeConn(f *testing.F) {
	httpSeeds := []string{
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic " + fuzzHTTPAuth + "\r\n\r\n\x16\x03\x01\x00\x05hello",
		"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: basic  " + fuzzHTTPAuth + " \r\n\r\n",
		"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNz==\r\n\r\n",
		"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n",
		"CONNECT 192.0.2.1:9 HTTP/1.1\r\n\r\n",
		"CONNECT 192.0.2.1:10 HTTP/1.1\r\n\r\n",
		"CONNECT example.com HTTP/1.1\r\n\r\n",
		"CONNECT :443 HTTP/1.1\r\n\r\n",
		"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: Basic " + fuzzHTTPAuth + "\r\nProxy-Connection: keep-alive\r\n\r\n",
		"GET http://example.com:8080/a?b=c HTTP/1.0\r\n\r\n",
		"GET http://[::1]:8080/ HTTP/1.1\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\n",
		"POST http://example.com/form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\na=b&c",
		"POST http://example.com/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST http://example.com/ HTTP/1.1\r\nContent-Length: 100\r\n\r\ncut short",
		"GET http://example.com/1 HTTP/1.1\r\n\r\nGET http://example.com/2 HTTP/1.1\r\n\r\nGET http://example.com:9/3 HTTP/1.1\r\n\r\n",
		"HEAD http://example.com/ HTTP/1.1\r\n\r\n",
		"GET http://example.com:10/ HTTP/1.1\r\n\r\n",
		"GET http://exa mple.com/ HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
		"GET https://example.com/ HTTP/1.1\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET http://example.com/ HTTP/9.9\r\n\r\n",
		"GET http://example.com/ HTTP/1.1\r\nX: " + strings.Repeat("y", maxHeaderBytes) + "\r\n\r\n",
		"GET http://example.com/",
		"\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // TLS to the plain port
		"\x00\xff garbage \xfe",
	}
	socksSeeds := [][]byte{
		socksGreeting(methodNoAuth),
		append(socksGreeting(methodNoAuth), append([]byte{5, socksCmdConnect, 0}, domainAddr("example.com", 443)...)...),
		append(socksGreeting(methodNoAuth), append([]byte{5, socksCmdConnect, 0}, domainAddr("example.com", refusedPort)...)...),
		append(socksGreeting(methodNoAuth, methodUserPass), append(append([]byte(nil), fuzzSOCKSAuth...), append([]byte{5, socksCmdConnect, 0}, ipv6Addr("2001:db8::1", 443)...)...)...),
		append(socksGreeting(methodUserPass), []byte("\x01\x04user\x05wrong")...),
		append(socksGreeting(methodNoAuth), []byte{5, socksCmdUDP, 0, 1, 0, 0, 0, 0, 0, 0}...),
		append(socksGreeting(methodNoAuth), []byte{5, socksCmdBind, 0, 1, 127, 0, 0, 1, 0, 80}...),
		append(socksGreeting(methodNoAuth), []byte{5, socksCmdConnect, 0, 9, 0}...),
		{5, 255},
		{4, 1, 0, 80, 192, 0, 2, 1, 0},
	}
	for _, auth := range []bool{false, true} {
		for _, s := range httpSeeds {
			f.Add([]byte(s), auth)
		}
		for _, s := range socksSeeds {
			f.Add(s, auth)
		}
	}
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		// Goroutines running now (the fuzzer's own) are not this input's.
		// A count, not goleak's snapshot of stacks, which took half of
		// each execution's time; the fuzzer runs one input at a time per
		// process, so every goroutine above the count is this input's.
		before := runtime.NumGoroutine()

		var creds *Credentials
		if auth {
			creds = &Credentials{User: fuzzUser, Pass: fuzzPass}
		}
		opener := &pipeOpener{}
		p := NewServer(Config{
			Opener:           opener,
			Auth:             creds,
			RequestTimeout:   fuzzConnTimeout,
			KeepAliveTimeout: fuzzConnTimeout,
			OpenTimeout:      fuzzConnTimeout,
		})
		app, conn := duplexPair()
		app.SetDeadline(time.Now().Add(fuzzConnTimeout))

		// The handler, as Serve runs it: it closes the connection after.
		served := make(chan struct{})
		go func() {
			defer close(served)
			defer conn.Close()
			p.serveConn(conn)
		}()
		// The app sends the input and half-closes, while it reads.
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			app.Write(in)
			app.CloseWrite()
		}()
		answer, _ := io.ReadAll(app)
		app.Close()
		select {
		case <-served:
		case <-time.After(fuzzConnTimeout):
			t.Fatalf("the handler did not return within %v of the app's input %q", fuzzConnTimeout, in)
		}
		<-wrote
		if n := opener.unclosed(); n > 0 {
			t.Fatalf("%d of %d streams left open after the connection ended", n, opener.opened.Load())
		}
		opener.wg.Wait()
		p.Close()
		if n := goroutinesAbove(before); n > 0 {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left running after the connection ended:\n%s", n, buf[:runtime.Stack(buf, true)])
		}

		if len(in) == 0 {
			if len(answer) != 0 {
				t.Fatalf("answered %q to nothing", answer)
			}
			return
		}
		switch in[0] {
		case socksVersion:
			if len(answer) > 0 && (len(answer) < 2 || answer[0] != socksVersion) {
				t.Fatalf("a SOCKS5 greeting answered with % x", answer)
			}
			if auth && opener.opened.Load() > 0 && !bytes.Contains(in, fuzzSOCKSAuth) {
				t.Fatalf("a stream was opened for a SOCKS5 app without the credentials: % x", in)
			}
		case 0x04:
			if len(answer) > 0 {
				t.Fatalf("SOCKS4 answered with % x", answer)
			}
		default:
			if len(answer) > 0 {
				resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(answer)), nil)
				if err != nil || resp.ProtoMajor != 1 {
					t.Fatalf("an HTTP request answered with %q, not an HTTP/1.x response: %v", answer, err)
				}
			}
			if auth && opener.opened.Load() > 0 && !bytes.Contains(in, []byte(fuzzHTTPAuth)) {
				t.Fatalf("a stream was opened for an HTTP app without the credentials: %q", in)
			}
		}
	})
}

// goroutinesAbove waits for the goroutines beyond the first n to end, as
// the ones of a closed connection do within moments, and returns how many
// are still running after fuzzConnTimeout.
func goroutinesAbove(n int) int {
	deadline := time.Now().Add(fuzzConnTimeout)
	for wait := time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		extra := runtime.NumGoroutine() - n
		if extra <= 0 || time.Now().After(deadline) {
			return max(extra, 0)
		}
		time.Sleep(wait)
	}
}
