package transport

import (
	"github.com/xtaci/smux"
)

// Flow-control sizing. One stream should fill a 200 Mbit/s path with a
// 200 ms RTT, a bandwidth-delay product of 5 MB. smux grants more window
// only once half of it was read, so a window is in effect half its size
// part of the time: 16 MiB per stream (measured, BenchmarkLongLink: 2 MiB
// gave 0.32 of a TCP connection's rate on that path, 8 MiB 0.78, 16 MiB
// 0.91). A window is a credit, not an allocation: it is memory only while
// an app does not read, and the session as a whole buffers at most two
// streams' worth.
const (
	streamWindow  = 16 << 20
	sessionWindow = 2 * streamWindow
	// maxFrameSize is the largest smux data frame.
	maxFrameSize = 32 << 10
)

// muxConfig is the smux configuration both ends use. smux's keepalive is
// off: it would end a session whose carriers are being replaced (a
// network change takes longer than its timeout), and its fixed 15-second
// NOPs were a rhythm an observer could see. The session layer checks
// liveness instead (checkFrozen) and ends a session that has had no
// carrier for its linger time.
func muxConfig() *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2 // per-stream flow control
	c.MaxFrameSize = maxFrameSize
	c.MaxReceiveBuffer = sessionWindow
	c.MaxStreamBuffer = streamWindow
	c.KeepAliveDisabled = true
	return c
}
