package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// chromiumAbort is testdata/chromium-156-abort.json: what Chromium 156
// sends after the flight of a server whose certificate it does not trust.
type chromiumAbort struct {
	AfterServerFlight []tlsRecord `json:"after_server_flight"`
	Close             string      `json:"close"`
}

type tlsRecord struct {
	Type   int `json:"type"`
	Length int `json:"length"`
}

func loadChromiumAbort(t *testing.T) chromiumAbort {
	t.Helper()
	b, err := os.ReadFile("testdata/chromium-156-abort.json")
	if err != nil {
		t.Fatal(err)
	}
	var a chromiumAbort
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	if len(a.AfterServerFlight) == 0 || a.Close == "" {
		t.Fatal("testdata/chromium-156-abort.json describes no records or no close")
	}
	return a
}

// recordingConn keeps every byte read from the client.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got = append(c.got, p[:n]...)
	c.mu.Unlock()
	return n, err
}

// interception is what a man in the middle saw of one client.
type interception struct {
	records      []tlsRecord // after the ClientHello
	close        string      // "FIN", "RST" or "none" (still open after 5 s)
	handshakeErr error       // the interceptor's TLS handshake
}

// startInterceptor runs a man in the middle on loopback: a TLS server
// with a self-signed certificate of its own for testSNI, which terminates
// the client's TLS as an intercepting middlebox does. It reports what the
// first client sent.
func startInterceptor(t *testing.T) (string, <-chan interception) {
	t.Helper()
	cert, err := SelfSignedCertificate([]string{testSNI}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan interception, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		rc := &recordingConn{Conn: c}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(rc, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
		var in interception
		if in.handshakeErr = tc.Handshake(); in.handshakeErr == nil {
			// An interceptor that got through reads what the client
			// sends next, as a website would.
			tc.Read(make([]byte, 4096))
		}
		// Whatever the client sends until it closes.
		_, err = io.Copy(io.Discard, rc)
		switch {
		case err == nil:
			in.close = "FIN"
		case errors.Is(err, syscall.ECONNRESET):
			in.close = "RST"
		default:
			in.close = "none"
		}
		rc.mu.Lock()
		records, perr := parseRecords(rc.got)
		rc.mu.Unlock()
		if perr != nil {
			in.close += " (" + perr.Error() + ")"
		}
		if len(records) > 0 {
			in.records = records[1:] // the ClientHello
		}
		out <- in
	}()
	return ln.Addr().String(), out
}

// parseRecords splits b into TLS records.
func parseRecords(b []byte) ([]tlsRecord, error) {
	var rs []tlsRecord
	for len(b) > 0 {
		if len(b) < 5 {
			return rs, fmt.Errorf("%d bytes of a partial record header", len(b))
		}
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < 5+n {
			return rs, fmt.Errorf("partial record of type %d", b[0])
		}
		rs = append(rs, tlsRecord{Type: int(b[0]), Length: n})
		b = b[5+n:]
	}
	return rs, nil
}

// TestInterceptorSeesWhatChromiumSends is issue 8, item 3: a man in the
// middle with a certificate of its own, which terminates TLS, receives
// from the client exactly what it would receive from Chromium 156 (as
// measured, testdata/chromium-156-abort.json): a ChangeCipherSpec and one
// encrypted certificate_unknown alert after its flight, then a FIN. No
// Finished, no application data. Before, the client finished the
// handshake and sent its 510-byte opening, which no browser sends to a
// server whose certificate it does not trust. Both with a server name
// (checked against the chain and the pin) and without (the pin alone).
func TestInterceptorSeesWhatChromiumSends(t *testing.T) {
	want := loadChromiumAbort(t)
	b := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.ServerNames = nil })
	for _, sni := range []string{testSNI, ""} {
		t.Run(fmt.Sprintf("sni=%q", sni), func(t *testing.T) {
			t.Parallel()
			addr, seen := startInterceptor(t)
			cfg := b.clientConfig()
			cfg.Address = addr
			cfg.ServerName = sni
			_, err := Dial(context.Background(), cfg)
			if !errors.Is(err, ErrCertificate) {
				t.Errorf("Dial through the interceptor: err = %v, want ErrCertificate", err)
			} else if !strings.Contains(err.Error(), "intercepting") || !strings.Contains(err.Error(), "fresh link") {
				t.Errorf("error %q does not say what may be happening and what to do", err)
			}
			var in interception
			select {
			case in = <-seen:
			case <-time.After(10 * time.Second):
				t.Fatal("the interceptor saw no end of the connection")
			}
			if fmt.Sprint(in.records) != fmt.Sprint(want.AfterServerFlight) {
				t.Errorf("after the server's flight the client sent records %v; Chromium sends %v", in.records, want.AfterServerFlight)
			}
			if in.close != want.Close {
				t.Errorf("the client ended the connection with %s; Chromium with %s", in.close, want.Close)
			}
			// The interceptor decrypted the alert: it is Chromium's.
			if in.handshakeErr == nil || !strings.Contains(in.handshakeErr.Error(), "remote error: tls: unknown certificate") {
				t.Errorf("the interceptor's handshake ended with %v, want the client's certificate_unknown alert", in.handshakeErr)
			}
		})
	}
}

