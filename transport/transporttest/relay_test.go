//go:build linux

package transporttest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: the
// relays' Close must wait for all of theirs.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait is how long a test waits for something that should happen at once.
const wait = 5 * time.Second

// quiet is how long a test watches for something that must not happen.
const quiet = 300 * time.Millisecond

// targetServer is a target whose accepted connections the test gets to
// drive itself.
type targetServer struct {
	ln    net.Listener
	conns chan *net.TCPConn
}

func newTarget(t *testing.T) *targetServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &targetServer{ln: ln, conns: make(chan *net.TCPConn, 64)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns <- c.(*net.TCPConn)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		close(s.conns)
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

// next returns the next connection the target accepted.
func (s *targetServer) next(t *testing.T) *net.TCPConn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(wait):
		t.Fatal("the target accepted no connection")
		return nil
	}
}

// none checks that the target accepts no connection for a while.
func (s *targetServer) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-s.conns:
		c.Close()
		t.Fatal("the target accepted a connection")
	case <-time.After(quiet):
	}
}

func newRelay(t *testing.T, target string, opts RelayOptions) *Relay {
	t.Helper()
	r, err := NewRelay(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the target's cleanup, so it runs first: the target
	// then finds its connections closed and its goroutines return.
	t.Cleanup(func() { r.Close() })
	return r
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// send writes b to c within the test's patience.
func send(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(wait))
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// receive reads exactly len(want) bytes from c and compares them.
func receive(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read other bytes than were sent")
	}
}

// stalls checks that nothing arrives on c for a while, and that c is not
// closed either.
func stalls(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a frozen connection: %d bytes, %v; want a timeout", n, err)
	}
}

// writeStalls checks that writing to c blocks, because the relay has
// stopped reading the other end of its path: a second of writing must not
// get through more than socket buffers can hold.
func writeStalls(t *testing.T, c net.Conn) {
	t.Helper()
	// Many small writes rather than one big one: the race detector checks
	// a write's whole buffer in one call that stops the world for as long.
	const limit = 64 << 20 // more than any loopback socket buffers hold
	chunk := make([]byte, 256<<10)
	c.SetWriteDeadline(time.Now().Add(time.Second))
	total := 0
	for total < limit {
		n, err := c.Write(chunk)
		total += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("write into a frozen direction: %v", err)
			}
			return
		}
	}
	t.Fatalf("wrote %d bytes into a frozen direction", total)
}

// eventually waits until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRelayForwardsAndHalfCloses(t *testing.T) {
	t.Parallel()
	target := newTarget(t)
	r := newRelay(t, target.ln.Addr().String(), RelayOptions{})
	c := dial(t, r.Addr())
	s := target.next(t)

	up, down := randomBytes(1<<20), randomBytes(1<<20)
	// Both ways at once, so neither side's buffers have to hold it all.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.SetWriteDeadline(time.Now().Add(wait))
		s.Write(down)
	}()
	send(t, c, up)
	receive(t, s, up)
	receive(t, c, down)
	wg.Wait()

	// The client's half-close reaches the target, and the target can
	// still answer.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(wait))
	if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("target read after the client's half-close: %d, %v; want EOF", n, err)
	}
	send(t, s, []byte("answer"))
	receive(t, c, []byte("answer"))
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read after the target's half-close: %d, %v; want EOF", n, err)
	}

	eventually(t, "the connection ends", func() bool { return r.Open() == 0 })
	st := r.Stats()
	if len(st) != 1 || st[0].Up != int64(len(up)) || st[0].Down != int64(len(down)+len("answer")) ||
		st[0].Frozen || st[0].Reset || st[0].Ended.Before(st[0].Accepted) {
		t.Fatalf("stats %+v", st)
	}
}

