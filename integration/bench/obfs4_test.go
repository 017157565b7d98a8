//go:build linux

package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The bridge line obfs4proxy 0.0.14 writes becomes the pt spec's SOCKS
// argument list, with its separators escaped, or the obfs4 figures could
// not be measured at all.
func TestObfs4BridgeArgs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "obfs4_bridgeline.txt")
	line := "# obfs4 torrc client bridge line\n#\n# Before distributing this Bridge, edit the placeholder fields\n\n" +
		"Bridge obfs4 <IP ADDRESS>:<PORT> <FINGERPRINT> cert=ab+c/d;e iat-mode=0\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := obfs4BridgeArgs(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := `cert=ab+c/d\;e;iat-mode=0`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if err := os.WriteFile(path, []byte("# no bridge line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := obfs4BridgeArgs(path); err == nil {
		t.Error("a file without a Bridge line gave no error")
	}
}
