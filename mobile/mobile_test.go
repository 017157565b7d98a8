package mobile

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mirage-pt/mirage/egress"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestMain fails the package if Stop leaves a goroutine running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testTimeout = 10 * time.Second

// startBridge runs a real bridge on loopback whose streams go through the
// egress package (private destinations allowed, for the loopback echo)
// and returns its link.
func startBridge(t *testing.T) *link.Link {
	t.Helper()
	const sni = "bridge.test"
	priv, err := keys.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cert := transporttest.RSACertificate(t, sni)
	srv, err := transport.NewServer(transport.ServerConfig{
		PrivateKey: priv,
		Site: &transport.SiteFace{
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
			Handler:   http.NotFoundHandler(),
		},
		Handler: egress.New(egress.Config{AllowPrivate: true}).Handle,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-errc
	})
	return &link.Link{Address: ln.Addr().String(), Params: link.Params{PublicKey: priv.Public(), ServerName: sni, Pin: transporttest.Pin(t, cert)}, Label: "test"}
}

// recorder is the app's StatusListener.
type recorder struct {
	mu      sync.Mutex
	updates []string // "state up down error"
	last    struct {
		state    string
		up, down int64
		err      string
	}
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) OnStatus(state string, up, down int64, lastError string) {
	r.mu.Lock()
	r.updates = append(r.updates, state)
	r.last.state, r.last.up, r.last.down, r.last.err = state, up, down, lastError
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until the listener has heard a status that ok accepts.
func (r *recorder) waitFor(t *testing.T, what string, ok func(state string, up, down int64, err string) bool) {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		r.mu.Lock()
		l := r.last
		r.mu.Unlock()
		if ok(l.state, l.up, l.down, l.err) {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("listener never heard %s; last: %+v", what, l)
		}
	}
}

// socksConnect does what an app (or a tun-to-SOCKS layer) does: SOCKS5
// with user/password, CONNECT to an IPv4 destination.
func socksConnect(t *testing.T, proxy string, user, pass string, dst netip.AddrPort) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	msg := []byte{5, 1, 2, 1, byte(len(user))}
	msg = append(append(msg, user...), byte(len(pass)))
	msg = append(append(msg, pass...), 5, 1, 0, 1)
	v4 := dst.Addr().As4()
	msg = binary.BigEndian.AppendUint16(append(msg, v4[:]...), dst.Port())
	c.Write(msg)
	resp := make([]byte, 2+2+10)
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatalf("SOCKS5 handshake: %v", err)
	}
	if resp[1] != 2 || resp[3] != 0 || resp[5] != 0 {
		t.Fatalf("SOCKS5 answers % x", resp)
	}
	return c
}

// TestClientEndToEnd drives the package as an app would: options with a
// link and credentials, Start, the status callback saying connected,
// traffic through the local SOCKS5 port counted both ways, Stop, and no
// goroutine left behind.
func TestClientEndToEnd(t *testing.T) {
	l := startBridge(t)
	echo := transporttest.StartTCPEcho(t, testTimeout).AddrPort()
	creds, err := NewCredentials()
	if err != nil {
		t.Fatal(err)
	}
	user, pass, _ := strings.Cut(creds, ":")
	opts := NewOptions()
	opts.Link = l.String()
	opts.User, opts.Pass = user, pass
	rec := newRecorder()
	c, err := Start(opts, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if c.Port() == 0 {
		t.Fatal("no port")
	}
	rec.waitFor(t, "connected", func(s string, _, _ int64, _ string) bool { return s == StateConnected })

	conn := socksConnect(t, "127.0.0.1:"+itoa(c.Port()), user, pass, echo)
	msg := strings.Repeat("through the bridge ", 1000)
	io.WriteString(conn, msg)
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != msg {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	n := int64(len(msg))
	rec.waitFor(t, "the bytes", func(s string, up, down int64, _ string) bool { return up >= n && down >= n })
	if c.BytesUp() < n || c.BytesDown() < n || c.State() != StateConnected || c.LastError() != "" {
		t.Fatalf("up %d down %d state %s error %q", c.BytesUp(), c.BytesDown(), c.State(), c.LastError())
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "stopped", func(s string, _, _ int64, _ string) bool { return s == StateStopped })
	if _, err := net.DialTimeout("tcp", "127.0.0.1:"+itoa(c.Port()), time.Second); err == nil {
		t.Fatal("the local port still accepts after Stop")
	}
	c.Stop() // a second Stop does nothing
}

// TestClientWrongKey: a link with another bridge's key meets the face;
// the app hears an error in plain words that says to check the link.
func TestClientWrongKey(t *testing.T) {
	l := startBridge(t)
	other, _ := keys.GenerateKey(nil)
	l.Params.PublicKey = other.Public()
	opts := NewOptions()
	opts.Link = l.String()
	opts.User, opts.Pass = "u", "p"
	rec := newRecorder()
	c, err := Start(opts, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	rec.waitFor(t, "an error", func(s string, _, _ int64, e string) bool { return s == StateError && e != "" })
	if e := c.LastError(); !strings.Contains(e, "check the link") || strings.Contains(e, "transport:") {
		t.Fatalf("error not in plain words: %q", e)
	}
}

// TestStartErrors: bad options get errors that say what to fix, and
// leave nothing running.
func TestStartErrors(t *testing.T) {
	l := startBridge(t)
	for _, tt := range []struct {
		name string
		opts *Options
		want string
	}{
		{"nil", nil, "NewOptions"},
		{"no link", &Options{}, "link"},
		{"password only", &Options{Link: l.String(), Pass: "x"}, "user name"},
		{"one WhatsApp port", &Options{Link: l.String(), WhatsAppChatPort: 5222}, "both"},
		{"negative cores", &Options{Link: l.String(), Cores: -1}, "number of cores"},
	} {
		c, err := Start(tt.opts, nil)
		if err == nil {
			c.Stop()
			t.Errorf("%s: started", tt.name)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want it to mention %q", tt.name, err, tt.want)
		}
	}
}

// TestStartUsesCores: a client started with the defaults runs the Go
// code on one core; Cores 0 leaves the runtime's choice alone.
func TestStartUsesCores(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "")
	l := startBridge(t)
	for _, tt := range []struct {
		cores, before, want int
	}{
		{1, 2, 1}, // NewOptions
		{0, 2, 2},
		{3, 2, 3},
	} {
		runtime.GOMAXPROCS(tt.before)
		opts := NewOptions()
		if tt.cores != 1 {
			opts.Cores = tt.cores
		}
		opts.Link = l.String()
		opts.User, opts.Pass = "u", "p"
		c, err := Start(opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Stop()
		if got := runtime.GOMAXPROCS(0); got != tt.want {
			t.Errorf("Cores %d: the Go code runs on %d cores, want %d", tt.cores, got, tt.want)
		}
	}
}

// TestTelegramLink passes through to localproxy.
func TestTelegramLink(t *testing.T) {
	if got := TelegramLink("127.0.0.1", 1080, "u", "p"); got != "tg://socks?server=127.0.0.1&port=1080&user=u&pass=p" {
		t.Fatal(got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
