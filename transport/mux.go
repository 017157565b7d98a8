package transport

import (
	"github.com/xtaci/smux"
)

// Flow-control sizing. A stream must carry 100 Mbit/s over a 100 ms RTT path,
// which needs a window of at least one bandwidth-delay product:
// 100e6/8 * 0.1 = 1.25 MB. We round up to 2 MiB per stream, and let the
// session as a whole buffer four such streams.
const (
	streamWindow  = 2 << 20
	sessionWindow = 4 * streamWindow
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
