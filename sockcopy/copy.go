// Package sockcopy copies from sockets into tunnel streams without
// holding a buffer while the socket is idle, and in chunks of a whole
// smux frame while it is busy. The bridge's egress copies destinations
// to streams with it, and the local proxy copies apps to streams: a
// thousand idle connections then hold no buffer at all, where io.Copy
// holds 32 KiB each for a connection's whole life.
//
// Read and Write read and write a socket as c.Read and c.Write do, but
// with system calls the Go scheduler does not track (raw_linux.go says
// why): the transport's carriers, the local proxy's apps and the bridge's
// destinations go through them.
package sockcopy

import (
	"io"
	"net"
	"sync"
)

// Chunk is the most one read moves: one smux frame of the largest size
// Mirage sends (transport's maxFrameSize is this), so that each read
// becomes one frame and one hand-off inside smux. 64 bytes short of
// 64 KiB, so that a frame fits one loopback TCP segment (transport/mux.go
// says why).
const Chunk = 64<<10 - 64

// buffers pools Copy's buffers: each copy takes one only while it moves
// bytes. Pointers to slices, so that Put does not allocate.
var buffers = sync.Pool{New: func() any {
	b := make([]byte, Chunk)
	return &b
}}

// Copy copies src to dst until src ends (then it returns nil, as io.Copy
// does) or a read or a write fails. raw is the socket beneath src (src
// itself, or the socket a counting wrapper src reads): Copy waits until
// raw has something to read before it takes a pooled buffer, reads once
// through src, and while reads fill the buffer reads raw again at once
// without waiting (ReadNow) instead of peeking first, so that a bulk
// transfer costs one system call per chunk, not two. count, if not nil,
// is told how many bytes those reads of raw took, which src did not see.
// Where raw is not a socket (or on systems without the peeks), Copy reads
// src in the ordinary way, holding a buffer while it waits.
//
// A dst that is a Filler, over a socket raw, has the bytes read straight
// into its own memory (fill) instead.
func Copy(dst io.Writer, src, raw net.Conn, count func(int)) (int64, error) {
	if f, ok := dst.(Filler); ok && canReadNow(raw) {
		return fill(f, raw, count)
	}
	var total int64
	for {
		if err := WaitReadable(raw); err != nil {
			return total, err
		}
		n, full, err := readOnce(dst, src)
		total += int64(n)
		for err == nil && full {
			n, full, err = readQueued(dst, raw, count)
			total += int64(n)
		}
		switch {
		case err == io.EOF:
			return total, nil
		case err != nil:
			return total, err
		}
	}
}

// readOnce moves what one Read of src returns to dst through a pooled
// buffer, reports whether it filled the buffer, and returns the error of
// the write, or else of the read.
func readOnce(dst io.Writer, src net.Conn) (int, bool, error) {
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	n, err := src.Read(*buf)
	if n > 0 {
		if m, werr := dst.Write((*buf)[:n]); werr != nil {
			return m, false, werr
		}
	}
	return n, n == Chunk, err
}

// readQueued moves what raw's socket holds now, up to a buffer, to dst,
// without waiting; it reports whether it filled the buffer (false, nil:
// nothing was queued, or raw is not a socket).
func readQueued(dst io.Writer, raw net.Conn, count func(int)) (int, bool, error) {
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	n, err := ReadNow(raw, *buf)
	if n > 0 {
		if count != nil {
			count(n)
		}
		if m, werr := dst.Write((*buf)[:n]); werr != nil {
			return m, false, werr
		}
	}
	return n, n == Chunk, err
}

// A Filler is a destination that has Copy read straight into memory of
// its own: the bytes a socket holds go from the kernel to where the
// destination keeps them, without passing through Copy's buffer. (A
// Mirage stream reads into a chunk of its session's send queue, which
// keeps every byte until the peer acknowledges it: a copy less per byte
// sent.)
type Filler interface {
	// Fill calls read at most once, with room of its own for 1 to
	// Chunk bytes, and keeps the n bytes read placed at its start. It
	// returns n with read's error, or an error of its own (the
	// destination was closed, its deadline passed) without calling
	// read. read returns 0, nil when there is nothing to read now, and
	// 0, io.EOF at the end.
	Fill(read func(p []byte) (int, error)) (int, error)
}

// fill is Copy into a Filler: it waits until raw has something to read,
// then has f read it, again at once while reads fill the room f gives.
func fill(f Filler, raw net.Conn, count func(int)) (int64, error) {
	var total int64
	var full bool
	read := func(p []byte) (int, error) {
		n, err := ReadNow(raw, p)
		full = n == len(p)
		return n, err
	}
	for {
		if err := WaitReadable(raw); err != nil {
			return total, err
		}
		for {
			full = false
			n, err := f.Fill(read)
			if n > 0 {
				total += int64(n)
				if count != nil {
					count(n)
				}
			}
			switch {
			case err == io.EOF:
				return total, nil
			case err != nil:
				return total, err
			}
			if !full {
				break // raw has nothing more now, or f took less than it held
			}
		}
	}
}
