// Package localproxy is the local end of a Mirage client: what apps on the
// user's machine (or LAN) connect to. Server serves SOCKS5 (CONNECT and
// UDP ASSOCIATE, with optional RFC 1929 user/password) and an HTTP proxy
// (CONNECT and absolute-URI requests, with optional Proxy-Authorization:
// Basic) on one port; Forwarder carries every connection of a port to one
// fixed destination, which is what WhatsApp's proxy setting needs.
//
// Both take their tunnel streams from a StreamOpener (a
// *transport.Client), so an embedding app or another Go program gets the
// same front-end, and the same authentication rules, as mirage-client:
//
//	client, _ := transport.NewClient(transport.ClientConfig{Address: l.Address, Params: l.Params})
//	srv := localproxy.NewServer(localproxy.Config{Opener: client, Auth: creds})
//	ln, _ := net.Listen("tcp", "127.0.0.1:1080")
//	go srv.Serve(ln)
//	…
//	client.Close() // first: it ends dials in flight
//	srv.Close()
//
// Nothing here logs an app's or a destination's address.
package localproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/mirage-pt/mirage/transport"
)

// The local proxy serves SOCKS5 (socks.go, udp.go) and HTTP proxy requests
// (httpproxy.go) on one port. The first byte a client sends tells them
// apart: 0x05 is a SOCKS5 greeting; an HTTP request starts with a method
// name in ASCII letters.

// Limits of the local proxy.
const (
	// DefaultMaxConns bounds the app connections served at once; more
	// wait in the kernel's backlog.
	DefaultMaxConns = 1024
	// DefaultRequestTimeout bounds the reading of a SOCKS5 greeting and request,
	// or of an HTTP request header, from a local app.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultKeepAliveTimeout is how long an HTTP client connection may sit idle
	// between requests.
	DefaultKeepAliveTimeout = 2 * time.Minute
	// DefaultOpenTimeout bounds OpenStream: a dial of the bridge if there is no
	// session and the bridge's answer. The transport has shorter limits
	// of its own for each step; this is the backstop.
	DefaultOpenTimeout = 60 * time.Second
	// peekBufferSize is the read buffer of an app connection. It only has
	// to hold a SOCKS5 handshake or one HTTP header line at a time.
	peekBufferSize = 4 << 10
	// bridgeWarnInterval is how often at most a failure to reach the
	// bridge is logged at Warn; the rest go to Debug.
	bridgeWarnInterval = time.Minute
)

// StreamOpener opens tunnel streams; *transport.Client satisfies it.
type StreamOpener interface {
	OpenStream(ctx context.Context, req transport.Request) (net.Conn, error)
}

var _ StreamOpener = (*transport.Client)(nil)

// FastOpener is a StreamOpener that can also open a stream without waiting
// for the bridge's answer (transport.Client.OpenStreamFast). The proxy
// then answers a CONNECT at once, and the app's first bytes follow the
// stream request without a round trip; a refusal arrives at the stream's
// first Read and ends the app's connection.
type FastOpener interface {
	OpenStreamFast(ctx context.Context, req transport.Request) (net.Conn, error)
}

var _ FastOpener = (*transport.Client)(nil)

// Config configures a Server. Zero limits mean the defaults.
type Config struct {
	// Opener opens the tunnel streams; required. If it is a FastOpener
	// and Strict is false, CONNECTs are answered at once (fast open).
	Opener StreamOpener
	// Strict makes the proxy wait for the bridge's answer before it
	// answers a CONNECT, so that SOCKS and HTTP errors carry the bridge's
	// exact reason, at the cost of one round trip per connection.
	Strict bool
	// Auth is what apps must authenticate with; nil means no
	// authentication, which lets every program that can reach the port
	// use the bridge (and learn its exit address).
	Auth *Credentials
	// Logger gets events, never an app's or a destination's address;
	// nil means none.
	Logger *slog.Logger
	// MaxConns bounds the app connections served at once
	// (DefaultMaxConns); more wait in the kernel's backlog.
	MaxConns int
	// RequestTimeout bounds the reading of a SOCKS5 greeting and
	// request or an HTTP request header (DefaultRequestTimeout).
	RequestTimeout time.Duration
	// KeepAliveTimeout is how long an HTTP connection may sit idle
	// between requests (DefaultKeepAliveTimeout).
	KeepAliveTimeout time.Duration
	// OpenTimeout bounds the opening of one stream (DefaultOpenTimeout).
	OpenTimeout time.Duration
}

