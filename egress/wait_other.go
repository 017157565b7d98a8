//go:build !unix

package egress

import "net"

// waitReadable returns at once where socket peeks are not wired up: the
// relays then wait in their reads, holding a pooled buffer while they do.
func waitReadable(c net.Conn) error { return nil }
