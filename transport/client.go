package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/xtaci/smux"

	"github.com/mirage-pt/mirage/transport/safelog"
)

// Session is one authenticated connection to a bridge carrying multiplexed
// streams. It is safe for concurrent use.
//
// The layers, from the wire up:
//
//	TCP connection to the bridge
//	TLS 1.3, opened with a browser's ClientHello that carries the tag
//	openings: the server's proof checked, padding discarded
//	batchConn: coalesces smux frames into full TLS records; frames and pads them
//	smux v2 session: streams with per-stream flow control
//	stream request and reply, then the user's bytes
//
// smux needs nothing but a reliable byte stream under it, so a carrier that
// spans several connections can replace the TLS connection later.
type Session struct {
	mux            *smux.Session
	requestTimeout time.Duration
}

// Dial connects to the bridge, authenticates it and returns a session.
func Dial(ctx context.Context, cfg *ClientConfig) (*Session, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithDeadline(ctx, deadlineFrom(ctx, cfg.handshakeTimeout()))
	defer cancel()
	dial := cfg.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("transport: cannot reach the bridge: %w", err)
	}
	dl, _ := ctx.Deadline()
	raw.SetDeadline(dl)
	tc, err := clientHandshake(ctx, raw, cfg)
	if err != nil {
		raw.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrNotBridge) {
			return nil, fmt.Errorf("transport: bridge handshake timed out: %w", err)
		}
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	mux, err := smux.Client(newBatchConn(tc), muxConfig())
	if err != nil {
		tc.Close()
		return nil, err
	}
	return &Session{mux: mux, requestTimeout: cfg.requestTimeout()}, nil
}

// OpenStream opens a stream, sends req and waits for the bridge's answer.
// A refusal is a *StatusError carrying the bridge's status. The returned
// conn also has CloseWrite. A timeout or a cancelled ctx costs only this
// stream: on a slow downlink a reply may wait behind other streams' data,
// and that is no reason to cut them off. Any other failure means the
// carrier is dead (smux does not close a session whose carrier failed, so
// this does), and IsClosed reports true from then on.
func (s *Session) OpenStream(ctx context.Context, req Request) (net.Conn, error) {
	b, err := req.MarshalBinary()
	if err != nil {
		return nil, err
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		s.mux.Close()
		return nil, fmt.Errorf("transport: opening stream: %w", err)
	}
	st.SetDeadline(deadlineFrom(ctx, s.requestTimeout))
	// Cancelling ctx aborts the wait for the reply.
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) (net.Conn, error) {
		st.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A refusal or a timeout costs only this stream. Anything else,
		// EOF included (a bridge answers every request, even one it
		// cannot read), means the carrier failed.
		var se *StatusError
		var ne net.Error
		streamOnly := errors.As(err, &se) || (errors.As(err, &ne) && ne.Timeout())
		if !streamOnly {
			s.mux.Close()
		}
		return nil, err
	}
	if _, err := st.Write(b); err != nil {
		return fail(fmt.Errorf("transport: sending request: %w", err))
	}
	if err := readReply(st); err != nil {
		return fail(err)
	}
	if !stop() {
		st.Close()
		return nil, ctx.Err()
	}
	st.SetDeadline(time.Time{})
	return &clientStream{Stream: st, session: s.mux}, nil
}

// clientStream is a stream a Session opened: a smux stream (net.Conn,
// CloseWrite, WriteTo) that also knows when its session ends.
type clientStream struct {
	*smux.Stream
	session *smux.Session
}

// SessionDone returns a channel closed when the stream's session ends.
func (c *clientStream) SessionDone() <-chan struct{} { return c.session.CloseChan() }

// IsClosed reports whether the session has died or been closed.
func (s *Session) IsClosed() bool { return s.mux.IsClosed() }

// CloseChan is closed when the session dies.
func (s *Session) CloseChan() <-chan struct{} { return s.mux.CloseChan() }

// NumStreams returns the number of open streams.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Close closes the session and all its streams.
func (s *Session) Close() error { return s.mux.Close() }

// Redial backoff bounds: a bridge that restarts is found again within
// maxRedialBackoff, and a bridge that is down is not hammered.
const (
	minRedialBackoff = 500 * time.Millisecond
	maxRedialBackoff = 10 * time.Second
)

// Client shares one session to a bridge among all streams: it dials on the
// first OpenStream, redials when the session dies, and backs off after
// failures. However many streams open at once, there is at most one dial in
// flight. Safe for concurrent use.
type Client struct {
	cfg ClientConfig

	mu       sync.Mutex
	sess     *Session
	dialing  chan struct{} // closed when the dial in flight ends
	lastErr  error
	retryAt  time.Time
	backoff  time.Duration
	closed   bool
	dialStop context.CancelFunc // cancels a dial in flight on Close
}

// NewClient checks cfg and returns a client. It does not dial.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &Client{cfg: cfg}, nil
}

// Session returns the live session, dialing one if there is none.
func (c *Client) Session(ctx context.Context) (*Session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if c.sess != nil && !c.sess.IsClosed() {
			s := c.sess
			c.mu.Unlock()
			return s, nil
		}
		if ch := c.dialing; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if wait := time.Until(c.retryAt); wait > 0 && c.lastErr != nil {
			err := c.lastErr
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (next try in %v)", err, wait.Round(100*time.Millisecond))
		}
		ch := make(chan struct{})
		c.dialing = ch
		// The dial serves every caller, so no caller's cancellation ends
		// it: it runs under its own deadline, and Close cancels it. Every
		// caller, this one too, waits for it or for its own ctx.
		dctx, cancel := context.WithCancel(context.Background())
		c.dialStop = cancel
		c.mu.Unlock()
		go c.dial(dctx, cancel, ch)
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c.mu.Lock()
		s, err := c.sess, c.lastErr
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if s == nil {
			return nil, ErrClosed
		}
		return s, nil
	}
}

// dial makes a new session, records the outcome and closes ch.
func (c *Client) dial(ctx context.Context, cancel context.CancelFunc, ch chan struct{}) {
	s, err := Dial(ctx, &c.cfg)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(ch)
	c.dialing = nil
	c.dialStop = nil
	if err == nil && c.closed {
		s.Close()
		err = ErrClosed
	}
	if err != nil {
		c.lastErr = err
		c.backoff = min(max(2*c.backoff, minRedialBackoff), maxRedialBackoff)
		c.retryAt = time.Now().Add(c.backoff)
		c.cfg.logger().Debug("dial failed", "error", safelog.Error(err, false), "backoff", c.backoff)
		return
	}
	if c.sess != nil {
		c.sess.Close()
	}
	c.sess, c.lastErr, c.backoff = s, nil, 0
	c.cfg.logger().Debug("session open")
}

// OpenStream opens a stream on the shared session (see Session.OpenStream).
// A session that died since it was last used is replaced first.
func (c *Client) OpenStream(ctx context.Context, req Request) (net.Conn, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.OpenStream(ctx, req)
	if err != nil && s.IsClosed() && ctx.Err() == nil {
		// The session died under us (say the bridge restarted): one
		// fresh session gets one more try.
		if s, err2 := c.Session(ctx); err2 == nil {
			return s.OpenStream(ctx, req)
		}
	}
	return st, err
}

// Close closes the session and makes further calls fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.dialStop != nil {
		c.dialStop()
	}
	if c.sess != nil {
		return c.sess.Close()
	}
	return nil
}

var _ io.Closer = (*Client)(nil)