// Server is the local SOCKS5 + HTTP proxy. Create it with NewServer;
// Serve and Close are safe for concurrent use. Close closes every
// listener and app connection and waits for their handlers.
type Server struct {
	opener StreamOpener
	strict bool         // wait for the bridge's answer before answering apps
	auth   *Credentials // nil: no authentication
	log    *slog.Logger

	// Limits, from Config or the defaults.
	maxConns         int
	requestTimeout   time.Duration
	keepAliveTimeout time.Duration
	openTimeout      time.Duration

	// forward, if set (NewForwarder), is where every connection goes,
	// instead of where its SOCKS5 or HTTP request says.
	forward     *transport.Addr
	proxyHeader bool // forward: send proxyHeaderUnknown first

	sem      chan struct{} // one slot per app connection being served
	connIDs  atomic.Uint64
	lastWarn atomic.Int64 // unix nanoseconds of the last bridge warning

	ctx    context.Context // cancelled by Close: aborts OpenStream calls
	cancel context.CancelFunc
	wg     sync.WaitGroup // connection handlers, waited for by Close

	mu        sync.Mutex // guards the fields below
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
}

// NewServer returns a proxy that opens its streams with cfg.Opener. It
// panics if cfg.Auth holds credentials a SOCKS5 app cannot send (check
// them with ParseCredentials).
func NewServer(cfg Config) *Server {
	if cfg.Auth != nil {
		if err := cfg.Auth.check(); err != nil {
			panic(err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opener:           cfg.Opener,
		strict:           cfg.Strict,
		auth:             cfg.Auth,
		log:              log,
		maxConns:         orDefault(cfg.MaxConns, DefaultMaxConns),
		requestTimeout:   orDefault(cfg.RequestTimeout, DefaultRequestTimeout),
		keepAliveTimeout: orDefault(cfg.KeepAliveTimeout, DefaultKeepAliveTimeout),
		openTimeout:      orDefault(cfg.OpenTimeout, DefaultOpenTimeout),
		ctx:              ctx,
		cancel:           cancel,
		listeners:        make(map[net.Listener]struct{}),
		conns:            make(map[net.Conn]struct{}),
	}
}

// orDefault returns v, or def if v is not positive.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("localproxy: closed")

// Serve accepts app connections on ln until ln fails or the proxy is
// closed; it returns ErrServerClosed after Close.
func (p *Server) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrServerClosed
	}
	if p.sem == nil {
		p.sem = make(chan struct{}, max(p.maxConns, 1))
	}
	sem := p.sem
	p.listeners[ln] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, ln)
		p.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		// Take a slot before accepting, so an overload waits in the
		// kernel's backlog and not in our memory.
		select {
		case sem <- struct{}{}:
		case <-p.ctx.Done():
			return ErrServerClosed
		}
		c, err := ln.Accept()
		if err != nil {
			<-sem
			if p.ctx.Err() != nil {
				return ErrServerClosed
			}
			var t interface{ Temporary() bool }
			if errors.As(err, &t) && t.Temporary() {
				// EMFILE and friends: pause instead of spinning.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !p.track(c, true) {
			c.Close()
			<-sem
			return ErrServerClosed
		}
		go func() {
			defer p.wg.Done()
			defer func() { <-sem }()
			defer p.track(c, false)
			defer c.Close()
			if p.forward != nil {
				p.serveForward(c)
			} else {
				p.serveConn(c)
			}
		}()
	}
}

// track adds or removes an app connection from the set Close closes. It
// reports false when adding to a closed proxy. Adding also counts the
// handler in wg, under mu, so that Close's Wait sees every handler
// started before it.
func (p *Server) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.conns, c)
		return true
	}
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

