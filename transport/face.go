package transport

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"syscall"
)

// The face is what every peer that does not authenticate meets, and the
// only thing it meets: the bridge's own website (SiteFace) or another
// website the bridge passes bytes to (CoverFace). Nothing of Mirage's own,
// no error, alert, delay or close, reaches such a peer.

// SiteFace makes the bridge an HTTPS website. Clients and strangers meet
// one and the same TLS configuration; only after the handshake does an
// authenticated connection become a tunnel. Strangers are served exactly
// as ServeTLS of an http.Server with this TLSConfig and Handler serves them.
type SiteFace struct {
	// TLSConfig holds the site's certificate (Certificates or
	// GetCertificate: files, ACME or self-signed are the caller's
	// business). If NextProtos is empty, "h2" and "http/1.1" are offered.
	TLSConfig *tls.Config
	// Handler serves the site's content.
	Handler http.Handler
	// Server, if not nil, is a template for the http.Server that serves
	// strangers: timeouts, header limits, HTTP/2 settings, ErrorLog. Its
	// Handler and TLSConfig are ignored. nil means NewSiteServer's
	// defaults, which are net/http's own.
	Server *http.Server
}

// NewSiteServer returns the http.Server a site face uses by default: a
// stock net/http server, with every timeout and limit left at net/http's
// default, and no error log (the standard one prints client addresses;
// what a log says is not on the wire). Tests that compare the face with a
// plain HTTPS server build that server with this function too.
//
// Why stock: whatever the face sets that net/http does not is visible to
// anyone who connects, and the same on every bridge. It used to set
// MaxHeaderBytes 64 KiB, which HTTP/2 announces in its first SETTINGS frame
// (MAX_HEADER_LIST_SIZE 65856 where every stock Go server says 1048896),
// a 120 s idle timeout and a 20 s header timeout: one SETTINGS frame, or
// one idle connection timed, told Mirage bridges apart from Go websites.
// A stock server has no slowloris protection of its own beyond HTTP/2's
// 10 s wait for the client preface (net/http's, kept here since it is
// stock); an operator who wants header, idle or TLS handshake timeouts
// sets them in SiteFace.Server, as the operator of any Go website would,
// and then they are that bridge's own choice rather than Mirage's.
func NewSiteServer(handler http.Handler, tlsConfig *tls.Config) *http.Server {
	return &http.Server{
		Handler:   handler,
		TLSConfig: tlsConfig,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
}

// siteTLSConfig returns the TLS configuration both the face and the tunnel
// use, with the ALPN list ServeTLS would add.
func siteTLSConfig(c *tls.Config) *tls.Config {
	c = c.Clone()
	if len(c.NextProtos) == 0 {
		c.NextProtos = []string{"h2", "http/1.1"}
	}
	return c
}

// siteServer runs the face's http.Server over connections handed to it.
type siteServer struct {
	srv *http.Server
	ln  *handoverListener
}

func startSiteServer(f *SiteFace, tlsConfig *tls.Config) *siteServer {
	srv := NewSiteServer(f.Handler, tlsConfig)
	if f.Server != nil {
		t := f.Server
		srv.ReadTimeout, srv.ReadHeaderTimeout = t.ReadTimeout, t.ReadHeaderTimeout
		srv.WriteTimeout, srv.IdleTimeout = t.WriteTimeout, t.IdleTimeout
		srv.MaxHeaderBytes = t.MaxHeaderBytes
		srv.HTTP2 = t.HTTP2
		if t.ErrorLog != nil {
			srv.ErrorLog = t.ErrorLog
		}
	}
	s := &siteServer{srv: srv, ln: newHandoverListener()}
	// ServeTLS wraps each handed-over connection in tls.Server itself,
	// with HTTP/2 set up exactly as for any Go HTTPS server.
	go s.srv.ServeTLS(s.ln, "", "")
	return s
}

func (s *siteServer) serve(c net.Conn) {
	if !s.ln.hand(c) {
		c.Close()
	}
}

func (s *siteServer) close() {
	s.ln.Close()
	s.srv.Close()
}

// handoverListener is a net.Listener whose connections are handed to it by
// the server after it has looked at their first bytes.
type handoverListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newHandoverListener() *handoverListener {
	return &handoverListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoverListener) hand(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *handoverListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoverListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *handoverListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4zero} }

// unwrapConn returns the connection under wrappers that expose it with a
// NetConn method, as *tls.Conn does.
func unwrapConn(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = u.NetConn()
	}
}

// pipe copies src to dst until src ends, then ends dst the same way: a FIN
// becomes a half-close, a reset becomes a reset. Between two TCP
// connections io.Copy uses splice(2), so the bytes never enter user space.
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	switch {
	case err == nil:
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			return
		}
		dst.Close()
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		// src was reset (or dst reset us while we wrote): pass it on.
		resetConn(dst)
		resetConn(src)
	default:
		dst.Close()
		src.Close()
	}
}

// resetConn closes c with a TCP RST instead of a FIN, as the kernel does
// when a socket with SO_LINGER 0 is closed.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