// TestGenuineBridgeCertificates proves that the genuine bridge is still
// accepted in each way a client may trust it, and that a client whose
// link pins another certificate refuses it with the clear error.
func TestGenuineBridgeCertificates(t *testing.T) {
	// A bridge that binds its tunnels' certificates is accepted by the
	// binding, whatever the pin (TestSiteTunnelCertificateIsBound); the
	// pin and the chain are what a client checks against one that does
	// not (a bridge from before), so that is the one tested here.
	site := startBridge(t, newSiteFace(t), echoHandler, func(c *ServerConfig) { c.siteUnbound = true })
	cover := startBridge(t, &CoverFace{Address: startPlainSite(t)}, echoHandler, nil)
	siteRoots := x509.NewCertPool()
	leaf, err := x509.ParseCertificate(siteCertificate(t).Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	siteRoots.AddCert(leaf)
	otherPin := link.SPKIPin([]byte("another key"))
	for _, tc := range []struct {
		name   string
		b      *testBridge
		adjust func(*ClientConfig)
		ok     bool
	}{
		{"site, self-signed, pinned", site, func(c *ClientConfig) { c.RootCAs = nil }, true},
		{"site, self-signed, pinned, no name", site, func(c *ClientConfig) { c.RootCAs, c.ServerName = nil, "" }, false}, // the bridge wants testSNI: ErrNotBridge
		{"site, chain under RootCAs", site, func(c *ClientConfig) { c.Pin, c.RootCAs = link.Pin{}, siteRoots }, true},
		{"cover, bound certificate", cover, func(c *ClientConfig) { c.RootCAs, c.Pin = nil, otherPin }, true},
		{"site, wrong pin", site, func(c *ClientConfig) { c.Pin = otherPin }, false},
		{"site, no pin, untrusted chain", site, func(c *ClientConfig) { c.Pin = link.Pin{} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.b.clientConfig()
			tc.adjust(cfg)
			sess, err := Dial(context.Background(), cfg)
			if tc.ok {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				sess.Close()
				return
			}
			if err == nil {
				sess.Close()
				t.Fatal("Dial succeeded")
			}
			if cfg.ServerName == "" {
				if !errors.Is(err, ErrNotBridge) {
					t.Fatalf("err = %v, want ErrNotBridge (the pin matches; the bridge refuses the missing name)", err)
				}
				return
			}
			if !errors.Is(err, ErrCertificate) || !strings.Contains(err.Error(), "not valid for "+testSNI) ||
				!strings.Contains(err.Error(), "fresh link") {
				t.Fatalf("err = %v, want ErrCertificate saying the certificate is not valid for %s and what to do", err, testSNI)
			}
		})
	}
}

// TestBrowserRequestAbortsAsChromium proves that mirage-client check's
// request (BrowserRequest) applies the tunnel's decision: it never
// finishes a handshake with a certificate the link does not pin, and
// aborts it as Chromium does.
func TestBrowserRequestAbortsAsChromium(t *testing.T) {
	want := loadChromiumAbort(t)
	addr, seen := startInterceptor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+testSNI+"/", nil)
	p := link.Params{ServerName: testSNI, Pin: transporttest.Pin(t, siteCertificate(t))}
	_, _, err := BrowserRequest(ctx, nil, addr, p, nil, req)
	if !errors.Is(err, ErrCertificate) {
		t.Errorf("BrowserRequest to the interceptor: err = %v, want ErrCertificate", err)
	}
	var in interception
	select {
	case in = <-seen:
	case <-ctx.Done():
		t.Fatal("the interceptor saw no end of the connection")
	}
	if fmt.Sprint(in.records) != fmt.Sprint(want.AfterServerFlight) || in.close != want.Close {
		t.Errorf("the request sent %v and ended with %s; Chromium sends %v and ends with %s", in.records, in.close, want.AfterServerFlight, want.Close)
	}
}