// Close stops the listeners, closes every app connection and waits for
// the handlers to return. It does not close the opener.
func (p *Server) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	for ln := range p.listeners {
		ln.Close()
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// serveConn tells SOCKS5 from HTTP by the first byte and serves the
// connection. The caller closes c.
func (p *Server) serveConn(c net.Conn) {
	id := p.connIDs.Add(1)
	log := p.log.With("conn", id)
	c.SetReadDeadline(time.Now().Add(p.requestTimeout))
	br := bufio.NewReaderSize(c, peekBufferSize)
	first, err := br.Peek(1)
	if err != nil {
		log.Debug("app sent nothing", "error", err.Error())
		return
	}
	bc := &bufferedConn{Conn: c, r: br}
	switch first[0] {
	case socksVersion:
		err = p.serveSOCKS(bc, log)
	case 0x04:
		err = errors.New("SOCKS4 is not supported: use SOCKS5 (socks5h:// in curl)")
	default:
		err = p.serveHTTP(bc, log)
	}
	if err != nil && !isClosedConnError(err) {
		log.Debug("app connection ended", "error", err.Error())
	}
}

// openStreamFast opens a stream with fast open when the opener has it
// and the proxy is not strict; otherwise as openStream.
func (p *Server) openStreamFast(req transport.Request, log *slog.Logger) (net.Conn, error) {
	fo, ok := p.opener.(FastOpener)
	if !ok || p.strict {
		return p.openStream(req, log)
	}
	return p.openStreamWith(req, log, fo.OpenStreamFast)
}

// openStream opens a tunnel stream under the proxy's time limit, and logs
// a failure to reach the bridge (as opposed to the bridge's refusal).
func (p *Server) openStream(req transport.Request, log *slog.Logger) (net.Conn, error) {
	return p.openStreamWith(req, log, p.opener.OpenStream)
}

func (p *Server) openStreamWith(req transport.Request, log *slog.Logger, open func(context.Context, transport.Request) (net.Conn, error)) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.openTimeout)
	defer cancel()
	st, err := open(ctx, req)
	if err == nil {
		return st, nil
	}
	var se *transport.StatusError
	if errors.As(err, &se) {
		// The bridge answered: the destination's business, not ours.
		log.Debug("bridge refused stream", "command", req.Command.String(), "status", se.Status.String())
		return nil, err
	}
	if p.ctx.Err() != nil {
		return nil, err // shutting down: not the bridge's fault
	}
	// The error names the bridge, never the destination, so it may be
	// logged; throttled, because every app connection meets it while
	// the bridge is down.
	now := time.Now().UnixNano()
	if last := p.lastWarn.Load(); now-last >= int64(bridgeWarnInterval) && p.lastWarn.CompareAndSwap(last, now) {
		log.Warn("cannot open a stream through the bridge", "error", err.Error())
	} else {
		log.Debug("cannot open a stream through the bridge", "error", err.Error())
	}
	return nil, err
}

// relay copies between the app and the stream until both directions
// end, half-closing each side when the other stops sending, then closes
// the stream. The caller closes the app connection.
func relay(app, stream net.Conn) error {
	defer stream.Close()
	return transport.Relay(app, stream)
}

// relayFast is relay for a fast-opened stream: a refusal that arrives
// after the app was told yes ends its connection, and the log says why
// (the status, never the destination).
func relayFast(app, stream net.Conn, log *slog.Logger) error {
	err := relay(app, stream)
	var se *transport.StatusError
	if errors.As(err, &se) {
		log.Info("the bridge refused a connection the app had already started: closed it", "status", se.Status.String())
	}
	return err
}

// bufferedConn is an app connection whose first bytes were read into r:
// reads drain r first, so bytes the app sent right after its request
// (an early TLS ClientHello, a pipelined request) are not lost.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// Write writes to the app with sockcopy.Write: a download's frames go to
// the app's socket in raw writes (sockcopy/write.go).
func (c *bufferedConn) Write(b []byte) (int, error) { return sockcopy.Write(c.Conn, b) }

// NetConn returns the app's connection (transport.Abort resets it).
func (c *bufferedConn) NetConn() net.Conn { return c.Conn }

// WriteTo moves the app's bytes to w (a stream, when relaying): first
// those r holds, then the rest from the connection beneath, through
// sockcopy, which holds no buffer while the app is idle and moves a whole
// smux frame per read while it sends (io.Copy would hold 32 KiB for the
// connection's life, and cut uploads into half-size frames). The
// connection beneath may itself be a bufferedConn (an HTTP proxy's, whose
// reader reads through the SOCKS-or-HTTP peek): its own WriteTo then
// drains its buffer before the socket.
func (c *bufferedConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if k := c.r.Buffered(); k > 0 {
		b, _ := c.r.Peek(k)
		m, err := w.Write(b)
		c.r.Discard(m)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	var m int64
	var err error
	if inner, ok := c.Conn.(*bufferedConn); ok {
		m, err = inner.WriteTo(w)
	} else {
		m, err = sockcopy.Copy(w, c.Conn, c.Conn, nil)
	}
	return n + m, err
}

// CloseWrite half-closes the app connection, so relays keep half-closes.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// isClosedConnError reports the ordinary ends of a connection, which are
// not worth a log line.
func isClosedConnError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// errorf prefixes local proxy errors so they read well in a debug log.
func errorf(format string, args ...any) error {
	return fmt.Errorf("local proxy: "+format, args...)
}
