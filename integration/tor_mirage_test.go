//go:build linux

package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTorMirageBridge proves what a Tor Browser user relies on: real tor
// with `ClientTransportPlugin mirage exec mirage-client` and the bridge
// line that mirage-server (run by a real tor bridge as its
// ServerTransportPlugin) wrote for the operator, bootstraps to 100% through
// the Mirage bridge and fetches a page, hash-checked, over a private Tor
// network on loopback.
func TestTorMirageBridge(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the private Tor network in -short mode")
	}
	n := startTorNet(t, torNetOptions{})
	line := startMirageBridge(t, n)
	c := n.startClient(t, []string{line}, []string{"ClientTransportPlugin mirage exec " + clientBin})
	url, hash := serveBlob(t, n, 1<<20)
	fetchThroughTor(t, c, url, hash, 60*time.Second)
}

// startMirageBridge starts a tor bridge with mirage-server as its
// ServerTransportPlugin and returns the Mirage bridge line the server
// wrote, completed as the operator would complete it.
func startMirageBridge(t *testing.T, n *torNet) string {
	t.Helper()
	port := n.freePort(t)
	b := n.startBridge(t, []string{
		"ServerTransportPlugin mirage exec " + serverBin + " -log " + filepath.Join(t.TempDir(), "mirage-server.log"),
		fmt.Sprintf("ServerTransportListenAddr mirage 127.0.0.1:%d", port),
		"ServerTransportOptions mirage sni=www.example.com",
	})
	raw, err := os.ReadFile(filepath.Join(b.dataDir, "pt_state", "mirage_bridgeline.txt"))
	if err != nil {
		t.Fatalf("the bridge line file: %v", err)
	}
	var line string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "Bridge mirage ") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no bridge line in mirage_bridgeline.txt:\n%s", raw)
	}
	// What the operator does before handing the line out.
	line = strings.Replace(line, "<IP ADDRESS>", "127.0.0.1", 1)
	line = strings.Replace(line, "<FINGERPRINT>", b.fingerprint, 1)
	t.Logf("bridge line: %s", line)
	return line
}
