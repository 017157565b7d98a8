//go:build linux

package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// serveBlob serves size random bytes over HTTP on 127.0.0.1 inside the
// Tor network's namespace and returns the URL and the blob's SHA-256.
func serveBlob(t *testing.T, n *torNet, size int) (url, hash string) {
	t.Helper()
	blob := make([]byte, size)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	ln := n.listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprintf("http://%s/blob", ln.Addr()), hex.EncodeToString(sum[:])
}

// fetchThroughTor GETs url through the tor client, retrying while tor
// still builds its first circuits, and checks the body's SHA-256.
func fetchThroughTor(t *testing.T, c *torClient, url, hash string, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	hc := c.httpClient()
	for attempt := 1; ; attempt++ {
		body, err := get(ctx, hc, url)
		if err == nil {
			if got := sha256Hex(body); got != hash {
				t.Fatalf("fetched %d bytes with SHA-256 %s, want %s", len(body), got, hash)
			}
			t.Logf("fetched %d bytes through tor in %v (attempt %d)", len(body), time.Since(start).Round(time.Millisecond), attempt)
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("fetching %s through tor: %v (after %d attempts)", url, err, attempt)
		}
		t.Logf("attempt %d: %v", attempt, err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func get(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// TestTorVanillaBridge proves the private Tor network harness: a client
// bootstraps through a plain bridge (no pluggable transport) and fetches
// 1 MiB from a loopback server through bridge, middle and exit.
func TestTorVanillaBridge(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the private Tor network in -short mode")
	}
	n := startTorNet(t, torNetOptions{})
	b := n.startBridge(t, nil)
	c := n.startClient(t, []string{b.bridgeLine()}, nil)
	url, hash := serveBlob(t, n, 1<<20)
	fetchThroughTor(t, c, url, hash, 60*time.Second)

	if n.ns != nil {
		// The exit accepts *:*, but its namespace holds only lo: a server
		// on the host's own loopback must be out of its reach. (The kernel
		// completes the handshake from the backlog, so a reachable
		// listener would show as a successful CONNECT.)
		// The namespace has a loopback of its own, whose ports are not
		// the host's: a CONNECT that succeeds may have reached a server
		// of the test network that happens to listen on the same port
		// number there (CI met one). Only a connection the host's
		// listener accepts came out of the namespace; on a collision the
		// test tries another port.
		for try := 0; ; try++ {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			conn, err := c.dial(ctx, ln.Addr().String())
			cancel()
			if err != nil {
				ln.Close()
				t.Logf("as expected, outside the namespace: %v", err)
				break
			}
			conn.Close()
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
			reached, aerr := ln.Accept()
			ln.Close()
			if aerr == nil {
				reached.Close()
				t.Fatalf("tor connected to %s outside the network namespace", ln.Addr())
			}
			if try == 2 {
				t.Fatalf("three CONNECTs to host ports succeeded without reaching them: %s was the last", ln.Addr())
			}
			t.Logf("CONNECT to %s reached a server inside the namespace on the same port; trying another", ln.Addr())
		}
	}
}
