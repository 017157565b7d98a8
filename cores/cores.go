// Package cores sets how many CPU cores a Mirage program runs its
// goroutines on: mirage-client's and mirage-server's -procs, the mobile
// library's Options.Cores.
//
// Why fewer cores can cost less: a stream's bytes pass between
// goroutines (a carrier's reader, smux's receive loop, the stream's
// copier), and each time one is woken while a core is idle, Go's
// scheduler wakes a thread for that core too, which finds nothing to
// run, spins and sleeps again. On one core the client spent 8-16% less
// CPU per GiB, and a bridge 9-16% less, at about 900 MiB/s on loopback:
// more than any link a client serves, though not what a bridge for many
// users needs.
package cores

import (
	"os"
	"runtime"
)

// Use lets the Go runtime run goroutines on n cores at once; 0 leaves
// its choice (every core the process may use). $GOMAXPROCS, if set,
// decides instead: an operator's explicit setting wins.
func Use(n int) {
	if n > 0 && !operatorChose() {
		runtime.GOMAXPROCS(n)
	}
}

// operatorChose reports whether $GOMAXPROCS is set: an operator's
// explicit choice, which neither Use nor Adapt overrides.
func operatorChose() bool { return os.Getenv("GOMAXPROCS") != "" }
