// Package mobile is a small API over the Mirage client for apps, shaped
// for gomobile (gomobile bind makes Java/Kotlin and Objective-C/Swift
// bindings of it): only strings, ints, bools, byte slices, errors,
// structs of those, and interfaces with such methods cross it.
//
// An app starts a client from a mirage:// link with a local port and
// credentials, gets its status through a callback, and stops it:
//
//	opts := mobile.NewOptions()
//	opts.Link = "mirage://…"
//	opts.User, opts.Pass = "u1", "secret" // or mobile.NewCredentials()
//	c, err := mobile.Start(opts, listener)
//	… point the app's traffic at SOCKS5 127.0.0.1:c.Port() …
//	c.Stop()
//
// The client is the one mirage-client runs: the same transport, the same
// SOCKS5/HTTP proxy (localproxy) with the same authentication, and, if
// asked for, the WhatsApp ports.
package mobile

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirage-pt/mirage/cores"
	"github.com/mirage-pt/mirage/localproxy"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/link"
)

// States a client reports.
const (
	StateConnecting = "connecting" // started, no session to the bridge yet
	StateConnected  = "connected"  // the bridge answered; streams open
	StateError      = "error"      // the last try failed; LastError says why; it retries
	StateStopped    = "stopped"    // Stop was called
)

// statusInterval is how often at most the listener hears about byte
// counts that changed (state changes are reported at once).
const statusInterval = time.Second

// StatusListener is implemented by the app to hear about a client: its
// state (one of the State constants), the bytes carried up (app to
// bridge) and down since Start, and the last error in plain words ("" if
// none). It is called from a goroutine of the client, one call at a time,
// and must not block for long.
type StatusListener interface {
	OnStatus(state string, bytesUp, bytesDown int64, lastError string)
}

// Options say how to start a client. Make them with NewOptions, which
// sets the defaults.
type Options struct {
	// Link is the bridge's mirage:// link; required.
	Link string
	// Host is the address the local proxy listens on: "127.0.0.1"
	// (default) for apps on this device only.
	Host string
	// Port is the local proxy's port; 0 picks a free one (Client.Port
	// says which).
	Port int
	// User and Pass are what apps must give (SOCKS5 user/password, HTTP
	// Proxy-Authorization). Both empty means no authentication, which
	// lets every app on the device use the proxy and learn the bridge:
	// keep them set (NewCredentials makes good ones).
	User, Pass string
	// WhatsAppChatPort and WhatsAppMediaPort, both set, open the
	// WhatsApp endpoint on Host (5222 and 7777 are the usual ones); 0
	// means none.
	WhatsAppChatPort, WhatsAppMediaPort int
	// Cores is how many CPU cores the Go code of the app's library may
	// use at once (GOMAXPROCS: all of it, this package and any other Go
	// package bound into the same library); 0 leaves the Go runtime's
	// choice, every core. NewOptions sets 1, as mirage-client's -procs
	// does: one core carries more than a phone's link, and more costs
	// CPU, and battery, in wake-ups of idle cores (package cores).
	Cores int
}

// NewOptions returns options with the defaults: the local proxy on
// 127.0.0.1 with a port picked at Start, no WhatsApp endpoint, and one
// core. The app sets Link and the credentials.
func NewOptions() *Options {
	return &Options{Host: "127.0.0.1", Cores: 1}
}

// NewCredentials returns random credentials as "USER:PASS" (user name
// and password have no colon). An app makes them once and keeps them.
func NewCredentials() (string, error) {
	c, err := localproxy.NewCredentials(nil)
	if err != nil {
		return "", err
	}
	return c.User + ":" + c.Pass, nil
}

// TelegramLink returns the tg://socks link that points Telegram at a
// local proxy on host:port with these credentials.
func TelegramLink(host string, port int, user, pass string) string {
	var c *localproxy.Credentials
	if user != "" {
		c = &localproxy.Credentials{User: user, Pass: pass}
	}
	return localproxy.TelegramLink(host, port, c)
}

