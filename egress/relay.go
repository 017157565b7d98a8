package egress

import (
	"io"
	"net"

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
func relay(st *transport.Stream, dst, raw net.Conn, countDown func(int)) error {
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
	go func() { errc <- toDestination(dst, st) }()
	err := fromDestination(st, dst, raw, countDown)
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

// toDestination copies the client's stream to dst. The transport's
// streams (smux) write their own buffered frames out through WriteTo, so
// no buffer of ours is held.
func toDestination(dst net.Conn, st *transport.Stream) error {
	var err error
	if wt, ok := st.Conn.(io.WriterTo); ok {
		_, err = wt.WriteTo(dst)
	} else {
		_, err = io.Copy(dst, st)
	}
	return endCopy(dst, st, err)
}

// fromDestination copies src to the client's stream, taking a pooled
// buffer only once raw has something to read. While reads fill the
// buffer, more is likely queued: the next read is tried at once, without
// waiting (readNow), instead of peeking first, so that a bulk download
// costs one system call per chunk, not two. count counts what readNow
// reads, which bypasses src (the counting wrapper).
func fromDestination(st *transport.Stream, src, raw net.Conn, count func(int)) error {
	for {
		if err := waitReadable(raw); err != nil {
			return endCopy(st, src, err)
		}
		full, err := readOnce(st, src)
		for err == nil && full {
			full, err = readQueued(st, raw, count)
		}
		switch {
		case err == io.EOF:
			return endCopy(st, src, nil)
		case err != nil:
			return endCopy(st, src, err)
		}
	}
}

// readOnce moves what one Read of src returns to st through a pooled
// buffer, reports whether it filled the buffer, and returns the error of
// the write, or else of the read.
func readOnce(st *transport.Stream, src net.Conn) (bool, error) {
	buf := getBuffer()
	defer putBuffer(buf)
	n, err := src.Read((*buf)[:relayChunk])
	if n > 0 {
		if _, werr := st.Write((*buf)[:n]); werr != nil {
			return false, werr
		}
	}
	return n == relayChunk, err
}

// readQueued moves what raw's socket holds now, up to a buffer, to st,
// without waiting; it reports whether it filled the buffer (false, nil:
// nothing was queued, or raw is not a socket).
func readQueued(st *transport.Stream, raw net.Conn, count func(int)) (bool, error) {
	buf := getBuffer()
	defer putBuffer(buf)
	n, err := readNow(raw, (*buf)[:relayChunk])
	if n > 0 {
		count(n)
		if _, werr := st.Write((*buf)[:n]); werr != nil {
			return false, werr
		}
	}
	return n == relayChunk, err
}

// relayChunk is the most one read moves: one smux frame of the largest
// size (transport's maxFrameSize), so that a download goes to the client
// in as few frames as smux allows.
const relayChunk = 64<<10 - 1

// endCopy ends one direction as transport.Relay does: after a clean end of
// src, half-close dst; after an error, close both so the other direction
// ends too.
func endCopy(dst, src net.Conn, err error) error {
	if err != nil {
		dst.Close()
		src.Close()
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
