package main

import (
	"io"
	"strings"
	"testing"
)

// TestProcsFlag: a bridge adapts its cores to its load unless -procs
// fixes them (package cores says why), and a negative count is refused.
func TestProcsFlag(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.procs != 0 {
		t.Fatalf("-procs defaults to %d, want 0 (as many as the load needs)", c.procs)
	}
	if c, err = parseFlags([]string{"-procs", "1"}, io.Discard); err != nil || c.procs != 1 {
		t.Fatalf("-procs 1: %v, procs %d", err, c.procs)
	}
	if _, err := parseFlags([]string{"-procs", "-1"}, io.Discard); err == nil || !strings.Contains(err.Error(), "number of cores") {
		t.Fatalf("-procs -1: %v, want an error asking for a number of cores", err)
	}
}
