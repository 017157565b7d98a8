package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/xtaci/smux"
)

// TestBulkDataFillsRecords: while more than a frame's worth of bytes is
// queued, the sender sends only full DATA frames (each one TLS record
// of the largest size), whatever the size of smux's writes; only the last
// bytes of a burst go in a shorter one. A short frame at the end of every
// write would be a record (and a syscall) more for every 32 KiB, and a
// rhythm of sizes an observer could see.
func TestBulkDataFillsRecords(t *testing.T) {
	s := newSessionConn(true, time.Minute, testLogger(t))
	defer s.Close()
	c := &carrier{raw: &countingConn{}} // no budget: compose reads nothing else
	hdr := make([]byte, smuxHeaderLen)
	hdr[0], hdr[1] = 2, smuxCmdPSH
	binary.LittleEndian.PutUint16(hdr[2:], uint16(maxFrameSize&0xffff))
	const writes = 5
	for range writes {
		if _, err := s.WriteBuffers([][]byte{hdr, bytes.Repeat([]byte{7}, maxFrameSize)}); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	for {
		s.mu.Lock()
		s.padDue = false
		if s.next >= s.written {
			s.mu.Unlock()
			break
		}
		out := s.compose(nil, c)
		s.mu.Unlock()
		fr := &frameReader{r: bytes.NewReader(out)}
		for {
			typ, body, err := fr.next()
			if err != nil {
				break
			}
			if typ == frameData {
				sizes = append(sizes, len(body))
			}
		}
	}
	total := 0
	for i, n := range sizes {
		total += n
		if n != maxFrameBody && i != len(sizes)-1 {
			t.Fatalf("DATA frame %d of %d holds %d bytes, not %d (all frames: %v)", i, len(sizes), n, maxFrameBody, sizes)
		}
	}
	if want := writes * (smuxHeaderLen + maxFrameSize); total != want {
		t.Fatalf("sent %d bytes, want %d", total, want)
	}
}

// TestWriteSizeFollowsTheSendRate: one write to a carrier takes more of
// the queue only on a fast path. A write goes to the socket whole, ahead
// of every stream's later bytes: at 20 Mbit/s a 256 KiB write would hold
// a new stream's first bytes back 100 ms, so a slow path's writes stay at
// the 16 KiB floor (one full TLS record); on loopback they grow to 256
// KiB, which costs both ends fewer wake-ups per byte.
func TestWriteSizeFollowsTheSendRate(t *testing.T) {
	for _, tc := range []struct {
		name string
		bps  float64 // bytes per second the carrier was measured sending
		want int     // bytes of data in one write
	}{
		{"before the rate is known", 0, startWriteChunk},
		{"20 Mbit/s", 20e6 / 8, minWriteChunk},
		{"50 Mbit/s", 50e6 / 8, minWriteChunk},
		{"200 Mbit/s", 200e6 / 8, 200e6 / 8 * 2500 / 1e6},
		{"400 Mbit/s", 400e6 / 8, 400e6 / 8 * 2500 / 1e6},
		{"loopback, 30 Gbit/s", 30e9 / 8, maxWriteChunk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSessionConn(false, time.Minute, testLogger(t))
			defer s.Close()
			c := &carrier{raw: &countingConn{}}
			s.mu.Lock()
			defer s.mu.Unlock()
			if tc.bps > 0 {
				measured(s, c, tc.bps)
			}
			s.sendq.push(make([]byte, 4<<20))
			s.written += 4 << 20
			s.compose(nil, c)
			// Whole DATA frames only, while more is queued.
			want := tc.want - tc.want%maxFrameBody
			if got := int(s.next); got != want {
				t.Fatalf("one write took %d bytes of the queue, want %d (%d whole frames of the %d a write may carry)", got, want, want/maxFrameBody, tc.want)
			}
		})
	}
}

// measured sets s's bounds as if carrier c had been measured sending bps
// bytes a second for a whole rateInterval. Called with s.mu held.
func measured(s *sessionConn, c *carrier, bps float64) {
	c.rate.busy = int64(rateInterval)
	c.rate.busyBytes = int64(bps * rateInterval.Seconds())
	s.noteSent(c)
}

// pipeCarrier attaches to s a carrier over one end of a synchronous pipe
// (no TLS: the session only reads and writes frames) and returns the
// other end, the peer's.
func pipeCarrier(t *testing.T, s *sessionConn) net.Conn {
	ours, peer := net.Pipe()
	t.Cleanup(func() { peer.Close() })
	c := &carrier{seq: 1, conn: ours, raw: &countingConn{Conn: ours}}
	if !s.attach(c, 0) {
		t.Fatal("session refused the carrier")
	}
	go s.readLoop(c)
	return peer
}

