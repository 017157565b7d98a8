package egress

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/mirage-pt/mirage/transport"
)

// relay copies between the client's stream and the destination until both
// directions have ended, as transport.Relay does (half-closes passed on,
// a failed copy or the end of the session ending both), but holding no
// buffer while the connection is idle: an idle stream costs its
// goroutines and nothing else, where io.Copy holds 32 KiB each way for
// the stream's whole life (64 MiB for a thousand idle streams).
//
// dst is the destination as the handler counts it (stats wrap it); raw is
// the socket beneath, which relay waits on for readability and reads
// without waiting while it has bytes queued, counting them with countDown.
// A write to dst that takes nothing for stall ends the relay.
func relay(st *transport.Stream, dst, raw net.Conn, countDown func(int), stall time.Duration) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		// A copy blocked reading one side after a half-close of the
		// other would otherwise outlive the session.
		select {
		case <-st.SessionDone():
			st.Close()
			dst.Close()
		case <-done:
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- toDestination(dst, st, stall) }()
	err := fromDestination(st, dst, raw, countDown)
	// The first direction to fail closes the other, whose error then
	// says only that: the log gets the first.
	if err2 := <-errc; err2 != nil && (err == nil || errors.Is(err, net.ErrClosed)) {
		err = err2
	}
	return err
}

// toDestination copies the client's stream to dst, failing once a write
// to dst takes nothing for stall. The transport's streams (smux) write
// their own buffered frames out through WriteTo, so no buffer of ours is
// held.
func toDestination(dst net.Conn, st *transport.Stream, stall time.Duration) error {
	w := stallWriter{dst, stall}
	var err error
	if wt, ok := st.Conn.(io.WriterTo); ok {
		_, err = wt.WriteTo(w)
	} else {
		_, err = io.Copy(w, st)
	}
	return endCopy(dst, st, err)
}

// stallWriter writes to a connection, failing a write that waits more
// than stall for the connection to take anything.
type stallWriter struct {
	net.Conn
	stall time.Duration
}

func (w stallWriter) Write(p []byte) (int, error) {
	written := 0
	for {
		w.SetWriteDeadline(time.Now().Add(w.stall))
		n, err := w.Conn.Write(p[written:])
		written += n
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return written, err
		}
		if n == 0 {
			// Said so in the bridge's debug log ("relay ended"): an
			// operator then knows the stream ended on the destination.
			return written, fmt.Errorf("the destination took nothing of what the client sent for %v (a hung server; -dest-stall-timeout): %w", w.stall, err)
		}
		// It took some: a slow destination, not a stuck one. Go on
		// with a new deadline.
	}
}

// fromDestination copies src to the client's stream with sockcopy: no
// buffer while raw is idle, a whole smux frame per read while it is busy.
// count counts what sockcopy reads from raw, which bypasses src (the
// counting wrapper).
func fromDestination(st *transport.Stream, src, raw net.Conn, count func(int)) error {
	_, err := sockcopy.Copy(st, src, raw, count)
	return endCopy(st, src, err)
}

// endCopy ends one direction as transport.Relay does: after a clean end of
// src, half-close dst; after an error, close both so the other direction
// ends too, the client's stream abortively (transport.Stream.Abort), so
// that the client ends its app's connection as a reset would.
func endCopy(dst, src net.Conn, err error) error {
	if err != nil {
		transport.Abort(dst)
		transport.Abort(src)
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
