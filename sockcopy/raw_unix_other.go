//go:build unix && (!linux || race)

package sockcopy

import "syscall"

// readNonblocking reads what the socket fd holds into p (raw_linux.go
// says why Linux reads differently outside race-detector builds).
func readNonblocking(fd uintptr, p []byte) (int, error) {
	return syscall.Read(int(fd), p)
}
