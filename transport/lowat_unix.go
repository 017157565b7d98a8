//go:build linux || darwin

package transport

import (
	"net"
	"syscall"
)

// limitUnsent makes c's socket report room for writing only while it
// holds fewer than n bytes not yet sent (TCP_NOTSENT_LOWAT; 0: no
// bound), where the system has that.
func limitUnsent(c net.Conn, n int) {
	if n == 0 {
		n = 1<<31 - 1 // as the system's default: no bound
	}
	controlSocket(c, func(fd int) {
		syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpNotsentLowat, n)
	})
}
