//go:build !unix

package egress

import "net"

// waitReadable returns at once where socket peeks are not wired up: the
// relays then wait in their reads, holding a pooled buffer while they do.
func waitReadable(c net.Conn) error { return nil }

// readNow reads nothing where sockets are not wired up: relays then read
// in the ordinary way.
func readNow(c net.Conn, p []byte) (int, error) { return 0, nil }
