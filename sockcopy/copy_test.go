package sockcopy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingConn counts what is read through it, as egress's statistics do.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// burstySource returns the reading end of a loopback TCP connection and
// the n random bytes its other end sends, in writes of random sizes with
// pauses (so that a copy waits for readability between bursts, and reads
// without waiting during them), then half-closes.
func burstySource(t *testing.T, n int) (net.Conn, []byte) {
	src, w := tcpPair(t)
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	go func() {
		rest := data
		for len(rest) > 0 {
			k := min(len(rest), 1+rand.IntN(3*Chunk))
			w.Write(rest[:k])
			rest = rest[k:]
			if rand.IntN(8) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		w.(*net.TCPConn).CloseWrite()
	}()
	return src, data
}

// TestCopyMovesEverythingAndCountsIt sends a bulk transfer in writes of
// random sizes, with pauses (so that Copy waits for readability between
// bursts, and reads without waiting during them), and checks that every
// byte arrives in order, that Copy returns nil at the end, and that the
// bytes read through src and those read beneath it add up.
func TestCopyMovesEverythingAndCountsIt(t *testing.T) {
	src, data := burstySource(t, 8<<20)
	var seen, direct atomic.Int64
	var got bytes.Buffer
	n, err := Copy(&got, countingConn{src, &seen}, src, func(k int) { direct.Add(int64(k)) })
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("Copy moved %d bytes (equal: %v), want %d", n, bytes.Equal(got.Bytes(), data), len(data))
	}
	if seen.Load()+direct.Load() != n {
		t.Fatalf("read through src %d + beneath it %d != %d", seen.Load(), direct.Load(), n)
	}
	t.Logf("%d bytes read through src, %d without waiting beneath it", seen.Load(), direct.Load())
}

