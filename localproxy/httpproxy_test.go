package localproxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// readResponse reads one response to a request with method from br.
func readResponse(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the proxy's response: %v", err)
	}
	if method == http.MethodConnect && resp.StatusCode == http.StatusOK {
		return resp, "" // the tunnel follows, not a body
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(body)
}

// readEstablished reads the proxy's answer to a CONNECT on c, which must
// be 200 with an empty header, and returns the reader of what follows.
func readEstablished(t *testing.T, c net.Conn) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 200 Connection established\r\n" {
		t.Fatalf("status line %q, %v", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("header not empty: %q", blank)
	}
	return br
}

func TestHTTPConnect(t *testing.T) {
	echo := startEcho(t)
	f := &fakeOpener{refuse: map[uint16]transport.Status{
		9:  transport.StatusConnectionRefused,
		10: transport.StatusNotAllowed,
		11: transport.StatusTimeout,
		12: transport.StatusHostUnreachable,
	}}
	_, addr := startProxy(t, f, "")

	t.Run("200", func(t *testing.T) {
		c := dialProxy(t, addr)
		// The first tunnel bytes come with the request, as a browser's
		// ClientHello may: they must not be lost.
		io.WriteString(c, "CONNECT "+echo+" HTTP/1.1\r\nHost: "+echo+"\r\n\r\nearly ")
		br := readEstablished(t, c)
		io.WriteString(c, "bytes")
		c.CloseWrite()
		got, err := io.ReadAll(br)
		if err != nil || string(got) != "early bytes" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})
	t.Run("200 with a pipelined upload", func(t *testing.T) {
		// More than both read buffers hold (the peek's and the request
		// reader's) follows the request in one write: what each buffer
		// holds, then the socket's, must reach the stream in order.
		c := dialProxy(t, addr)
		upload := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB
		go func() {
			c.Write(append([]byte("CONNECT "+echo+" HTTP/1.1\r\nHost: "+echo+"\r\n\r\n"), upload...))
			c.CloseWrite()
		}()
		br := readEstablished(t, c)
		got, err := io.ReadAll(br)
		if err != nil || !bytes.Equal(got, upload) {
			t.Fatalf("echo of %d bytes (equal: %v), %v; want %d", len(got), bytes.Equal(got, upload), err, len(upload))
		}
	})
	for _, tt := range []struct {
		port     int
		code     int
		bodyPart string
	}{
		{9, http.StatusBadGateway, "connection refused"},
		{10, http.StatusForbidden, "not allowed"},
		{11, http.StatusGatewayTimeout, "timed out"},
		{12, http.StatusBadGateway, "host unreachable"},
	} {
		t.Run(strconv.Itoa(tt.code)+" "+tt.bodyPart, func(t *testing.T) {
			c := dialProxy(t, addr)
			target := "blocked.example:" + strconv.Itoa(tt.port)
			io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
			resp, body := readResponse(t, bufio.NewReader(c), http.MethodConnect)
			if resp.StatusCode != tt.code || !strings.Contains(body, tt.bodyPart) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.code, tt.bodyPart)
			}
			expectClosed(t, c)
		})
	}
	t.Run("no port", func(t *testing.T) {
		c := dialProxy(t, addr)
		io.WriteString(c, "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
		if resp, _ := readResponse(t, bufio.NewReader(c), http.MethodConnect); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("got %d, want 400", resp.StatusCode)
		}
	})
}

// TestHTTPConnectBridgeDown checks the answer when the tunnel itself
// fails: 502, saying that the bridge is unreachable.
func TestHTTPConnectBridgeDown(t *testing.T) {
	_, addr := startProxy(t, &fakeOpener{err: io.ErrUnexpectedEOF}, "")
	c := dialProxy(t, addr)
	io.WriteString(c, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	resp, body := readResponse(t, bufio.NewReader(c), http.MethodConnect)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "bridge") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// startOrigin runs a local web server that reports what it received.
func startOrigin(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Request-URI", r.RequestURI)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-User-Agent", r.UserAgent())
		var hop []string
		for _, h := range []string{"Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "X-Drop-Me"} {
			if r.Header.Get(h) != "" {
				hop = append(hop, h)
			}
		}
		w.Header().Set("X-Hop-Headers", strings.Join(hop, ","))
		io.WriteString(w, r.Method+" "+string(body))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		// No Content-Length, not chunked: the body ends when the
		// connection does (an HTTP/1.0-style response).
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: X-Secret\r\nX-Secret: hop\r\n\r\nuntil the end")
		bw.Flush()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, srv.Listener.Addr().String()
}

