package main

import (
	"io"
	"runtime"
	"strings"
	"testing"
)

// TestProcsFlag: a bridge runs on every core unless -procs says
// otherwise; -procs 1 puts it on one, a negative count is refused, and a
// $GOMAXPROCS the operator set stays in charge.
func TestProcsFlag(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.procs != 0 {
		t.Fatalf("-procs defaults to %d, want 0 (every core)", c.procs)
	}
	t.Setenv("GOMAXPROCS", "")
	runtime.GOMAXPROCS(3)
	useCores(c.procs)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Fatalf("by default the bridge's cores changed to %d, want them left alone", got)
	}
	if c, err = parseFlags([]string{"-procs", "1"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	useCores(c.procs)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("-procs 1 left the bridge on %d cores", got)
	}
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	useCores(1)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Fatalf("with GOMAXPROCS=3 set, -procs 1 made it %d cores", got)
	}
	if _, err := parseFlags([]string{"-procs", "-1"}, io.Discard); err == nil || !strings.Contains(err.Error(), "number of cores") {
		t.Fatalf("-procs -1: %v, want an error asking for a number of cores", err)
	}
}