// Client is a running Mirage client. Its methods are safe for concurrent
// use.
type Client struct {
	client   *transport.Client
	proxy    *localproxy.Server
	whatsapp *localproxy.WhatsApp
	port     int
	listener StatusListener

	up, down atomic.Int64

	ctx    context.Context // ends with Stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // Serve loops, the first dial, the reporter

	mu      sync.Mutex // guards the fields below
	state   string
	lastErr string
	stopped bool

	changed chan struct{} // state changed: report now (capacity 1)
}

// Start checks the options, opens the local proxy (and the WhatsApp
// ports) and starts connecting to the bridge; it does not wait for the
// bridge. listener may be nil. An error says what is wrong with the
// options or which port could not be opened.
func Start(opts *Options, listener StatusListener) (*Client, error) {
	if opts == nil {
		return nil, errors.New("mobile: no options (use NewOptions)")
	}
	l, err := link.Parse(opts.Link)
	if err != nil {
		return nil, fmt.Errorf("mobile: %w", err)
	}
	var creds *localproxy.Credentials
	switch {
	case opts.User != "":
		if creds, err = localproxy.ParseCredentials(opts.User + ":" + opts.Pass); err != nil {
			return nil, fmt.Errorf("mobile: %w", err)
		}
	case opts.Pass != "":
		return nil, errors.New("mobile: a password without a user name: set User too")
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	if (opts.WhatsAppChatPort == 0) != (opts.WhatsAppMediaPort == 0) {
		return nil, errors.New("mobile: set both WhatsApp ports, or neither")
	}
	if opts.Cores < 0 {
		return nil, errors.New("mobile: Cores must be a number of cores, or 0 for all of them")
	}
	cores.Use(opts.Cores)
	tc, err := transport.NewClient(transport.ClientConfig{Address: l.Address, Params: l.Params})
	if err != nil {
		return nil, fmt.Errorf("mobile: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(opts.Port)))
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("mobile: cannot open the local proxy port: %w", err)
	}
	var chatLn, mediaLn net.Listener
	if opts.WhatsAppChatPort != 0 {
		chatLn, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(opts.WhatsAppChatPort)))
		if err == nil {
			mediaLn, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(opts.WhatsAppMediaPort)))
			if err != nil {
				chatLn.Close()
			}
		}
		if err != nil {
			ln.Close()
			tc.Close()
			return nil, fmt.Errorf("mobile: cannot open the WhatsApp ports: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		client:   tc,
		port:     ln.Addr().(*net.TCPAddr).Port,
		listener: listener,
		ctx:      ctx,
		cancel:   cancel,
		state:    StateConnecting,
		changed:  make(chan struct{}, 1),
	}
	opener := &countingOpener{c: c}
	c.proxy = localproxy.NewServer(localproxy.Config{Opener: opener, Auth: creds})
	c.serve(func() error { return c.proxy.Serve(ln) })
	if chatLn != nil {
		c.whatsapp = localproxy.NewWhatsApp(localproxy.WhatsAppConfig{Opener: opener})
		c.serve(func() error { return c.whatsapp.Serve(chatLn, mediaLn) })
	}
	c.wg.Add(2)
	go c.report()
	go func() {
		// Connect now, so the app shows the bridge's state before the
		// first stream; failures are retried by the next stream.
		defer c.wg.Done()
		_, err := tc.Session(ctx)
		c.result(err)
	}()
	c.notify()
	return c, nil
}

// serve runs a Serve loop until Stop.
func (c *Client) serve(f func() error) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := f(); err != nil && !errors.Is(err, localproxy.ErrServerClosed) {
			c.fail(fmt.Errorf("the local proxy stopped: %w", err))
		}
	}()
}

// Port returns the local proxy's port.
func (c *Client) Port() int { return c.port }

// State returns the current state (one of the State constants).
func (c *Client) State() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// LastError returns the last error in plain words, or "".
func (c *Client) LastError() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// BytesUp returns the bytes carried from apps to the bridge since Start.
func (c *Client) BytesUp() int64 { return c.up.Load() }

// BytesDown returns the bytes carried from the bridge to apps since Start.
func (c *Client) BytesDown() int64 { return c.down.Load() }