func TestRelayFreezeDown(t *testing.T) {
	t.Parallel()
	target := newTarget(t)
	r := newRelay(t, target.ln.Addr().String(), RelayOptions{FreezeDown: 1000})
	c := dial(t, r.Addr())
	s := target.next(t)

	down := randomBytes(5000)
	send(t, s, down)
	receive(t, c, down[:1000])
	stalls(t, c)
	// The upload still goes through.
	up := randomBytes(100 << 10)
	send(t, c, up)
	receive(t, s, up)
	// The relay no longer reads the target, so its writes back up.
	writeStalls(t, s)

	st := r.Stats()
	if st[0].Down != 1000 || st[0].Up != int64(len(up)) || !st[0].Frozen || !st[0].Ended.IsZero() {
		t.Fatalf("stats %+v", st)
	}
	c.Close()
	eventually(t, "the client's close ends the connection", func() bool { return r.Open() == 0 })
}

func TestRelayFreezeUp(t *testing.T) {
	t.Parallel()
	target := newTarget(t)
	r := newRelay(t, target.ln.Addr().String(), RelayOptions{FreezeUp: 1000})
	c := dial(t, r.Addr())
	s := target.next(t)

	up := randomBytes(5000)
	send(t, c, up)
	receive(t, s, up[:1000])
	stalls(t, s)
	down := randomBytes(100 << 10)
	send(t, s, down)
	receive(t, c, down)
	writeStalls(t, c)

	st := r.Stats()
	if st[0].Up != 1000 || st[0].Down != int64(len(down)) || !st[0].Frozen || !st[0].Ended.IsZero() {
		t.Fatalf("stats %+v", st)
	}
	// The relay reads the client no more, and megabytes of upload wait
	// unread in front of the client's FIN; the relay must still see it.
	c.Close()
	eventually(t, "the client's close ends the connection", func() bool { return r.Open() == 0 })
	if r.MaxOpen() != 1 {
		t.Fatalf("MaxOpen %d, want 1", r.MaxOpen())
	}
}

