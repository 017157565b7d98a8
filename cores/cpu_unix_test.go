//go:build unix

package cores

import (
	"runtime"
	"testing"
	"time"
)

// TestProcessCPUCounts: the clock Adapt reads is this process's CPU time:
// it advances while a goroutine spins, and by no more than the wall time
// allows.
func TestProcessCPUCounts(t *testing.T) {
	start, ok := processCPU()
	if !ok {
		t.Fatal("cannot read the process's CPU time")
	}
	began := time.Now()
	deadline := began.Add(10 * time.Second)
	x := 0
	for {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		now, _ := processCPU()
		if now-start >= 30*time.Millisecond {
			if limit := time.Duration(runtime.NumCPU()) * time.Since(began); now-start > limit+20*time.Millisecond {
				t.Fatalf("the clock advanced %v in %v of wall time on %d cores", now-start, time.Since(began), runtime.NumCPU())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spinning 10 s advanced the process CPU clock only %v (sum %d)", now-start, x)
		}
	}
}
