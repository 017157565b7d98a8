//go:build linux

package main

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestMachineBusyCountsWork proves the machine CPU column counts work
// done, on every core: a busy loop on each for 300 ms shows as at least
// 0.2 s of busy time per core.
func TestMachineBusyCountsWork(t *testing.T) {
	m0 := machineBusySeconds()
	if m0 < 0 {
		t.Skip("no /proc/stat")
	}
	var wg sync.WaitGroup
	end := time.Now().Add(300 * time.Millisecond)
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
			}
		}()
	}
	wg.Wait()
	m1 := machineBusySeconds()
	if want := 0.2 * float64(runtime.NumCPU()); m1-m0 < want {
		t.Fatalf("300 ms of busy loops on %d cores counted as %.2f s of busy time, want %.1f or more", runtime.NumCPU(), m1-m0, want)
	}
}
