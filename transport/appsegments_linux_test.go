package transport

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/mirage-pt/mirage/sockcopy"
	"golang.org/x/sys/unix"
)

// tcpInfo returns TCP_INFO of c's socket.
func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

// TestDownloadsReachAppsInWholeSegments proves that a download reaches the
// app (which always meets the local proxy over loopback) in about one
// TCP segment per frame: the client writes each frame it receives to the
// app in one write (smux's WriteTo, as Relay copies), so a frame longer
// than the loopback's segment (65483 bytes on Linux: MTU 65536 less the
// IP and TCP headers and timestamps) went as a full segment and a runt of
// a few dozen bytes, two segments and two rounds of the receive path for
// every 64 KiB. Both ways a bridge sends a stream are checked: the fill
// path (sockcopy from a destination's socket) and plain Writes.
func TestDownloadsReachAppsInWholeSegments(t *testing.T) {
	const size = 32 << 20
	data := payload(size, 7)
	for _, path := range []string{"fill", "write"} {
		t.Run(path, func(t *testing.T) {
			handler := func(st *Stream) {
				st.Reply(StatusOK)
				if path == "write" {
					st.Write(data)
				} else {
					w, r := tcpPair(t)
					go func() {
						w.Write(data) // a destination that sends as fast as it can
						w.Close()
					}()
					sockcopy.Copy(st, r, r, nil)
					r.Close()
				}
				st.CloseWrite()
				io.Copy(io.Discard, st)
			}
			b := startBridge(t, newSiteFace(t), handler, nil)
			st := openOneStream(t, b)
			proxySide, app := tcpPair(t)
			counted := &writeCounter{Conn: proxySide}
			go func() {
				// As Relay copies a stream to its app (smux's
				// WriteTo: a write per frame), counting the writes.
				io.Copy(counted, st)
				proxySide.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(app)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("the app got %d bytes (%v), want the %d sent, in order", len(got), err, size)
			}
			segs := int(tcpInfo(t, app).Data_segs_in)
			// The segment size the proxy's socket sent with: the
			// loopback's, once the app's window has grown.
			mss := int(tcpInfo(t, proxySide).Snd_mss)
			if mss < 60<<10 {
				t.Skipf("this loopback's segment (%d bytes) is much shorter than a frame (%d): no frame of 64 KiB fits one", mss, maxFrameSize)
			}
			// One segment per write (a frame), with room for a few
			// the app's window splits while it grows.
			n := int(counted.writes.Load())
			most := n*11/10 + 16
			t.Logf("%d MiB reached the app in %d writes and %d data segments (segment size %d, frames of %d)", size>>20, n, segs, mss, maxFrameSize)
			if segs > most {
				t.Fatalf("%d MiB reached the app in %d writes but %d data segments, want at most %d: frames of %d bytes do not fit the loopback's %d-byte segment", size>>20, n, segs, most, maxFrameSize, mss)
			}
		})
	}
}
