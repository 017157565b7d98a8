package transport

import (
	"syscall"
	"testing"
)

// TestUnsentBoundReachesTheSocket: limitUnsent sets TCP_NOTSENT_LOWAT on
// the socket under our wrappers (a carrier's countingConn), and 0 lifts
// the bound. Without it, a carrier's socket holds what the kernel lets
// it, ahead of every new stream.
func TestUnsentBoundReachesTheSocket(t *testing.T) {
	ours, _ := tcpPair(t)
	wrapped := &countingConn{Conn: ours}
	get := func() int {
		v := -1
		controlSocket(wrapped, func(fd int) {
			v, _ = syscall.GetsockoptInt(fd, syscall.IPPROTO_TCP, tcpNotsentLowat)
		})
		return v
	}
	limitUnsent(wrapped, 48<<10)
	if v := get(); v != 48<<10 {
		t.Fatalf("TCP_NOTSENT_LOWAT is %d after limitUnsent(48 KiB)", v)
	}
	limitUnsent(wrapped, 0)
	if v := get(); v != 1<<31-1 {
		t.Fatalf("TCP_NOTSENT_LOWAT is %d after limitUnsent(0), want no bound", v)
	}
}