// Stop closes the local proxy, every connection through it and the
// session to the bridge, reports StateStopped, and returns when all of
// the client's goroutines have ended. Calling it again does nothing.
func (c *Client) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	c.state = StateStopped
	c.mu.Unlock()
	c.cancel()
	c.client.Close() // first: it ends a dial in flight, which handlers may wait on
	c.proxy.Close()
	if c.whatsapp != nil {
		c.whatsapp.Close()
	}
	c.wg.Wait()
	if c.listener != nil {
		c.listener.OnStatus(StateStopped, c.up.Load(), c.down.Load(), c.LastError())
	}
	return nil
}

// result records the outcome of reaching the bridge.
func (c *Client) result(err error) {
	var se *transport.StatusError
	switch {
	case err == nil, errors.As(err, &se):
		// The bridge answered (a refusal is the destination's business).
		c.set(StateConnected, "", false)
	default:
		c.fail(err)
	}
}

// fail records an error, unless the client is stopping.
func (c *Client) fail(err error) {
	if c.ctx.Err() != nil {
		return
	}
	c.set(StateError, plainError(err), true)
}

func (c *Client) set(state, lastErr string, setErr bool) {
	c.mu.Lock()
	if c.stopped || (c.state == state && (!setErr || c.lastErr == lastErr)) {
		c.mu.Unlock()
		return
	}
	c.state = state
	if setErr {
		c.lastErr = lastErr
	}
	c.mu.Unlock()
	c.notify()
}

// notify asks the reporter to report now.
func (c *Client) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// report calls the listener on every change of state, and every
// statusInterval while bytes move, until Stop.
func (c *Client) report() {
	defer c.wg.Done()
	if c.listener == nil {
		<-c.ctx.Done()
		return
	}
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	var lastUp, lastDown int64 = -1, -1
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.changed:
		case <-t.C:
			if c.up.Load() == lastUp && c.down.Load() == lastDown {
				continue
			}
		}
		c.mu.Lock()
		state, lastErr, stopped := c.state, c.lastErr, c.stopped
		c.mu.Unlock()
		if stopped {
			return // Stop reports the end itself
		}
		lastUp, lastDown = c.up.Load(), c.down.Load()
		c.listener.OnStatus(state, lastUp, lastDown, lastErr)
	}
}

// plainError says what went wrong in words for a status line.
func plainError(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, transport.ErrNotBridge):
		return "The server answered like an ordinary website, not this bridge: check the link (key and id), and that this phone's clock is right."
	case errors.Is(err, transport.ErrCertificate):
		return "The server's certificate is not the bridge's: someone may be intercepting this network, or the link is old. Get a fresh link from whoever gave you this one."
	case errors.Is(err, transport.ErrNotTLS13):
		return "The address in the link is not a Mirage bridge: check the link."
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "The bridge did not answer in time: the network may be slow or blocking it. Mirage keeps trying."
	}
	return "Cannot reach the bridge (" + err.Error() + "). Mirage keeps trying."
}

// countingOpener opens streams through the client, records whether the
// bridge could be reached, and counts the bytes on each stream.
type countingOpener struct{ c *Client }

func (o *countingOpener) OpenStream(ctx context.Context, req transport.Request) (net.Conn, error) {
	st, err := o.c.client.OpenStream(ctx, req)
	o.c.result(err)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: st, c: o.c}, nil
}

// OpenStreamFast is OpenStream with fast open (localproxy.FastOpener).
func (o *countingOpener) OpenStreamFast(ctx context.Context, req transport.Request) (net.Conn, error) {
	st, err := o.c.client.OpenStreamFast(ctx, req)
	o.c.result(err)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: st, c: o.c}, nil
}

// countingConn counts what is read (down) and written (up).
type countingConn struct {
	net.Conn
	c *Client
}

func (s *countingConn) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	s.c.down.Add(int64(n))
	return n, err
}

func (s *countingConn) Write(b []byte) (int, error) {
	n, err := s.Conn.Write(b)
	s.c.up.Add(int64(n))
	return n, err
}

// CloseWrite keeps half-closes working through the wrapper.
func (s *countingConn) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return s.Conn.Close()
}

// SessionDone passes on the stream's session end, which the relay
// watches (transport.Relay).
func (s *countingConn) SessionDone() <-chan struct{} {
	if d, ok := s.Conn.(interface{ SessionDone() <-chan struct{} }); ok {
		return d.SessionDone()
	}
	return nil
}
