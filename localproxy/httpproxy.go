package localproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// The HTTP proxy serves two kinds of request on the SOCKS5 port:
//
//   - CONNECT host:port opens a tunnel stream and, once the bridge agrees,
//     answers 200 and relays bytes: what browsers do for https://.
//   - A request with an absolute URI (GET http://host/path) is sent to
//     host (port 80 by default) over a stream of its own, in origin form
//     and without hop-by-hop headers, and the response is passed back.
//
// Connections are kept alive between requests (HTTP/1.1 without
// "Connection: close"), each request using a new stream, since a stream
// is cheap and the next request may be for another host. Any error
// response closes the connection.

// maxHeaderBytes bounds a request header from an app and a response header
// from a destination.
const maxHeaderBytes = 64 << 10

// hopHeaders are the hop-by-hop headers (RFC 9110 §7.6.1, plus the
// proxy-specific ones browsers send) that are not passed on.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// removeHopHeaders deletes hop-by-hop headers, including those that the
// Connection header names. (http.ReadResponse drops a Connection header
// that says "close" before we see it, and with it any other names it
// listed; httputil.ReverseProxy has the same blind spot.)
func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// httpStatusFor turns a failed OpenStream into an HTTP status and a body
// that says what happened.
func httpStatusFor(err error) (int, string) {
	var se *transport.StatusError
	if errors.As(err, &se) {
		msg := "the bridge could not open the connection: " + se.Status.String()
		switch se.Status {
		case transport.StatusNotAllowed:
			return http.StatusForbidden, msg
		case transport.StatusTimeout:
			return http.StatusGatewayTimeout, msg
		}
		return http.StatusBadGateway, msg
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return http.StatusGatewayTimeout, "the bridge did not answer in time"
	}
	return http.StatusBadGateway, "cannot reach the bridge (mirage-client's log and `mirage-client check` tell more)"
}

// writeHTTPError writes a short plain-text response that ends the
// connection. extra holds headers such as Proxy-Authenticate.
func writeHTTPError(w io.Writer, code int, msg string, extra ...string) {
	var b strings.Builder
	body := msg + "\n"
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	for i := 0; i+1 < len(extra); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", extra[i], extra[i+1])
	}
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	io.WriteString(w, b.String())
}

// limitedReader passes reads through while a header is read, failing once
// more than the limit has been read; unlimited, it passes everything.
type limitedReader struct {
	r       io.Reader
	n       int64 // bytes left while limited
	limited bool
}

var errHeaderTooLarge = errors.New("header too large")