// TestCopyFromNonSocket: a src that is not a socket (a pipe) is read in
// the ordinary way.
func TestCopyFromNonSocket(t *testing.T) {
	a, b := net.Pipe()
	data := bytes.Repeat([]byte("mirage "), 50000)
	go func() {
		a.Write(data)
		a.Close()
	}()
	var got bytes.Buffer
	if _, err := Copy(&got, b, b, nil); err != nil && err != io.ErrClosedPipe {
		t.Fatalf("Copy: %v", err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("got %d bytes, want %d", got.Len(), len(data))
	}
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrShortWrite }

// TestCopyReturnsTheWriteError: a failed write ends the copy with its
// error, not the read's.
func TestCopyReturnsTheWriteError(t *testing.T) {
	src, w := tcpPair(t)
	go w.Write(make([]byte, 1000))
	if _, err := Copy(failingWriter{}, src, src, nil); err != io.ErrShortWrite {
		t.Fatalf("Copy = %v, want the write's error", err)
	}
}

// sliceFiller is a Filler that keeps what is read into it, offering room
// of a random length up to limit each time; its Write, for the ordinary
// path, appends.
type sliceFiller struct {
	got    []byte
	limit  int
	fills  int
	closed error
}

func (f *sliceFiller) Write(p []byte) (int, error) {
	f.got = append(f.got, p...)
	return len(p), nil
}

func (f *sliceFiller) Fill(read func([]byte) (int, error)) (int, error) {
	if f.closed != nil {
		return 0, f.closed
	}
	room := 1 + rand.IntN(f.limit)
	start := len(f.got)
	f.got = append(f.got, make([]byte, room)...)
	n, err := read(f.got[start:])
	f.got = f.got[:start+n]
	f.fills++
	return n, err
}

// TestCopyIntoFillerMovesEverything: a Filler gets every byte, in order,
// read straight into its room, whatever its size; Copy returns nil at
// the end, and count is told of every byte, since none is read through
// src.
func TestCopyIntoFillerMovesEverything(t *testing.T) {
	src, data := burstySource(t, 8<<20)
	var seen, direct atomic.Int64
	f := &sliceFiller{limit: Chunk}
	n, err := Copy(f, countingConn{src, &seen}, src, func(k int) { direct.Add(int64(k)) })
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if n != int64(len(data)) || !bytes.Equal(f.got, data) {
		t.Fatalf("Copy moved %d bytes (equal: %v), want %d", n, bytes.Equal(f.got, data), len(data))
	}
	if seen.Load() != 0 || direct.Load() != n {
		t.Fatalf("read through src %d, beneath it %d; want 0 and %d", seen.Load(), direct.Load(), n)
	}
	if f.fills == 0 {
		t.Fatal("Copy never filled the Filler")
	}
	t.Logf("%d fills", f.fills)
}

// TestCopyReturnsTheFillerError: a Filler that refuses (its stream was
// closed) ends the copy with its error.
func TestCopyReturnsTheFillerError(t *testing.T) {
	src, w := tcpPair(t)
	go w.Write(make([]byte, 1000))
	if _, err := Copy(&sliceFiller{limit: Chunk, closed: io.ErrClosedPipe}, src, src, nil); err != io.ErrClosedPipe {
		t.Fatalf("Copy = %v, want the Filler's error", err)
	}
}

// TestCopyFillerFromNonSocket: from a src that is not a socket, a Filler
// is written to in the ordinary way.
func TestCopyFillerFromNonSocket(t *testing.T) {
	a, b := net.Pipe()
	data := bytes.Repeat([]byte("mirage "), 50000)
	go func() {
		a.Write(data)
		a.Close()
	}()
	f := &sliceFiller{limit: Chunk}
	if _, err := Copy(f, b, b, nil); err != nil && err != io.ErrClosedPipe {
		t.Fatalf("Copy: %v", err)
	}
	if !bytes.Equal(f.got, data) || f.fills != 0 {
		t.Fatalf("got %d bytes in %d fills, want %d written", len(f.got), f.fills, len(data))
	}
}

// TestReadNowSaysWhatTheSocketHolds checks ReadNow's answers, which Copy
// and the Fillers rely on, for each state of a socket: nothing queued
// (0, nil: no wait), data, the peer's end (io.EOF), and a reset (an
// error naming the read).
func TestReadNowSaysWhatTheSocketHolds(t *testing.T) {
	if !canReadNow(&net.TCPConn{}) {
		t.Skip("no ReadNow on this system")
	}
	a, b := tcpPair(t)
	p := make([]byte, 16)
	if n, err := ReadNow(b, p); n != 0 || err != nil {
		t.Fatalf("nothing queued: got %d, %v; want 0, nil", n, err)
	}
	if _, err := a.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := WaitReadable(b); err != nil {
		t.Fatal(err)
	}
	if n, err := ReadNow(b, p); n != 3 || err != nil || string(p[:n]) != "abc" {
		t.Fatalf("3 bytes queued: got %d %q, %v", n, p[:max(n, 0)], err)
	}
	a.(*net.TCPConn).CloseWrite()
	if err := WaitReadable(b); err != nil {
		t.Fatal(err)
	}
	if n, err := ReadNow(b, p); n != 0 || err != io.EOF {
		t.Fatalf("after the peer's end: got %d, %v; want 0, EOF", n, err)
	}

	c, d := tcpPair(t)
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // a reset
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := ReadNow(d, p)
		if err != nil {
			if n != 0 || !strings.Contains(err.Error(), "read") || !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("after a reset: got %d, %v; want 0 and the read's ECONNRESET", n, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no error 5 s after a reset (last: %d, %v)", n, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWriteWritesAllAndKeepsTheDeadline checks Write against what
// c.Write promises: every byte, in order, through a socket whose reader
// is slower than the writer (Write waits for room), and a write deadline
// that ends a write its peer does not read, with c.Write's error.
func TestWriteWritesAllAndKeepsTheDeadline(t *testing.T) {
	a, b := tcpPair(t)
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		var all []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := b.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				got <- all
				return
			}
			if len(all)%(1<<20) < n {
				time.Sleep(5 * time.Millisecond) // slower than the writer
			}
		}
	}()
	if n, err := Write(a, want); n != len(want) || err != nil {
		t.Fatalf("Write: %d of %d bytes, %v", n, len(want), err)
	}
	a.(*net.TCPConn).CloseWrite()
	if all := <-got; !bytes.Equal(all, want) {
		t.Fatalf("the reader got %d bytes, not the %d written (or not in order)", len(all), len(want))
	}

	c, _ := tcpPair(t) // its peer never reads
	c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	start := time.Now()
	n, err := Write(c, make([]byte, 64<<20))
	var oe *net.OpError
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("past the deadline: got %v; want a write OpError that is os.ErrDeadlineExceeded", err)
	}
	if n <= 0 || n >= 64<<20 {
		t.Fatalf("past the deadline: %d bytes written; want some, not all", n)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the write ended %v after a 200 ms deadline", d)
	}
}

// TestReadReadsAsConnReadDoes checks Read against what c.Read promises:
// it waits for data, returns what came, ends a wait at the read deadline
// with a read OpError that is os.ErrDeadlineExceeded, and returns io.EOF
// at the peer's end and the read's ECONNRESET after a reset.
func TestReadReadsAsConnReadDoes(t *testing.T) {
	a, b := tcpPair(t)
	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Write([]byte("late"))
	}()
	p := make([]byte, 16)
	if n, err := Read(b, p); err != nil || string(p[:n]) != "late" {
		t.Fatalf("waiting for data: got %q, %v", p[:max(n, 0)], err)
	}
	b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := Read(b, p)
	var oe *net.OpError
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("past the deadline: got %d, %v; want 0 and a read OpError that is os.ErrDeadlineExceeded", n, err)
	}
	b.SetReadDeadline(time.Time{})
	a.(*net.TCPConn).CloseWrite()
	if n, err := Read(b, p); n != 0 || err != io.EOF {
		t.Fatalf("after the peer's end: got %d, %v; want 0, EOF", n, err)
	}

	c, d := tcpPair(t)
	c.(*net.TCPConn).SetLinger(0)
	c.Close() // a reset
	d.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := Read(d, p); n != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after a reset: got %d, %v; want 0 and ECONNRESET", n, err)
	}
}
