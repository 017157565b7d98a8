//go:build linux

package integration_test

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestClientHelloCapture: mirage-client -hello-capture sends a captured
// Chromium hello (the README's recipe, run here), and the bridge accepts
// it: curl fetches through it. A bad capture path is a clear error.
func TestClientHelloCapture(t *testing.T) {
	curl := requirePeer(t, "curl")
	_, file, _, _ := runtime.Caller(0)
	captures := filepath.Join(filepath.Dir(file), "..", "transport", "testdata", "chromium-156.0.8078.108")
	b := startServer(t, "", "-allow-private")
	_, proxy := startClient(t, b.link, "-hello-capture", captures)
	o := startOrigin(t, 100000)
	curlFetch(t, curl, o, "with a captured hello", proxy.curlSOCKS()...)

	out, err := runCmd(t, 20*time.Second, clientBin, "-listen", "127.0.0.1:0", "-auth", "none", "-hello-capture", "/nonexistent", b.link)
	if err == nil {
		t.Fatalf("a missing capture was accepted:\n%s", out)
	}
	// (err carries the client's stderr, after the command line.)
	if !containsAll(err.Error(), "-hello-capture: ", "/nonexistent") {
		t.Fatalf("the error does not name the flag and the file: %v", err)
	}
}

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
