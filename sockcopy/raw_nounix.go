//go:build !unix

package sockcopy

import "syscall"

// readNonblocking is never called here: rawSyscalls is false, and
// ReadNow reads nothing (wait_other.go).
func readNonblocking(fd uintptr, p []byte) (int, error) {
	return 0, syscall.EINVAL
}
