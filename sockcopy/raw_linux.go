//go:build linux && !race

package sockcopy

import (
	"syscall"
	"unsafe"
)

// readNonblocking reads what the socket fd holds into p, without telling
// the Go scheduler that a system call is under way (syscall.Read does).
//
// Why: fd is a socket of Go's poller, so it is non-blocking, and the read
// never waits; but moving a full buffer (up to Chunk, 64 KiB) takes 20 to
// 60 µs. Once a read announced to the scheduler has lasted 20 µs while
// other goroutines wait to run, the runtime's monitor hands the P to
// another thread (waking it), and the reading thread, back from the
// kernel, finds its P gone and sleeps: two wake-ups of threads per read.
// A bridge on one core reading its destinations for a download, and a
// client on its one core reading its apps' uploads, paid that on many
// reads. With raw reads, 8 downloads on loopback cost the bridge 4% less
// CPU per GiB and 30% fewer context switches per MiB, and 8 uploads the
// client 4% less and 40% fewer (two builds side by side, interleaved
// rounds; the closing note of issue 9 has the figures).
//
// The same holds for writes (writeNonblocking, used by Write), and for
// reads that wait in the poller first (Read). Race-detector builds keep
// syscall.Read and c.Read and c.Write (raw_unix_other.go, raw_other.go),
// which tell the detector what the kernel read and wrote.
func readNonblocking(fd uintptr, p []byte) (int, error) {
	return rawIO(syscall.SYS_READ, fd, p)
}

// rawSyscalls says that readNonblocking and writeNonblocking bypass the
// scheduler's bookkeeping (Write takes its own path only then).
const rawSyscalls = true

// writeNonblocking writes p to the socket fd, as readNonblocking reads.
func writeNonblocking(fd uintptr, p []byte) (int, error) {
	return rawIO(syscall.SYS_WRITE, fd, p)
}

// rawIO makes the read or write system call trap on fd with p, as
// syscall.Read and syscall.Write do, less the scheduler's bookkeeping.
func rawIO(trap, fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
