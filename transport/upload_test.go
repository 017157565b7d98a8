package transport

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// gatedLink relays clients to target; while held, nothing target sends
// reaches the clients (it waits in the link), as on a path whose answers
// take their time.
type gatedLink struct {
	mu   sync.Mutex
	cond *sync.Cond
	held bool
}

func startGatedLink(t testing.TB, target string) (*gatedLink, string) {
	g := &gatedLink{}
	g.cond = sync.NewCond(&g.mu)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); g.hold(false); wg.Wait() })
	pipe := func(dst, src net.Conn, gated bool) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if gated {
				g.mu.Lock()
				for g.held {
					g.cond.Wait()
				}
				g.mu.Unlock()
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
			if err != nil {
				dst.Close()
				src.Close()
				return
			}
		}
	}
	serveRelay(ln, target, &wg, func(dst, src net.Conn, dir int) { pipe(dst, src, dir == 1) }, nil)
	return g, ln.Addr().String()
}

func (g *gatedLink) hold(held bool) {
	g.mu.Lock()
	g.held = held
	g.cond.Broadcast()
	g.mu.Unlock()
}

// TestUploadStartsWithTheBridgesWindow proves that a new stream may send
// a bridge's initial stream window before any answer comes back: an app
// behind fast open (the local proxy answers it at once) uploads nearly
// all of it (the request takes the rest) while nothing from the bridge
// reaches the client, and the bridge then
// gets every byte. Before, smux let the client have only 256 KiB in
// flight until the bridge's first UPD, a round trip after the SYN: the
// write waited for it (here, until its deadline), and an upload over a
// 200 ms path lost that round trip (BenchmarkLongLinkUpload: 0.91 of a
// TCP connection's rate).
func TestUploadStartsWithTheBridgesWindow(t *testing.T) {
	t.Parallel()
	data := payload(initialWindow-4<<10, 9)
	got := make(chan []byte, 1)
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if err := st.Reply(StatusOK); err != nil {
			return
		}
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		all, _ := io.ReadAll(st)
		got <- all
	}, nil)
	gate, addr := startGatedLink(t, b.addr)
	sess := b.dialVia(t, addr)

	gate.hold(true)
	st, err := sess.OpenStreamFast(Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Nothing can come back from the bridge until the gate opens: the
	// write returns only if the client grants itself the window.
	st.SetWriteDeadline(time.Now().Add(3 * time.Second))
	_, werr := st.Write(data)
	gate.hold(false)
	if werr != nil {
		t.Fatalf("writing %d bytes before the bridge's first answer: %v", len(data), werr)
	}
	st.SetWriteDeadline(time.Time{})
	if err := st.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if all := <-got; !bytes.Equal(all, data) {
		t.Fatalf("the bridge got %d bytes, not the %d sent", len(all), len(data))
	}
}

// TestOwnFramesGoBetweenThePeersFrames: the window a client grants itself
// for a new stream reaches its smux as a whole UPD frame between two of
// the bridge's frames, never inside one, whatever smux was reading when
// the stream opened.
func TestOwnFramesGoBetweenThePeersFrames(t *testing.T) {
	s := newSessionConn(true, time.Minute, testLogger(t))
	defer s.Close()
	// The bridge's PSH of 100 bytes for stream 3, as received.
	psh := []byte{2, smuxCmdPSH, 100, 0, 3, 0, 0, 0}
	body := bytes.Repeat([]byte{0xaa}, 100)
	s.mu.Lock()
	s.rbuf = append(append(s.rbuf, psh...), body...)
	s.recvd = uint64(len(s.rbuf))
	s.mu.Unlock()

	read := func(n int) []byte {
		t.Helper()
		p := make([]byte, n)
		if _, err := io.ReadFull(s, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if h := read(smuxHeaderLen); !bytes.Equal(h, psh) {
		t.Fatalf("header % x, want % x", h, psh)
	}
	// Stream 5 opens while smux is between the PSH's header and body.
	syn := []byte{2, smuxCmdSYN, 0, 0, 5, 0, 0, 0}
	if _, err := s.WriteBuffers([][]byte{syn, nil}); err != nil {
		t.Fatal(err)
	}
	if got := read(40); !bytes.Equal(got, body[:40]) {
		t.Fatalf("the PSH body was cut by another frame: % x", got)
	}
	if got := read(60); !bytes.Equal(got, body[40:]) {
		t.Fatalf("the PSH body was cut by another frame: % x", got)
	}
	want := []byte{2, smuxCmdUPD, 8, 0, 5, 0, 0, 0, 0, 0, 0, 0}
	want = binary.LittleEndian.AppendUint32(want, initialWindow)
	if got := append(read(smuxHeaderLen), read(8)...); !bytes.Equal(got, want) {
		t.Fatalf("after the PSH, smux read % x; want our UPD % x", got, want)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recvd != uint64(len(psh)+len(body)) || s.ackSent != 0 {
		t.Fatalf("our own frame counted as received: recvd %d", s.recvd)
	}
}
