package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"
)

// wireLog keeps every byte written to the connection it wraps.
type wireLog struct {
	net.Conn
	mu  sync.Mutex
	out []byte
}

func (w *wireLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.out = append(w.out, p...)
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// recordLengths returns the lengths of the TLS records in b.
func recordLengths(t *testing.T, b []byte) []int {
	t.Helper()
	var ls []int
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("%d bytes of a partial record header", len(b))
		}
		n := 5 + int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < n {
			t.Fatalf("partial record: %d of %d bytes", len(b), n)
		}
		ls = append(ls, n)
		b = b[n:]
	}
	return ls
}

// sealPair is a TLS 1.3 connection over loopback: a utls client with
// Chrome's hello offering only one cipher suite, and a crypto/tls server
// as the bridge's, each over a countingConn over a wireLog, with the
// secrets each logged.
type sealPair struct {
	client, server             net.Conn
	clientRaw, serverRaw       *countingConn
	clientWire, serverWire     *wireLog
	clientSecret, serverSecret *trafficSecretLog
	suite                      uint16
}

func newSealPair(t *testing.T, suite uint16, serverCfg *tls.Config) *sealPair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := &sealPair{
		clientSecret: &trafficSecretLog{label: clientTrafficSecret},
		serverSecret: &trafficSecretLog{label: serverTrafficSecret},
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { cc.Close(); sc.Close() })
	p.clientWire, p.serverWire = &wireLog{Conn: cc}, &wireLog{Conn: sc}
	p.clientRaw, p.serverRaw = &countingConn{Conn: p.clientWire}, &countingConn{Conn: p.serverWire}

	spec, err := chromeSpec()
	if err != nil {
		t.Fatal(err)
	}
	spec.CipherSuites = []uint16{suite}
	uc := utls.UClient(p.clientRaw, &utls.Config{
		InsecureSkipVerify:          true,
		KeyLogWriter:                p.clientSecret,
		DynamicRecordSizingDisabled: true, // as the client's (certCheck.config)
	}, utls.HelloCustom)
	if err := uc.ApplyPreset(spec); err != nil {
		t.Fatal(err)
	}
	if serverCfg == nil {
		serverCfg = &tls.Config{}
	}
	serverCfg.Certificates = []tls.Certificate{siteCertificate(t)}
	tc := tls.Server(p.serverRaw, withKeyLog(serverCfg, p.serverSecret))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- tc.HandshakeContext(ctx) }()
	if err := uc.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().CipherSuite; got != suite {
		t.Fatalf("handshake chose suite %#04x, want %#04x", got, suite)
	}
	p.client, p.server, p.suite = uc, tc, suite
	return p
}

// sealing returns w (TLS over raw) as a sealingConn ready to take over,
// as the handshakes ready theirs: the first write after the handshake
// goes through TLS and is kept.
func (p *sealPair) sealing(t *testing.T, w net.Conn, raw *countingConn, secret *trafficSecretLog, fullFrom int64) *sealingConn {
	t.Helper()
	sc := newSealingConn(w, raw, fullFrom)
	if err := sc.writeFirst([]byte("first record"), p.suite, secret.get()); err != nil {
		t.Fatal(err)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.ready == nil {
		t.Fatal("the sealer is not ready after the first record")
	}
	return sc
}

var tls13Suites = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}

