//go:build !unix

package transport

import "net"

// readAvailable is a no-op where non-blocking socket reads are not wired
// up: the face then reads the rest of the bytes itself, and a stranger's
// connection may end with FIN where a plain server would reset it.
func readAvailable(c net.Conn, p []byte) int { return 0 }
