package transport

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/ratelimit"
)

// TestBridgeBuffersBounded: clients that push uploads towards a
// destination that never reads make the bridge hold no more than its
// bound, all sessions together, and meanwhile another client's upload to
// a destination that reads goes through. (With no bound, the four
// pushers below made the bridge hold 50 MB, where it now holds 3.2 to
// 3.7: each session's smux takes up to 32 MiB. Since windows start
// small, each pusher opens several streams to get there.)
func TestBridgeBuffersBounded(t *testing.T) {
	const (
		limit   = 4 << 20
		pushers = 4
		streams = 8       // per pusher
		push    = 2 << 20 // per stream: more than its initial window
	)
	// The destination that never reads: a small receive buffer, so that
	// the kernel takes little of what is pushed.
	holdLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.Mutex
	var heldConns []net.Conn
	t.Cleanup(func() {
		holdLn.Close()
		held.Lock()
		for _, c := range heldConns {
			c.Close()
		}
		held.Unlock()
	})
	go func() {
		for {
			c, err := holdLn.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetReadBuffer(4096)
			held.Lock()
			heldConns = append(heldConns, c) // never read; closed at the end
			held.Unlock()
		}
	}()
	// The destination that reads.
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sinkLn.Close()
	var sunk atomic.Int64
	go func() {
		for {
			c, err := sinkLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				sunk.Add(n)
			}()
		}
	}()
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		target := holdLn.Addr().String()
		if st.Request.Command == CmdConnect {
			target = sinkLn.Addr().String()
		}
		c, err := net.Dial("tcp", target)
		if err != nil {
			st.Reply(StatusConnectionRefused)
			return
		}
		defer c.Close()
		// Little in the kernel too: what the bridge holds is in smux.
		c.(*net.TCPConn).SetWriteBuffer(4096)
		// A write to the destination that never reads ends with the
		// session, as egress's relays end.
		go func() {
			<-st.SessionDone()
			c.Close()
		}()
		st.Reply(StatusOK)
		io.Copy(c, st)
	}, func(c *ServerConfig) {
		c.MaxBuffered = limit
		c.Logger = nil
		c.RateLimiter = ratelimit.New(1000, 1000, 16)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	chunk := make([]byte, 256<<10)
	var sts []net.Conn
	for range pushers {
		sess, err := Dial(ctx, b.clientConfig())
		if err != nil {
			t.Fatal(err)
		}
		// Closing the session ends its stream: a stream's own Close
		// would wait to send its FIN behind what the bridge does not
		// read.
		defer sess.Close()
		for range streams {
			st, err := sess.OpenStreamFast(Request{Command: CmdDefault})
			if err != nil {
				t.Fatal(err)
			}
			sts = append(sts, st)
		}
	}
	// Every stream is open before any pushes: once a session's pushes
	// fill what it may have unacknowledged, and the bridge has stopped
	// reading it, its next request would wait for ever (the test hung
	// so, once in some 500 runs).
	for _, st := range sts {
		go func() {
			for sent := 0; sent < push; sent += len(chunk) {
				if _, err := st.Write(chunk); err != nil {
					return
				}
			}
		}()
	}
	last := waitHeldSettles(ctx, t, b.server.buffers)
	// Two frames past the checks per session (target(): one as the
	// bridge crossed its target, one as the session crossed its share).
	// One frame each was allowed before windows were tuned; with eight
	// streams a pusher, 1 run in about 80 went 6 frames over the bound.
	slack := 2 * int64(pushers+1) * maxFrameSize
	t.Logf("the bridge holds %d bytes for %d pushers (bound %d)", last, pushers, limit)
	if last > limit+slack {
		t.Errorf("the bridge holds %d bytes, more than its bound %d (+%d)", last, limit, slack)
	}
	if last < limit/2 {
		t.Errorf("the bridge holds only %d bytes: the pushers did not push (the test proves nothing)", last)
	}

	// Another client's upload to a destination that reads goes through.
	sess, err := Dial(ctx, b.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	addr, _ := ParseAddr(sinkLn.Addr().String())
	st, err := sess.OpenStream(ctx, Request{Command: CmdConnect, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	const upload = 4 << 20
	for sent := 0; sent < upload; sent += len(chunk) {
		if _, err := st.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	st.(interface{ CloseWrite() error }).CloseWrite()
	for sunk.Load() < upload {
		select {
		case <-ctx.Done():
			t.Fatalf("the other client's upload stalled at %d of %d bytes", sunk.Load(), upload)
		case <-time.After(20 * time.Millisecond):
		}
	}
	st.Close()
}

// TestAskedReadsListsEachStreamOnce: a client's ask for reads (a NOP
// naming a stream) is answered with the reads of every open stream read
// since the last ask, each once, and marks the asker owed; the list of
// streams read stays bounded in a session whose client never asks, with
// thousands of streams opened, read and closed.
func TestAskedReadsListsEachStreamOnce(t *testing.T) {
	a := newStreamAcct(&bridgeBuffers{limit: DefaultMaxBuffered})
	for sid := uint32(1); sid <= 5; sid += 2 {
		a.frame(smuxCmdSYN, sid, 0)
		a.frame(smuxCmdPSH, sid, 1000)
	}
	a.took(1, 100)
	a.took(1, 200)
	a.took(3, 50)
	a.closed(3) // closed: nothing to announce
	got := a.asked(5)
	if len(got) != 1 || got[0] != (streamRead{1, 300}) {
		t.Fatalf("first ask: %v, want stream 1 with 300 read", got)
	}
	// Stream 1 still holds bytes its reader has not taken: their reads
	// are owed too, since the asker may wait for their room.
	if _, _, owed, _ := a.took(1, 10); !owed {
		t.Error("a stream holding unread bytes at the ask is not owed its reads")
	}
	if _, _, owed, _ := a.took(5, 10); !owed {
		t.Error("the asker is not owed its reads")
	}
	a.setOwed(5, false)
	if got := a.asked(7); len(got) != 2 || got[0] != (streamRead{1, 310}) || got[1] != (streamRead{5, 10}) {
		t.Fatalf("second ask: %v, want streams 1 and 5 with 310 and 10 read", got)
	}
	if got := a.asked(7); len(got) != 0 {
		t.Fatalf("an ask with nothing read since: %v", got)
	}

	for sid := uint32(9); sid < 9+2*10*maxStreamsPerSession; sid += 2 {
		a.frame(smuxCmdSYN, sid, 0)
		a.frame(smuxCmdPSH, sid, 10)
		a.took(sid, 10)
		a.closed(sid)
	}
	if len(a.read) > 2*maxStreamsPerSession {
		t.Errorf("the list of streams read grew to %d entries", len(a.read))
	}
}

// waitHeldSettles waits until what the bridge holds for its streams has
// stopped growing (the same for half a second), and returns it.
func waitHeldSettles(ctx context.Context, t *testing.T, bb *bridgeBuffers) int64 {
	t.Helper()
	last, still := int64(-1), 0
	for still < 5 {
		select {
		case <-ctx.Done():
			t.Fatal("the bridge's buffers never settled")
		case <-time.After(100 * time.Millisecond):
		}
		if h := bb.held.Load(); h == last {
			still++
		} else {
			last, still = h, 0
		}
	}
	return last
}