// waitFor waits (up to 10 s) until cond, checked under s's lock, holds.
func waitFor(t *testing.T, s *sessionConn, what string, cond func() bool) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s after 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestInOrderDataGoesStraightToTheReader: bulk DATA that arrives in order
// while smux waits in Read is read from the carrier straight into smux's
// buffer, without a copy through the session's receive buffer (which is
// never allocated), and is acknowledged.
func TestInOrderDataGoesStraightToTheReader(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	peer := pipeCarrier(t, s)
	got := make(chan []byte, 1)
	go func() {
		p := make([]byte, 64<<10)
		n, err := io.ReadFull(s, p[:3*maxFrameBody])
		if err != nil {
			t.Error(err)
		}
		got <- p[:n]
	}()
	data := bytes.Repeat([]byte{'m'}, 3*maxFrameBody)
	// The first body is offered to the waiting Read; Read reads the
	// frames after it itself (chainRead), so it never waits again.
	waitFor(t, s, "Read to wait", func() bool { return s.readWaiting })
	for i := 0; i < len(data); i += maxFrameBody {
		if _, err := peer.Write(appendFrames(nil, data[i:i+maxFrameBody], 0)); err != nil {
			t.Fatal(err)
		}
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatal("Read returned other bytes than were sent")
	}
	s.mu.Lock()
	recvd, rbuf := s.recvd, cap(s.rbuf)
	s.mu.Unlock()
	if recvd != uint64(len(data)) || rbuf != 0 {
		t.Fatalf("received %d bytes with a %d-byte receive buffer; want %d with none", recvd, rbuf, len(data))
	}
}

// TestUnreadDataDoesNotBlockTheCarrier: while smux does not read (its
// buffers full), DATA still lands in the receive buffer, and the frames
// behind it are handled: a PING is answered with an ACK of every byte.
func TestUnreadDataDoesNotBlockTheCarrier(t *testing.T) {
	s := newSessionConn(false, time.Minute, testLogger(t))
	defer s.Close()
	peer := pipeCarrier(t, s)
	var out []byte
	for range 3 {
		out = appendFrames(out, bytes.Repeat([]byte{1}, maxFrameBody), 0)
	}
	out = appendEmptyFrame(out, framePing)
	go peer.Write(out)
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr := &frameReader{r: peer}
	for {
		typ, body, err := fr.next()
		if err != nil {
			t.Fatalf("no ACK of the unread data: %v", err)
		}
		if typ == frameAck && binary.BigEndian.Uint64(body) == 3*maxFrameBody {
			return
		}
	}
}

// TestNewStreamAnnouncesItsWindow: a stream the client opens announces its
// receive window right after its SYN, so the bridge may send a
// download's first initialWindow bytes at once. (smux lets a sender have
// only 256 KiB in flight until the receiver's first read of the stream is
// announced, a round trip later: a download over a 200 ms path lost a
// round trip, 5 MB at 200 Mbit/s, and BenchmarkLongLink showed 0.91 of a
// TCP connection's rate.)
func TestNewStreamAnnouncesItsWindow(t *testing.T) {
	s := newSessionConn(true, time.Minute, testLogger(t))
	defer s.Close()
	syn := []byte{2, smuxCmdSYN, 0, 0, 7, 0, 0, 0} // stream 7
	if n, err := s.WriteBuffers([][]byte{syn, nil}); n != len(syn) || err != nil {
		t.Fatalf("WriteBuffers(SYN) = %d, %v; want %d, nil", n, err, len(syn))
	}
	s.mu.Lock()
	got := s.sendq.appendRange(nil, 0, s.sendq.n)
	s.mu.Unlock()
	want := append(append([]byte(nil), syn...), 2, smuxCmdUPD, 8, 0, 7, 0, 0, 0, 0, 0, 0, 0)
	want = binary.LittleEndian.AppendUint32(want, initialWindow)
	if !bytes.Equal(got, want) {
		t.Fatalf("queued % x\nwant   % x", got, want)
	}
}

// TestWritersTopUpTheQueue: a writer whose next frame does not fit in
// what is left of the session's queue bound (backlog.go) queues the part
// that fits, so that the queue refills as the carrier drains it. Before,
// such a writer waited until the queue had room for its whole frame, and
// frames were as large as the bound: on a link whose bound is a few
// frames, the queue ran empty before each refill, and the carrier had
// nothing to send while the writers woke. At 60 ms and 20 Mbit/s, 8
// downloads through one session got 0.94 of what 8 TCP connections got
// over the same link, and 1.00 with this (BenchmarkThinLink).
func TestWritersTopUpTheQueue(t *testing.T) {
	q := newQueueProbe(t, 64<<10)
	// A stream queues 40 KiB; another then has 40 KiB to write, of
	// which about 24 KiB fit.
	if k := q.write(q.stream(false), 40<<10); k != 40<<10 {
		t.Fatalf("the first write queued %d bytes of %d", k, 40<<10)
	}
	before := q.queued()
	k := q.write(q.stream(false), 40<<10)
	if n := q.queued(); k == 0 || n < q.bound*3/4 {
		t.Fatalf("with %d bytes of %d queued, a writer with 40 KiB more queued %d bytes and waited: the queue stays %d%% empty until the carrier drains it", before, q.bound, k, 100*(q.bound-n)/q.bound)
	}
	if n := q.queued(); n > q.bound {
		t.Fatalf("%d bytes queued, beyond the bound of %d", n, q.bound)
	}
}

