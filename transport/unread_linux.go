package transport

import (
	"net"

	"golang.org/x/sys/unix"
)

// unreadBytes returns how many bytes have arrived on c's socket that no
// one has read yet (SIOCINQ), or 0 where that cannot be known.
func unreadBytes(c net.Conn) int {
	n := 0
	controlSocket(c, func(fd int) {
		if v, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}
