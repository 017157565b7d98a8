package transport

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// writeCounter counts the writes that reach a TCP connection.
type writeCounter struct {
	net.Conn
	writes, bytes atomic.Int64
	mu            sync.Mutex
	sizes         []int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	w.bytes.Add(int64(len(p)))
	w.mu.Lock()
	w.sizes = append(w.sizes, len(p))
	w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *writeCounter) NetConn() net.Conn { return w.Conn }

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestBulkRecordsLeaveTogether proves that an upload's TLS records leave
// the client a write of several at a time, not one system call per
// record as crypto/tls writes them. Before countingConn kept full records
// for the next write, no write to the socket exceeded one record (16,406
// bytes) after the handshake.
func TestBulkRecordsLeaveTogether(t *testing.T) {
	// Made first: under -race on a loaded machine, 16 MiB took more than
	// the test face's 2 s idle time, and the bridge rightly ended the
	// idle connection under a session that may not move to another.
	data := payload(16<<20, 7)
	b := startBridge(t, newSiteFace(t), echoHandler, nil)
	cfg := b.clientConfig()
	var wc *writeCounter
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		wc = &writeCounter{Conn: c}
		return wc, nil
	}
	cfg.singleCarrier = true
	// The bounds as on a path of 800 Mbit/s (writes of 256 KiB), whatever
	// this machine's speed: loaded by other tests under -race, it measured
	// below 52 Mbit/s, where a write is one record by design.
	cfg.sendRate = 100e6
	sess, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st := openStream(t, sess)
	if err := roundTrip(st, data); err != nil {
		t.Fatal(err)
	}
	wc.mu.Lock()
	sizes := append([]int(nil), wc.sizes...)
	wc.mu.Unlock()
	var big, together, bulk int64
	for _, n := range sizes {
		if n > fullRecord+tlsRecordOverhead {
			big++
			together += int64(n)
		}
		if n >= fullRecord {
			bulk += int64(n)
		}
	}
	t.Logf("%d writes for %d bytes; %d of them more than one record; bulk writes average %.0f bytes",
		len(sizes), wc.bytes.Load(), big, float64(bulk)/float64(max(1, countAtLeast(sizes, fullRecord))))
	// 16 MiB is about 1,000 records: most should have left with others.
	if total := wc.bytes.Load(); together < total/2 {
		t.Fatalf("only %d of %d bytes left in writes of more than one record (%d of %d writes): records leave one system call each",
			together, total, big, len(sizes))
	}
	if avg := float64(bulk) / float64(countAtLeast(sizes, fullRecord)); avg < 2*fullRecord {
		t.Fatalf("bulk writes average %.0f bytes: fewer than two records each", avg)
	}
}

func countAtLeast(sizes []int, n int) int {
	k := 0
	for _, s := range sizes {
		if s >= n {
			k++
		}
	}
	return k
}

// TestKeptRecordsGoFirst proves the order a carrier's bytes keep while
// full records are kept: a write from elsewhere (a close_notify, a CLOSE)
// goes after them, in the same write; flush sends them; and the FIN comes
// after them.
func TestKeptRecordsGoFirst(t *testing.T) {
	raw, peer := tcpPair(t)
	wc := &writeCounter{Conn: raw}
	c := &countingConn{Conn: wc}
	rec := func(b byte) []byte { return bytes.Repeat([]byte{b}, fullRecord+tlsRecordOverhead) }

	c.batch()
	c.Write(rec('a'))
	c.Write(rec('b'))
	if n := wc.writes.Load(); n != 0 {
		t.Fatalf("%d writes reached the socket while full records were kept", n)
	}
	done := make(chan struct{})
	go func() { // another goroutine's small write: it must not overtake
		defer close(done)
		c.Write([]byte("close_notify"))
	}()
	<-done
	if n := wc.writes.Load(); n != 1 {
		t.Fatalf("the small write and the two kept records took %d writes, want 1", n)
	}
	c.Write(rec('c')) // still batching: kept
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	c.batch()
	c.Write(rec('d'))
	if !c.closeWrite() {
		t.Fatal("closeWrite did not send the kept records and the FIN")
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatalf("reading to the FIN: %v", err)
	}
	want := bytes.Join([][]byte{rec('a'), rec('b'), []byte("close_notify"), rec('c'), rec('d')}, nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("the peer got %d bytes, not the %d written in order", len(got), len(want))
	}
	if n := wc.writes.Load(); n != 3 {
		t.Fatalf("%d writes reached the socket, want 3 (records with the small write, flush, closeWrite)", n)
	}
	if w := c.written.Load(); w != int64(len(want)) {
		t.Fatalf("counted %d bytes written, want %d", w, len(want))
	}
}