// TestYoungStreamPassesTheBound: a new stream's first bytes (a TLS
// handshake's answer, say) are queued at once even while bulk streams
// keep the session's queue at its bound, and the rest of it waits as
// any stream's does. Otherwise they waited for the carrier to drain the
// queue, then raced the bulk streams' writers for the room.
func TestYoungStreamPassesTheBound(t *testing.T) {
	q := newQueueProbe(t, 64<<10)
	for i := 0; q.queued() < q.bound*3/4; i++ {
		if i == 8 {
			t.Fatalf("bulk writes filled the queue to %d bytes of %d, not to three quarters", q.queued(), q.bound)
		}
		q.write(q.stream(false), 64<<10)
	}
	before := q.queued()
	if k := q.write(q.stream(true), 4<<10); k != 4<<10 {
		t.Fatalf("with %d bytes of %d queued, a new stream's first 4 KiB went only %d bytes into the queue", before, q.bound, k)
	}
	k := q.write(q.stream(true), 4*youngStreamBytes)
	if k < youngStreamBytes || k > youngStreamBytes+q.bound/4 {
		t.Fatalf("a new stream with %d bytes to write queued %d past a full queue; want its first %d, and not much more", 4*youngStreamBytes, k, youngStreamBytes)
	}
}

// queueProbe is a client session with no carrier, so that nothing leaves
// its send queue, and with its queue bound set: what writers queue and
// where they wait can be seen.
type queueProbe struct {
	t     *testing.T
	s     *sessionConn
	mux   *smux.Session
	bound int
}

func newQueueProbe(t *testing.T, bound int) *queueProbe {
	s := newSessionConn(true, time.Minute, testLogger(t))
	t.Cleanup(func() { s.Close() })
	mux, err := smux.Client(s, muxConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mux.Close() })
	s.mu.Lock()
	s.rateKnown, s.maxUnsent = true, bound
	s.mu.Unlock()
	return &queueProbe{t: t, s: s, mux: mux, bound: bound}
}

// stream opens a stream, young (nothing sent yet) or not (as if its
// first bytes had gone long ago).
func (q *queueProbe) stream(young bool) *directStream {
	st, err := q.mux.OpenStream()
	if err != nil {
		q.t.Fatal(err)
	}
	if !young {
		q.s.mu.Lock()
		q.s.sendWins[st.ID()].total = youngStreamBytes
		q.s.mu.Unlock()
	}
	return newDirectStream(st, q.s)
}

// queued returns the bytes in the queue (the bound counts them).
func (q *queueProbe) queued() int {
	q.s.mu.Lock()
	defer q.s.mu.Unlock()
	return int(q.s.written-q.s.next) + q.s.reserved
}

// write writes n bytes to d, giving up after 200 ms of waiting for
// room, and returns how many were queued.
func (q *queueProbe) write(d *directStream, n int) int {
	d.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	k, err := d.Write(make([]byte, n))
	if k < n && !errors.Is(err, os.ErrDeadlineExceeded) {
		q.t.Fatalf("a write waiting for room in the queue ended with %v, want its deadline", err)
	}
	return k
}

// TestFastPathBoundsStayBounded: on a path faster than any link (a LAN,
// loopback), what waits in front of a new stream is still bounded: 1 MiB
// in the session's queue and 1 MiB in the socket. Before, the queue's
// bound went up to 4 MiB, and past 1.7 Gbit/s the socket had none at
// all: on loopback a new stream opened beside a download waited 25 ms
// for its first byte, where a TLS connection of its own waited 3.4
// (the bench harness, TTFB under load).
func TestFastPathBoundsStayBounded(t *testing.T) {
	for _, gbps := range []float64{2, 10, 30} {
		s := newSessionConn(false, time.Minute, testLogger(t))
		c := &carrier{raw: &countingConn{}}
		s.mu.Lock()
		measured(s, c, gbps*1e9/8)
		unsent, lowat := s.maxUnsent, s.lowat
		s.mu.Unlock()
		s.Close()
		if unsent > 1<<20 {
			t.Errorf("at %v Gbit/s the session's queue may hold %d bytes; want at most 1 MiB", gbps, unsent)
		}
		if lowat == 0 || lowat > 1<<20 {
			t.Errorf("at %v Gbit/s the socket's bound on unsent bytes is %d (0: none); want at most 1 MiB", gbps, lowat)
		}
	}
}
