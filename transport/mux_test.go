package transport

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/xtaci/smux"
)

// TestLargeMuxFramesReachOlderPeers: smux frames of maxFrameSize (64 KiB
// less a byte since this release; 32 KiB before) reach a peer configured
// as older releases were, intact, both ways: smux takes a frame of any
// length its 16-bit header can state, whatever its own MaxFrameSize, so
// old clients and bridges interoperate with new ones.
func TestLargeMuxFramesReachOlderPeers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	old := muxConfig(false)
	old.MaxFrameSize = 32 << 10
	srv, err := smux.Server(b, old)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := smux.Client(a, muxConfig(true))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 13 / 7)
	}
	echoed := make(chan error, 1)
	go func() {
		st, err := srv.AcceptStream()
		if err == nil {
			buf := make([]byte, len(data))
			if _, err = io.ReadFull(st, buf); err == nil {
				_, err = st.Write(buf) // in the old peer's 32 KiB frames
			}
		}
		echoed <- err
	}()
	st, err := cli.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(data); err != nil { // in maxFrameSize frames
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes back, not the %d sent", len(got), len(data))
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
}
