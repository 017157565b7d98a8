package pt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	goptlib "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

// lockedBuffer collects what goptlib tells tor.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testCertificate(t *testing.T) tls.Certificate {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"www.example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// TestManagedMaxConns proves that under tor the bridge holds the same
// connection limit as standalone (mirage-server -max-conns): with the
// limit's worth of connections open, the next waits unanswered in the
// backlog, and is served once one of them closes. (Before: managed mode
// ignored -max-conns and answered at once.)
func TestManagedMaxConns(t *testing.T) {
	t.Setenv("TOR_PT_MANAGED_TRANSPORT_VER", "1")
	t.Setenv("TOR_PT_SERVER_TRANSPORTS", MethodName)
	t.Setenv("TOR_PT_SERVER_BINDADDR", MethodName+"-127.0.0.1:0")
	t.Setenv("TOR_PT_STATE_LOCATION", t.TempDir())
	t.Setenv("TOR_PT_ORPORT", "127.0.0.1:9") // never dialed here
	out := &lockedBuffer{}
	oldStdout := goptlib.Stdout
	goptlib.Stdout = out
	defer func() { goptlib.Stdout = oldStdout }()
	cert := testCertificate(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunServer(ctx, ServerOptions{
			MaxConns: 2,
			Configure: func(string, map[string][]string) (*transport.ServerConfig, link.Params, error) {
				priv, err := keys.GenerateKey(nil)
				if err != nil {
					return nil, link.Params{}, err
				}
				cfg := &transport.ServerConfig{
					PrivateKey: priv,
					Site: &transport.SiteFace{
						TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
						Handler:   http.NotFoundHandler(),
					},
				}
				return cfg, link.Params{PublicKey: priv.Public(), ServerName: "www.example.com"}, nil
			},
		})
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("RunServer did not return")
		}
	}()
	smethod := regexp.MustCompile(`SMETHOD ` + MethodName + ` (127\.0\.0\.1:\d+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; time.Sleep(10 * time.Millisecond) {
		if m := smethod.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no SMETHOD line:\n%s", out)
		}
	}
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	first, _ := dial(), dial() // silent: they hold the two connections
	third := dial()
	// Plain HTTP to the site face gets Go's "HTTPS server" 400 at once,
	// when the connection is served at all.
	io.WriteString(third, "GET / HTTP/1.0\r\n\r\n")
	third.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	if n, err := third.Read(make([]byte, 64)); n > 0 || !isTimeout(err) {
		t.Fatalf("a third connection was served past -max-conns 2 (%d bytes, %v)", n, err)
	}
	first.Close()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(third)
	if !strings.HasPrefix(string(got), "HTTP/1.0 400") {
		t.Fatalf("once a connection closed, the waiting one got %q, want the face's 400", got)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