func TestRelayCuts(t *testing.T) {
	t.Parallel()
	const cut = 100 * time.Millisecond
	// Each echo connection lives far longer than the cut.
	echo := StartTCPEcho(t, 30*time.Second)
	r := newRelay(t, echo.String(), RelayOptions{CutMin: cut, CutMax: cut})

	const n = 20
	type outcome struct {
		reset, silent bool
		after         time.Duration // from dial to the reset
	}
	outcomes := make([]outcome, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", r.Addr(), wait)
			if err != nil {
				t.Error(err)
				return
			}
			start := time.Now()
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Error(err)
				return
			}
			// Read whatever echoes back until the cut: a reset ends the
			// read with ECONNRESET, a silent cut leaves it to time out.
			c.SetReadDeadline(start.Add(cut + time.Second))
			_, err = io.Copy(io.Discard, c)
			switch {
			case errors.Is(err, syscall.ECONNRESET):
				outcomes[i] = outcome{reset: true, after: time.Since(start)}
			case errors.Is(err, os.ErrDeadlineExceeded):
				outcomes[i].silent = true
			default:
				t.Errorf("connection %d ended with %v, want a reset or a timeout", i, err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	resets, silent := 0, 0
	for i, o := range outcomes {
		if o.reset {
			resets++
			if o.after > cut+500*time.Millisecond {
				t.Errorf("connection %d was reset after %v, want about %v", i, o.after, cut)
			}
		} else {
			silent++
		}
	}
	// The chance that 20 fair coins all land the same way is 2 in a million.
	if resets == 0 || silent == 0 {
		t.Fatalf("%d resets and %d silent cuts, want some of each", resets, silent)
	}
	// The clients have closed their connections, silently cut ones too.
	eventually(t, "every connection ends", func() bool { return r.Open() == 0 })
	statResets, statFrozen := 0, 0
	for _, s := range r.Stats() {
		switch {
		case s.Reset && !s.Frozen:
			statResets++
			if d := s.Ended.Sub(s.Accepted); d < cut || d > cut+500*time.Millisecond {
				t.Errorf("a reset cut came %v after the accept, want %v", d, cut)
			}
		case s.Frozen && !s.Reset:
			statFrozen++
		default:
			t.Errorf("stats %+v: neither reset nor frozen", s)
		}
	}
	if statResets != resets || statFrozen != silent {
		t.Fatalf("relay counted %d resets and %d silent cuts, clients saw %d and %d",
			statResets, statFrozen, resets, silent)
	}
}

func TestRelayOutage(t *testing.T) {
	t.Parallel()
	target := newTarget(t)
	r := newRelay(t, target.ln.Addr().String(), RelayOptions{})
	a := dial(t, r.Addr())
	sa := target.next(t)
	send(t, a, []byte("hello"))
	receive(t, sa, []byte("hello"))

	r.SetOutage(true)
	// The open connection is frozen both ways, without a close.
	send(t, a, []byte("lost"))
	send(t, sa, []byte("lost"))
	stalls(t, sa)
	stalls(t, a)
	// A new one is accepted, but goes nowhere and hears nothing.
	b := dial(t, r.Addr())
	send(t, b, []byte("into the void"))
	stalls(t, b)
	target.none(t)

	r.SetOutage(false)
	c := dial(t, r.Addr())
	sc := target.next(t)
	send(t, c, []byte("back"))
	receive(t, sc, []byte("back"))
	send(t, sc, []byte("welcome"))
	receive(t, c, []byte("welcome"))
	// The connection frozen by the outage stays dead.
	send(t, a, []byte("still lost"))
	stalls(t, sa)

	st := r.Stats()
	if len(st) != 3 || !st[0].Frozen || st[0].Up != 5 || !st[1].Frozen || st[1].Up != 0 || st[2].Frozen {
		t.Fatalf("stats %+v", st)
	}
	if r.Open() != 3 {
		t.Fatalf("%d connections open, want 3", r.Open())
	}
	// The frozen and blackholed ones end when their clients close them,
	// b with an RST, which leaves no trace of the client's end.
	a.Close()
	b.SetLinger(0)
	b.Close()
	c.Close()
	eventually(t, "every connection ends", func() bool { return r.Open() == 0 })
}

func TestRelayCounts(t *testing.T) {
	t.Parallel()
	target := newTarget(t)
	r := newRelay(t, target.ln.Addr().String(), RelayOptions{})
	var first []*net.TCPConn
	for range 3 {
		first = append(first, dial(t, r.Addr()))
	}
	eventually(t, "three connections are open", func() bool { return r.Open() == 3 })
	for _, c := range first {
		c.Close()
	}
	eventually(t, "they end", func() bool { return r.Open() == 0 })
	for range 2 {
		c := dial(t, r.Addr())
		eventually(t, "the connection is open", func() bool { return r.Open() == 1 })
		c.Close()
		eventually(t, "it ends", func() bool { return r.Open() == 0 })
	}
	if got := r.MaxOpen(); got != 3 {
		t.Fatalf("MaxOpen %d, want 3", got)
	}
	if got := r.MaxAcceptsWithin(time.Hour); got != 5 {
		t.Fatalf("MaxAcceptsWithin(1h) %d, want 5", got)
	}
	if got := r.MaxAcceptsWithin(0); got < 1 {
		t.Fatalf("MaxAcceptsWithin(0) %d, want at least 1", got)
	}
}

func TestMaxWithin(t *testing.T) {
	t.Parallel()
	base := time.Now()
	var times []time.Time
	for _, ms := range []int{0, 100, 150, 400, 420, 430} {
		times = append(times, base.Add(time.Duration(ms)*time.Millisecond))
	}
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{-1, 0},
		{0, 1},
		{20 * time.Millisecond, 2},
		{30 * time.Millisecond, 3},
		{50 * time.Millisecond, 3},
		{279 * time.Millisecond, 3},
		{280 * time.Millisecond, 4},
		{time.Second, 6},
	} {
		if got := maxWithin(times, tc.d); got != tc.want {
			t.Errorf("maxWithin(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
	if got := maxWithin(nil, time.Second); got != 0 {
		t.Errorf("maxWithin of nothing = %d, want 0", got)
	}
}