func TestHTTPForward(t *testing.T) {
	_, origin := startOrigin(t)
	f := &fakeOpener{routes: map[string]string{"www.example:80": origin, "www.example:8080": origin}}
	_, addr := startProxy(t, f, "")
	c := dialProxy(t, addr)
	br := bufio.NewReader(c)

	// Two requests on one app connection: keep-alive, a stream each.
	io.WriteString(c, "GET http://www.example/echo?q=1 HTTP/1.1\r\nHost: www.example\r\n"+
		"Proxy-Connection: keep-alive\r\nConnection: X-Drop-Me\r\nX-Drop-Me: 1\r\nUser-Agent: test-agent\r\n\r\n")
	resp, body := readResponse(t, br, http.MethodGet)
	if resp.StatusCode != 200 || body != "GET " {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	for h, want := range map[string]string{
		"X-Request-URI": "/echo?q=1", // origin form
		"X-Host":        "www.example",
		"X-User-Agent":  "test-agent",
		"X-Hop-Headers": "", // none passed on
		"Connection":    "", // kept alive
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}

	io.WriteString(c, "POST http://www.example:8080/echo HTTP/1.1\r\nHost: www.example:8080\r\nContent-Length: 7\r\n\r\npayload")
	resp, body = readResponse(t, br, http.MethodPost)
	if resp.StatusCode != 200 || body != "POST payload" || resp.Header.Get("X-User-Agent") != "" {
		t.Fatalf("got %d %q, user agent %q", resp.StatusCode, body, resp.Header.Get("X-User-Agent"))
	}

	// A chunked request body, and a response ended by the origin's close
	// that must reach the app in chunks, keeping its connection usable.
	io.WriteString(c, "POST http://www.example/echo HTTP/1.1\r\nHost: www.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	if _, body = readResponse(t, br, http.MethodPost); body != "POST abc" {
		t.Fatalf("chunked POST: %q", body)
	}
	io.WriteString(c, "GET http://www.example/stream HTTP/1.1\r\nHost: www.example\r\n\r\n")
	resp, body = readResponse(t, br, http.MethodGet)
	if body != "until the end" || resp.Close || len(resp.TransferEncoding) == 0 {
		t.Fatalf("close-delimited response: %q, close %v, transfer encoding %v", body, resp.Close, resp.TransferEncoding)
	}
	if v := resp.Header.Get("X-Secret"); v != "" {
		t.Errorf("header named by the origin's Connection header passed on: %q", v)
	}
	io.WriteString(c, "HEAD http://www.example/echo HTTP/1.1\r\nHost: www.example\r\nConnection: close\r\n\r\n")
	if resp, _ = readResponse(t, br, http.MethodHead); resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("HEAD with close: %d, close %v", resp.StatusCode, resp.Close)
	}
	expectClosed(t, c)

	if n := len(f.requests()); n != 5 {
		t.Errorf("%d streams for 5 requests", n)
	}
}

