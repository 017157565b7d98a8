//go:build linux

package transport

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestPausedSessionKeepsItsCarrier: while a bridge past its bound holds a
// session paused (its uploads' destinations do not read), the client's
// carrier stays up, however long the pause and whatever the bridge sends
// meanwhile, and the uploads go on once their destinations read again.
// The client's bytes wait in the bridge's socket, and its answers to the
// bridge's PINGs wait behind them in its own: the bridge's freeze
// detector took that silence for a frozen path and ended the carrier, and
// the client dialled another, to be held up the same way (and a reader
// that had offered smux a DATA body as smux paused waited for the pause
// to end, reading nothing behind it).
func TestPausedSessionKeepsItsCarrier(t *testing.T) {
	const (
		limit  = 1 << 20
		upload = 8 << 20
		down   = 2 << 20
	)
	// The uploads' destination: reads nothing until released.
	holdLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holdLn.Close()
	release := make(chan struct{})
	startDown := make(chan struct{})
	var sunk atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			c, err := holdLn.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				select {
				case <-release:
				case <-stop:
					return
				}
				io.Copy(sinkCounter{&sunk}, c)
			}()
		}
	}()
	b := startBridge(t, newSiteFace(t), func(st *Stream) {
		if st.Request.Command == CmdConnect {
			// A download beside the paused upload, once it is
			// paused: bytes the bridge has in flight, which it then
			// pings for.
			st.Reply(StatusOK)
			<-startDown
			st.Write(payload(down, 3))
			st.CloseWrite()
			io.Copy(io.Discard, st)
			return
		}
		c, err := net.Dial("tcp", holdLn.Addr().String())
		if err != nil {
			st.Reply(StatusConnectionRefused)
			return
		}
		defer c.Close()
		st.Reply(StatusOK)
		io.Copy(c, st)
	}, func(c *ServerConfig) { c.MaxBuffered = limit })
	r, err := transporttest.NewRelay(b.addr, transporttest.RelayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sess := b.dialVia(t, r.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The download's stream opens first: once the session is paused,
	// nothing more of the client's reaches the bridge.
	addr, _ := ParseAddr("192.0.2.1:80")
	dl, err := sess.OpenStream(ctx, Request{Command: CmdConnect, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	up, err := sess.OpenStream(ctx, Request{Command: CmdDefault})
	if err != nil {
		t.Fatal(err)
	}
	upDone := make(chan error, 1)
	go func() {
		data := payload(upload, 4)
		_, err := up.Write(data)
		if err == nil {
			err = up.(interface{ CloseWrite() error }).CloseWrite()
		}
		upDone <- err
	}()
	// Wait until the bridge holds past its target and stops reading.
	last := waitHeldSettles(ctx, t, b.server.buffers)
	if last < limit/2 {
		t.Fatalf("the bridge holds only %d bytes: the upload did not fill it (the test proves nothing)", last)
	}
	close(startDown)
	dl.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := io.Copy(io.Discard, dl); n != down {
		t.Fatalf("the download beside the paused upload got %d of %d bytes (%v)", n, down, err)
	}
	// The freeze detector's PING waits a second of silence, its
	// answer a second more: four seconds are two rounds of it.
	time.Sleep(4 * time.Second)
	if n := len(r.Stats()); n != 1 {
		t.Fatalf("the client made %d connections to the bridge during the pause, want 1: a carrier the bridge held up was taken for frozen", n)
	}
	close(release)
	select {
	case err := <-upDone:
		if err != nil {
			t.Fatalf("the upload, once its destination read: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the upload did not finish once its destination read")
	}
	for sunk.Load() < upload && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if n := sunk.Load(); n != upload {
		t.Fatalf("the destination got %d of %d bytes", n, upload)
	}
	if n := len(r.Stats()); n != 1 {
		t.Fatalf("the client made %d connections to the bridge, want 1", n)
	}
}

// sinkCounter drops what is written to it, and counts it.
type sinkCounter struct{ n *atomic.Int64 }

func (w sinkCounter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}
