//go:build linux

package main

import (
	"os/exec"
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

// TestExitedSeesACrash proves the harness tells a process that ended on
// its own (as a crashed bridge does) from one that runs: the note that
// says so depends on it.
func TestExitedSeesACrash(t *testing.T) {
	running := exec.Command("sleep", "30")
	if err := running.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	defer func() { running.Process.Kill(); running.Wait() }()
	crashed := exec.Command("sh", "-c", "exit 2")
	if err := crashed.Start(); err != nil {
		t.Skip("no sh:", err)
	}
	defer crashed.Wait()
	if exited(running) {
		t.Fatal("a running process counted as ended")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !exited(crashed) {
		if time.Now().After(deadline) {
			t.Fatal("a process that exited (not yet reaped) still counts as running after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if exited(nil) {
		t.Fatal("no process counted as ended")
	}
}