// TestSealedRecordsReadByTLS proves that what the sealer writes, in every
// TLS 1.3 cipher suite and both ways, is read by the peer's own TLS (utls
// as the client, crypto/tls as the bridge) as the bytes written, in
// order, and that its close_notify ends the peer's reading cleanly, while
// TLS's own writer, whose record numbers the sealer uses, writes nothing.
// The
// bridge's TLS sends a session ticket before the first record kept, so
// its sequence numbers do not start at 0.
func TestSealedRecordsReadByTLS(t *testing.T) {
	for _, suite := range tls13Suites {
		for _, dir := range []string{"client to bridge", "bridge to client"} {
			t.Run(fmt.Sprintf("%s/%#04x", dir, suite), func(t *testing.T) {
				p := newSealPair(t, suite, nil)
				w, r, raw, secret := p.client, p.server, p.clientRaw, p.clientSecret
				if dir == "bridge to client" {
					w, r, raw, secret = p.server, p.client, p.serverRaw, p.serverSecret
				}
				sc := p.sealing(t, w, raw, secret, 0)
				if dir == "bridge to client" {
					// The kept record came after the session
					// ticket Go's TLS sends with its Finished.
					sc.mu.Lock()
					next := sc.ready.seq
					sc.mu.Unlock()
					if next < 2 {
						t.Fatalf("the bridge's next record is number %d: the ticket before it was not counted", next)
					}
				}
				var want bytes.Buffer
				want.WriteString("first record")
				got := make(chan []byte, 1)
				go func() {
					b, err := io.ReadAll(r)
					if err != nil {
						t.Errorf("peer's TLS: %v", err)
					}
					got <- b
				}()
				for i, n := range []int{1, 100, tlsMaxPlaintext - 1, tlsMaxPlaintext, tlsMaxPlaintext + 1, 70000, 5} {
					b := payload(n, uint64(i))
					want.Write(b)
					var err error
					switch i % 3 {
					case 0:
						_, err = sc.Write(b)
					case 1: // the flusher's: room after it
						buf := make([]byte, n, n+100)
						copy(buf, b)
						_, err = sc.writeOwned(buf)
						if !bytes.Equal(buf, b) {
							t.Fatalf("writeOwned left its buffer changed")
						}
					case 2: // the flusher's, with no room after it
						_, err = sc.writeOwned(bytes.Clone(b))
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				if !sc.sealing() {
					t.Fatal("the sealer did not take over")
				}
				// TLS's own writer would reuse the sealer's record
				// numbers, so its nonces: it must write nothing now.
				if _, err := w.Write([]byte("from TLS")); err == nil {
					t.Fatal("TLS wrote after the sealer took over")
				}
				if err := sc.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if _, err := sc.Write([]byte("x")); err == nil {
					t.Error("a write after close_notify succeeded")
				}
				select {
				case b := <-got:
					if !bytes.Equal(b, want.Bytes()) {
						t.Fatalf("peer read %d bytes, want %d (or different ones)", len(b), want.Len())
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the peer's read did not end at close_notify")
				}
			})
		}
	}
}

// TestSealedRecordsAreTLSs proves that the sealer changes nothing on the
// wire: the same writes make records of the same lengths with and
// without it, on the bridge, whose TLS grows its records (dynamic record
// sizing) until 128 KiB have gone, and on the client, whose TLS does not.
func TestSealedRecordsAreTLSs(t *testing.T) {
	writes := []int{5000, 20000, 1, 60000, 70000, 300, 16384, 100000, 40000, 7}
	for _, side := range []string{"bridge", "client"} {
		t.Run(side, func(t *testing.T) {
			var lengths [2][]int
			for i, seal := range []bool{false, true} {
				p := newSealPair(t, tls.TLS_AES_128_GCM_SHA256, nil)
				w, r, raw, secret, wire, fullFrom := p.server, p.client, p.serverRaw, p.serverSecret, p.serverWire, int64(recordSizeBoost)
				if side == "client" {
					w, r, raw, secret, wire, fullFrom = p.client, p.server, p.clientRaw, p.clientSecret, p.clientWire, 0
				}
				go io.Copy(io.Discard, r)
				sc := newSealingConn(w, raw, fullFrom)
				if seal {
					sc = p.sealing(t, w, raw, secret, fullFrom)
				} else if _, err := sc.Write([]byte("first record")); err != nil {
					t.Fatal(err)
				}
				wire.mu.Lock()
				start := len(wire.out)
				wire.mu.Unlock()
				for j, n := range writes {
					if _, err := sc.writeOwned(payload(n, uint64(j))); err != nil {
						t.Fatal(err)
					}
				}
				if sc.sealing() != seal {
					t.Fatalf("sealing %v, want %v", sc.sealing(), seal)
				}
				wire.mu.Lock()
				lengths[i] = recordLengths(t, wire.out[start:])
				wire.mu.Unlock()
			}
			if fmt.Sprint(lengths[0]) != fmt.Sprint(lengths[1]) {
				t.Fatalf("records differ:\nTLS's:    %v\nsealed: %v", lengths[0], lengths[1])
			}
		})
	}
}

// TestSealerWaitsForFullRecords proves that the bridge's sealer leaves
// the writing to TLS while TLS still grows its records.
func TestSealerWaitsForFullRecords(t *testing.T) {
	p := newSealPair(t, tls.TLS_AES_128_GCM_SHA256, nil)
	go io.Copy(io.Discard, p.client)
	sc := p.sealing(t, p.server, p.serverRaw, p.serverSecret, recordSizeBoost)
	for p.serverRaw.written.Load() < recordSizeBoost {
		if sc.sealing() {
			t.Fatalf("sealing after %d bytes", p.serverRaw.written.Load())
		}
		if _, err := sc.Write(make([]byte, 10000)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := sc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if !sc.sealing() {
		t.Fatal("not sealing after 128 KiB")
	}
}

// TestNoTakeoverAfterTLSCloseNotify proves that once TLS sent its
// close_notify, the sealer does not write after it.
func TestNoTakeoverAfterTLSCloseNotify(t *testing.T) {
	p := newSealPair(t, tls.TLS_AES_128_GCM_SHA256, nil)
	go io.Copy(io.Discard, p.client)
	sc := p.sealing(t, p.server, p.serverRaw, p.serverSecret, recordSizeBoost)
	if err := sc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	p.serverRaw.written.Store(recordSizeBoost) // as if TLS had sent 128 KiB
	if _, err := sc.Write([]byte("after close_notify")); err == nil {
		t.Error("a write after TLS's close_notify succeeded")
	}
	if sc.sealing() {
		t.Error("the sealer took over after TLS's close_notify")
	}
}

// TestSealerNotReadyGoesOnWithTLS proves that a record the sealer cannot
// open (the wrong secret) leaves the writing to TLS, which the peer still
// reads.
func TestSealerNotReadyGoesOnWithTLS(t *testing.T) {
	p := newSealPair(t, tls.TLS_AES_128_GCM_SHA256, nil)
	sc := newSealingConn(p.client, p.clientRaw, 0)
	p.clientRaw.captureNext()
	if _, err := sc.Write([]byte("first record")); err != nil {
		t.Fatal(err)
	}
	rec, records := p.clientRaw.takeCaptured()
	wrong := bytes.Clone(p.clientSecret.get())
	wrong[0] ^= 1
	sc.prepare(p.suite, wrong, rec, records)
	sc.prepare(0x1234, p.clientSecret.get(), rec, records)
	sc.prepare(p.suite, nil, rec, records)
	if _, err := sc.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	if sc.sealing() {
		t.Fatal("sealing with nothing that checked out")
	}
	got := make([]byte, len("first recordsecond"))
	p.server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(p.server, got); err != nil || string(got) != "first recordsecond" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestCarriersSealTheirRecords proves that a session's carriers take the
// sealing over, on the client and on the bridge, with every face: a
// handshake that failed to ready it would only cost speed, which no other
// test would see.
func TestCarriersSealTheirRecords(t *testing.T) {
	for name, face := range faces(t) {
		t.Run(name, func(t *testing.T) {
			b := startBridge(t, face(), echoHandler, nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sess, err := Dial(ctx, b.clientConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			st, err := sess.OpenStream(ctx, Request{Command: CmdDefault})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := roundTrip(st, payload(1<<20, 1)); err != nil {
				t.Fatal(err)
			}
			sealing := func(c *sessionConn) error {
				c.mu.Lock()
				defer c.mu.Unlock()
				if len(c.carriers) == 0 {
					return errors.New("no carrier")
				}
				for _, cr := range c.carriers {
					sc, ok := cr.conn.(*sealingConn)
					if !ok {
						return fmt.Errorf("carrier's connection is a %T", cr.conn)
					}
					if !sc.sealing() {
						return errors.New("carrier not sealing")
					}
				}
				return nil
			}
			if err := sealing(sess.conn); err != nil {
				t.Errorf("client: %v", err)
			}
			b.server.mu.Lock()
			var sessions []*serverSession
			for _, ss := range b.server.sessions {
				sessions = append(sessions, ss)
			}
			b.server.mu.Unlock()
			if len(sessions) != 1 {
				t.Fatalf("%d sessions on the bridge", len(sessions))
			}
			if err := sealing(sessions[0].conn); err != nil {
				t.Errorf("bridge: %v", err)
			}
		})
	}
}