// TestHTTPKeepAliveTimeout checks that an idle kept-alive connection is
// closed quietly, without an error response.
func TestHTTPKeepAliveTimeout(t *testing.T) {
	_, origin := startOrigin(t)
	f := &fakeOpener{routes: map[string]string{"www.example:80": origin}}
	_, addr := startProxy(t, f, "", func(c *Config) { c.KeepAliveTimeout = 100 * time.Millisecond })
	c := dialProxy(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET http://www.example/echo HTTP/1.1\r\nHost: www.example\r\n\r\n")
	if resp, _ := readResponse(t, br, http.MethodGet); resp.StatusCode != 200 {
		t.Fatalf("got %d", resp.StatusCode)
	}
	if rest := expectClosed(t, &bufferedConn{Conn: c, r: br}); len(rest) != 0 {
		t.Fatalf("got %q when the idle connection was closed", rest)
	}
}

// TestHTTPForwardClient drives the proxy with net/http's own proxy
// support, as a real app would.
func TestHTTPForwardClient(t *testing.T) {
	srv, _ := startOrigin(t)
	_, addr := startProxy(t, &fakeOpener{}, "")
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: testTimeout}
	for i := range 3 {
		resp, err := client.Post(srv.URL+"/echo", "text/plain", strings.NewReader("n"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "POST n"+strconv.Itoa(i) {
			t.Fatalf("request %d: %q", i, body)
		}
	}
}

func TestHTTPForwardErrors(t *testing.T) {
	f := &fakeOpener{refuse: map[uint16]transport.Status{80: transport.StatusConnectionRefused}}
	_, addr := startProxy(t, f, "")
	for _, tt := range []struct {
		name, req string
		code      int
	}{
		{"refused", "GET http://down.example/ HTTP/1.1\r\nHost: down.example\r\n\r\n", http.StatusBadGateway},
		{"garbage", "\x00\x01\x02 nonsense\r\n\r\n", http.StatusBadRequest},
		{"header too large", "GET http://www.example/ HTTP/1.1\r\nX-Big: " + strings.Repeat("a", maxHeaderBytes+1) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialProxy(t, addr)
			go io.WriteString(c, tt.req) // the proxy may stop reading early
			resp, _ := readResponse(t, bufio.NewReader(c), http.MethodGet)
			if resp.StatusCode != tt.code {
				t.Fatalf("got %d, want %d", resp.StatusCode, tt.code)
			}
			expectClosed(t, c)
		})
	}
}

// TestNotAProxyRequest: what a web page can send to the local port (an
// origin-form request, after a DNS rebinding) gets no answer at all, with
// or without credentials required: no status, no wording, nothing that
// says a proxy, or Mirage, listens here.
func TestNotAProxyRequest(t *testing.T) {
	for _, auth := range []string{"", "alice:s3cret"} {
		_, addr := startProxy(t, &fakeOpener{}, auth)
		for _, req := range []string{
			"GET /index.html HTTP/1.1\r\nHost: attacker.example\r\n\r\n",
			"POST /api HTTP/1.1\r\nHost: 127.0.0.1:1080\r\nContent-Length: 2\r\n\r\nhi",
			"GET https://www.example/ HTTP/1.1\r\nHost: www.example\r\n\r\n",
		} {
			c := dialProxy(t, addr)
			io.WriteString(c, req)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c)
			if len(got) > 0 {
				t.Fatalf("auth %q: %q got an answer: %q", auth, strings.SplitN(req, "\r", 2)[0], got)
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("auth %q: the connection stayed open", auth)
			}
		}
	}
}

func TestHTTPProxyAuth(t *testing.T) {
	echo := startEcho(t)
	_, addr := startProxy(t, &fakeOpener{}, "alice:s3cret")
	basic := func(userpass string) string {
		return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(userpass)) + "\r\n"
	}
	for _, tt := range []struct {
		name, header string
		code         int
	}{
		{"none", "", http.StatusProxyAuthRequired},
		{"wrong", basic("alice:guess"), http.StatusProxyAuthRequired},
		{"not basic", "Proxy-Authorization: Bearer abc\r\n", http.StatusProxyAuthRequired},
		{"bad base64", "Proxy-Authorization: Basic !!!\r\n", http.StatusProxyAuthRequired},
		{"right", basic("alice:s3cret"), http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialProxy(t, addr)
			io.WriteString(c, "CONNECT "+echo+" HTTP/1.1\r\nHost: "+echo+"\r\n"+tt.header+"\r\n")
			resp, _ := readResponse(t, bufio.NewReader(c), http.MethodConnect)
			if resp.StatusCode != tt.code {
				t.Fatalf("got %d, want %d", resp.StatusCode, tt.code)
			}
			if tt.code == http.StatusProxyAuthRequired && !strings.HasPrefix(resp.Header.Get("Proxy-Authenticate"), "Basic") {
				t.Errorf("Proxy-Authenticate = %q", resp.Header.Get("Proxy-Authenticate"))
			}
		})
	}
}

func TestRemoveHopHeaders(t *testing.T) {
	h := http.Header{
		"Connection":          {"keep-alive, X-A", "x-b"},
		"X-A":                 {"1"},
		"X-B":                 {"2"},
		"Proxy-Connection":    {"keep-alive"},
		"Proxy-Authorization": {"Basic eDp5"},
		"Keep-Alive":          {"timeout=5"},
		"Upgrade":             {"websocket"},
		"Accept":              {"*/*"},
	}
	removeHopHeaders(h)
	if len(h) != 1 || h.Get("Accept") != "*/*" {
		t.Fatalf("left %v", h)
	}
}

var _ net.Conn = (*bufferedConn)(nil)
