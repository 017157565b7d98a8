package transport

import (
	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/xtaci/smux"
)

// Flow-control sizing. One stream should fill a 200 Mbit/s path with a
// 200 ms RTT, a bandwidth-delay product of 5 MB. smux grants more window
// only once half of it was read, so a window is in effect half its size
// part of the time: up to 16 MiB per stream (measured, BenchmarkLongLink:
// 2 MiB gave 0.32 of a TCP connection's rate on that path, 8 MiB 0.78,
// 16 MiB 0.91). A window is a credit, not an allocation: it is memory
// only while an app does not read. So a stream starts with
// initialWindow, and its window grows towards streamWindow as fast as
// its app reads (window.go).
//
// smux also caps what a whole session may hold unread (MaxReceiveBuffer):
// once it is reached, its receive loop stops reading the session, and
// every stream stalls, new ones too. On the bridge that cap is what
// bounds a client that pushes data towards slow destinations: two
// largest windows' worth, eight initial ones, which the bridge keeps its
// streams' windows within (window.go, grantLimit). A client keeps the
// windows of the streams it receives within the same room, so that
// downloads its apps stopped reading (a browser's paused downloads, a
// video's full buffer) cost it bounded memory, however many
// (TestPausedDownloadsDoNotStallTheSession); but its smux's cap is
// clientSessionWindow, sixteen largest windows' worth, so that what the
// bridge sent before a cut came back never stops its receive loop, and
// with it every other app's streams. The growth of windows is bounded
// by the same caps (window.go).
const (
	streamWindow        = 16 << 20
	initialWindow       = 4 << 20
	sessionWindow       = 2 * streamWindow
	clientSessionWindow = 16 * streamWindow
	// maxFrameSize is the largest smux data frame: nearly the most its
	// 16-bit length allows, so a bulk write costs half the frames (and
	// smux hand-offs, and session writes) it did at 32 KiB: the bridge's
	// CPU per GiB of a download fell 7% (perf stat, medians of 8 runs).
	// Peers take frames of any length whatever their own setting, so
	// older ones get them too (TestLargeMuxFramesReachOlderPeers).
	//
	// 64 bytes short of 64 KiB, so that a frame fits one TCP segment of a
	// loopback connection, where apps meet the local proxy: a client
	// writes each frame it receives to its app in one write, and Linux's
	// (and Android's) loopback segment is 65483 bytes (MTU 65536 less the
	// IP and TCP headers and timestamps). Frames of 65528 and 65535 bytes
	// went as a full segment and a runt of a few dozen bytes: two rounds
	// of the kernel's receive path for every 64 KiB
	// (TestDownloadsReachAppsInWholeSegments). On loopback the client
	// spent 11% less CPU per GiB of downloads without the runts.
	// sockcopy reads sockets in chunks of exactly this (one read, one
	// frame), so the value is its Chunk's, kept in one place.
	maxFrameSize = sockcopy.Chunk
	// smuxVersion is smux's protocol version: 2 has per-stream flow
	// control.
	smuxVersion = 2
)

// muxConfig is the smux configuration of a client's or a bridge's end.
// smux's keepalive is off: it would end a session whose carriers are being
// replaced (a network change takes longer than its timeout), and its fixed
// 15-second NOPs were a rhythm an observer could see. The session layer checks
// liveness instead (checkFrozen) and ends a session that has had no
// carrier for its linger time.
func muxConfig(client bool) *smux.Config {
	c := smux.DefaultConfig()
	c.Version = smuxVersion
	c.MaxFrameSize = maxFrameSize
	c.MaxReceiveBuffer = sessionWindow
	if client {
		c.MaxReceiveBuffer = clientSessionWindow
	}
	// smux announces this window, and an UPD each time half of it was
	// read: every quarter of initialWindow. The session rewrites the
	// UPDs with each stream's tuned window (window.go).
	c.MaxStreamBuffer = initialWindow / 2
	c.KeepAliveDisabled = true
	return c
}
