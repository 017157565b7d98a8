//go:build !linux || race

package sockcopy

import "syscall"

// rawSyscalls is false here: Write is c.Write (raw_linux.go says
// what Linux does outside race-detector builds).
const rawSyscalls = false

// writeNonblocking is never called where rawSyscalls is false.
func writeNonblocking(fd uintptr, p []byte) (int, error) {
	return 0, syscall.EINVAL
}
