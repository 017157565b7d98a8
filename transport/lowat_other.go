//go:build !linux && !darwin

package transport

import "net"

// limitUnsent does nothing where the system has no TCP_NOTSENT_LOWAT:
// only the session's own queue is bounded there.
func limitUnsent(net.Conn, int) {}
