package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
)

// Fast open: a stream's request and the app's first bytes leave together,
// without waiting a round trip for the bridge's answer, as shadowsocks and
// naive do. A local proxy that uses it answers its app at once; the app's
// first bytes (a TLS ClientHello, an HTTP request) then follow the request
// on the same stream. The bridge answers as always, before any data: if it
// refused, the refusal arrives as the stream's first bytes and the first
// Read returns it as a *StatusError (PROTOCOL.md, "Streams"); whatever the
// client sent after the request is discarded with the stream.

// OpenStreamFast opens a stream and sends req without waiting for the
// bridge's answer. The returned conn's first Read (or WriteTo) reads the
// answer first: a refusal is returned there as a *StatusError, and the
// stream is closed. Use OpenStream where the answer must be known before
// anything else happens (a SOCKS client asking for exact errors, check).
func (s *Session) OpenStreamFast(req Request) (net.Conn, error) {
	b, err := req.MarshalBinary()
	if err != nil {
		return nil, err
	}
	st, err := s.openStream()
	if err != nil {
		return nil, fmt.Errorf("transport: opening stream: %w", err)
	}
	if _, err := st.Write(b); err != nil {
		s.closeStream(st)
		return nil, fmt.Errorf("transport: sending request: %w", err)
	}
	return &earlyStream{clientStream: s.clientStream(st)}, nil
}

// OpenStreamFast opens a fast stream on the shared session (see
// Session.OpenStreamFast), dialing the bridge first if there is no
// session.
func (c *Client) OpenStreamFast(ctx context.Context, req Request) (net.Conn, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, err
	}
	return s.OpenStreamFast(req)
}

// earlyStream is a stream whose reply has not been read yet.
type earlyStream struct {
	clientStream
	once sync.Once
	err  error // the reply's verdict, once read
}

// reply reads the bridge's answer, once.
func (e *earlyStream) reply() error {
	e.once.Do(func() {
		// Through the counting stream, as OpenStream reads it.
		if e.err = readReply(e.countedStream); e.err != nil {
			e.countedStream.Close()
		}
	})
	return e.err
}

func (e *earlyStream) Read(p []byte) (int, error) {
	if err := e.reply(); err != nil {
		return 0, err
	}
	return e.countedStream.Read(p)
}

// WriteTo keeps io.Copy on smux's fast path, after the reply.
func (e *earlyStream) WriteTo(w io.Writer) (int64, error) {
	if err := e.reply(); err != nil {
		return 0, err
	}
	return e.countedStream.WriteTo(w)
}

var _ net.Conn = (*earlyStream)(nil)