func (l *limitedReader) Read(p []byte) (int, error) {
	if !l.limited {
		return l.r.Read(p)
	}
	if l.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (l *limitedReader) limit(n int64) { l.n, l.limited = n, true }
func (l *limitedReader) unlimit()      { l.limited = false }

// serveHTTP serves HTTP proxy requests on c until the app or an error
// ends the connection.
func (p *Server) serveHTTP(c *bufferedConn, log *slog.Logger) error {
	// Reads go through a limit that is on while a header is read. c's
	// buffer holds what serveConn peeked; it is drained through lim.
	lim := &limitedReader{r: c.r}
	br := bufio.NewReaderSize(lim, peekBufferSize)
	// Over c, not c's socket: bytes may wait in c's reader too, and
	// app's WriteTo drains them after br's.
	app := &bufferedConn{Conn: c, r: br}
	timeout := p.requestTimeout
	for {
		app.SetReadDeadline(time.Now().Add(timeout))
		lim.limit(maxHeaderBytes)
		req, err := http.ReadRequest(br)
		lim.unlimit()
		if err != nil {
			var ne net.Error
			switch {
			case errors.Is(err, errHeaderTooLarge):
				writeHTTPError(app, http.StatusRequestHeaderFieldsTooLarge, "request header too large")
			case isClosedConnError(err), errors.As(err, &ne) && ne.Timeout():
				// The app left, or sat idle: nothing to answer.
			default:
				writeHTTPError(app, http.StatusBadRequest, "malformed request")
				// Not err: it quotes the request line, and with it
				// the destination, which logs must not name.
				err = errors.New("http proxy: malformed request")
			}
			return err
		}
		app.SetReadDeadline(time.Time{})
		// A request that is not for a proxy (origin form, as a web page
		// sends to 127.0.0.1 after a DNS rebinding; or an https:// URL,
		// which proxies get as CONNECT) gets what a port that speaks
		// nothing useful gives: the connection closes without a word,
		// before authentication, so nothing says what listens here.
		if req.Method != http.MethodConnect && (req.URL.Scheme != "http" || req.URL.Host == "") {
			return errors.New("http proxy: not a proxy request: closed without an answer")
		}
		// A request without the credentials learns nothing but that a
		// proxy wants them: a generic realm, nothing opened.
		if p.auth != nil && !p.httpAuthOK(req.Header) {
			writeHTTPError(app, http.StatusProxyAuthRequired, "proxy authentication required",
				"Proxy-Authenticate", `Basic realm="proxy"`)
			return errors.New("http proxy: missing or wrong Proxy-Authorization")
		}
		if req.Method == http.MethodConnect {
			return p.httpConnect(app, req, log)
		}
		keepAlive, err := p.httpForward(app, br, req, log)
		if err != nil || !keepAlive {
			return err
		}
		timeout = p.keepAliveTimeout
	}
}

// httpAuthOK checks Proxy-Authorization: Basic against p.auth.
func (p *Server) httpAuthOK(h http.Header) bool {
	scheme, cred, ok := strings.Cut(h.Get("Proxy-Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return false
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	return ok && p.auth.ok(user, pass)
}

// httpConnect serves CONNECT: a stream to the authority, then a relay.
func (p *Server) httpConnect(app *bufferedConn, req *http.Request, log *slog.Logger) error {
	addr, err := transport.ParseAddr(req.Host)
	if err != nil {
		writeHTTPError(app, http.StatusBadRequest, "CONNECT wants host:port")
		// Not err: it quotes the destination, which logs must not name.
		return errors.New("http proxy: CONNECT without host:port")
	}
	st, err := p.openStreamFast(transport.Request{Command: transport.CmdConnect, Addr: addr}, log)
	if err != nil {
		code, msg := httpStatusFor(err)
		writeHTTPError(app, code, msg)
		return err
	}
	if _, err := io.WriteString(app, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		st.Close()
		return err
	}
	return relayFast(app, st, log)
}

// httpForward sends one absolute-URI request to its host over a new
// stream and passes the response back. It reports whether the app
// connection can carry another request.
func (p *Server) httpForward(app *bufferedConn, br *bufio.Reader, req *http.Request, log *slog.Logger) (keepAlive bool, err error) {
	if req.URL.Scheme != "http" || req.URL.Host == "" {
		// Origin-form requests are for servers, not proxies; https://
		// URLs come through CONNECT.
		writeHTTPError(app, http.StatusBadRequest, "this is a proxy: send http://host/path requests, or CONNECT host:port")
		return false, errors.New("http proxy: request without an http:// URL")
	}
	port := req.URL.Port()
	if port == "" {
		port = "80"
	}
	addr, err := transport.ParseAddr(net.JoinHostPort(req.URL.Hostname(), port))
	if err != nil {
		writeHTTPError(app, http.StatusBadRequest, "bad host in URL")
		return false, errors.New("http proxy: bad host or port in URL")
	}
	st, err := p.openStream(transport.Request{Command: transport.CmdConnect, Addr: addr}, log)
	if err != nil {
		code, msg := httpStatusFor(err)
		writeHTTPError(app, code, msg)
		return false, err
	}
	defer st.Close()
	// Closing the proxy ends a request waiting on a silent destination.
	stop := context.AfterFunc(p.ctx, func() { st.Close() })
	defer stop()

	keepAlive = !req.Close && req.ProtoAtLeast(1, 1)
	removeHopHeaders(req.Header)
	if _, ok := req.Header["User-Agent"]; !ok {
		// Request.Write would add Go's own; the app sent none.
		req.Header["User-Agent"] = []string{""}
	}
	// One stream per request: tell the destination so, which also makes
	// a body without a length end at the stream's end.
	req.Close = true

	// The request (with any body, read from the app) is written while
	// the response is read, so that a "100 Continue" or an early error
	// response gets through.
	wrote := make(chan error, 1)
	go func() { wrote <- req.Write(st) }()

	lim := &limitedReader{r: st}
	sbr := bufio.NewReaderSize(lim, peekBufferSize)
	var resp *http.Response
	for {
		lim.limit(maxHeaderBytes)
		resp, err = http.ReadResponse(sbr, req)
		lim.unlimit()
		if err != nil {
			break
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			// Interim responses go to the app as they come.
			if err = resp.Write(app); err != nil {
				break
			}
			continue
		}
		break
	}
	if err != nil || resp.StatusCode == http.StatusSwitchingProtocols {
		if err == nil {
			resp.Body.Close()
			err = errors.New("http proxy: destination switched protocols, which needs CONNECT")
		}
		writeHTTPError(app, http.StatusBadGateway, "bad response from the destination")
		st.Close()
		p.joinWriter(app, st, wrote, hasBody(req))
		return false, err
	}
	removeHopHeaders(resp.Header)
	normalizeResponse(resp, keepAlive)
	err = resp.Write(app)
	resp.Body.Close()
	if werr := p.joinWriter(app, st, wrote, hasBody(req)); werr != nil {
		// The request was not sent whole, so where the app's next
		// request starts is unknown.
		log.Debug("request not sent whole", "error", werr.Error())
		keepAlive = false
	}
	if err != nil {
		return false, err
	}
	return keepAlive, nil
}

// normalizeResponse makes resp one this proxy can send to the app: as
// HTTP/1.1 (a proxy speaks its own version), its body framed by length or
// chunks when the connection stays open, and ended by closing it when it
// does not. The destination's own framing ended with its stream.
func normalizeResponse(resp *http.Response, keepAlive bool) {
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	resp.Close = !keepAlive
	chunked := len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"
	switch {
	case !keepAlive:
		// An HTTP/1.0 app cannot read chunks, and needs none: the body
		// ends when the connection does.
		resp.TransferEncoding = nil
	case resp.ContentLength < 0 && !chunked && bodyAllowed(resp):
		// The destination ended the body by closing its side; the app's
		// connection stays open, so the body goes in chunks.
		resp.TransferEncoding = []string{"chunked"}
	}
}

// bodyAllowed reports whether resp can have a body (RFC 9110 §6.4.1).
func bodyAllowed(resp *http.Response) bool {
	if resp.Request != nil && resp.Request.Method == http.MethodHead {
		return false
	}
	c := resp.StatusCode
	return c >= 200 && c != http.StatusNoContent && c != http.StatusNotModified
}

// hasBody reports whether the app's request has a body to send.
func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody
}

// joinWriter waits for the request writer. If it is still busy with a
// body from the app after the response is done, closing the stream and
// the app's read deadline stop it.
func (p *Server) joinWriter(app *bufferedConn, st net.Conn, wrote <-chan error, body bool) error {
	select {
	case err := <-wrote:
		return err
	default:
	}
	if !body {
		// Only the header is left to write, into smux's window.
		return <-wrote
	}
	st.Close()
	app.SetReadDeadline(time.Unix(1, 0))
	err := <-wrote
	app.SetReadDeadline(time.Time{})
	return err
}
