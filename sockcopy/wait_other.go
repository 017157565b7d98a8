//go:build !unix

package sockcopy

import "net"

// WaitReadable returns at once where socket peeks are not wired up: the
// relays then wait in their reads, holding a pooled buffer while they do.
func WaitReadable(c net.Conn) error { return nil }

// ReadNow reads nothing where sockets are not wired up: relays then read
// in the ordinary way.
func ReadNow(c net.Conn, p []byte) (int, error) { return 0, nil }

// canReadNow is false where sockets are not wired up: Copy reads in the
// ordinary way, and never into a Filler.
func canReadNow(c net.Conn) bool { return false }
