package localproxy

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/egress"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// fakeWhatsApp is a stand-in for one of WhatsApp's servers on loopback:
// it records every byte a connection brings and echoes it back.
type fakeWhatsApp struct {
	ln net.Listener
	wg sync.WaitGroup

	mu       sync.Mutex
	received [][]byte // per connection, once it has ended
}

func startFakeWhatsApp(t *testing.T) *fakeWhatsApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWhatsApp{ln: ln}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(testTimeout))
				var got bytes.Buffer
				io.Copy(io.MultiWriter(c, &got), c)
				c.(*net.TCPConn).CloseWrite()
				f.mu.Lock()
				f.received = append(f.received, got.Bytes())
				f.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeWhatsApp) addr() transport.Addr {
	ap := f.ln.Addr().(*net.TCPAddr).AddrPort()
	return transport.Addr{Host: ap.Addr().String(), Port: ap.Port()}
}

// connections returns what each ended connection brought, waiting until
// n have ended.
func (f *fakeWhatsApp) connections(t *testing.T, n int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		f.mu.Lock()
		got := append([][]byte(nil), f.received...)
		f.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake WhatsApp server saw %d connections end, want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// egressBridge runs a real bridge on loopback whose streams go through
// the egress package (private destinations allowed, so that loopback
// fakes can stand in for the Internet), and returns a client for it.
// bridgeConns counts the TCP connections the bridge accepted.
func egressBridge(t *testing.T) (client *transport.Client, bridgeConns func() int) {
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
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	client, err = transport.NewClient(transport.ClientConfig{
		Address: ln.Addr().String(),
		Params:  link.Params{PublicKey: priv.Public(), ServerName: sni, Pin: transporttest.Pin(t, cert)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		srv.Close()
		<-errc
	})
	return client, ln.accepted
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// startWhatsApp serves a WhatsApp endpoint on two loopback ports and
// returns their addresses.
func startWhatsApp(t *testing.T, cfg WhatsAppConfig) (chat, media string) {
	t.Helper()
	w := NewWhatsApp(cfg)
	chatLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mediaLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(chatLn, mediaLn) }()
	t.Cleanup(func() {
		w.Close()
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return chatLn.Addr().String(), mediaLn.Addr().String()
}

// passThrough sends msg on a new connection to addr, half-closes, and
// checks that exactly echo comes back.
func passThrough(t *testing.T, addr string, msg, echo []byte) {
	t.Helper()
	c := dialProxy(t, addr)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading back through %s: %v", addr, err)
	}
	if !bytes.Equal(got, echo) {
		t.Fatalf("%d bytes came back, want %d", len(got), len(echo))
	}
}

// TestWhatsAppEndpoint is the WhatsApp endpoint through a real bridge:
// what the app sends on the chat port reaches the chat server, and on the
// media port the media server, byte for byte, with no header added, and
// the answers come back unchanged. With ProxyHeader, each chat stream
// starts with a PROXY header that names no address.
func TestWhatsAppEndpoint(t *testing.T) {
	for _, header := range []bool{false, true} {
		t.Run("ProxyHeader="+strconv.FormatBool(header), func(t *testing.T) {
			chatSrv, mediaSrv := startFakeWhatsApp(t), startFakeWhatsApp(t)
			client, _ := egressBridge(t)
			chat, media := startWhatsApp(t, WhatsAppConfig{
				Opener: client, Chat: chatSrv.addr(), Media: mediaSrv.addr(), ProxyHeader: header,
			})
			// A chat opening (WhatsApp's own "WA" prologue) and a
			// large binary media upload.
			chatMsg := append([]byte("WA\x06\x03"), bytes.Repeat([]byte{0, 0xff, '\r', '\n'}, 100)...)
			mediaMsg := make([]byte, 300<<10)
			rand.Read(mediaMsg)
			wantChat := chatMsg
			if header {
				wantChat = append([]byte("PROXY UNKNOWN\r\n"), chatMsg...)
			}
			// The fake server echoes what it got, header included.
			passThrough(t, chat, chatMsg, wantChat)
			passThrough(t, media, mediaMsg, mediaMsg)
			passThrough(t, chat, chatMsg, wantChat) // a second connection on the same session

			for i, got := range chatSrv.connections(t, 2) {
				if !bytes.Equal(got, wantChat) {
					t.Errorf("chat connection %d brought %q…, want %q…", i, head(got), head(wantChat))
				}
			}
			got := mediaSrv.connections(t, 1)
			if len(got) != 1 || !bytes.Equal(got[0], mediaMsg) {
				t.Errorf("media server got %d connections, first %d bytes; want one of %d bytes unchanged", len(got), len(got[0]), len(mediaMsg))
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 24)] }

// TestWhatsAppDefaults: without destinations the endpoint leads to
// WhatsApp's own servers.
func TestWhatsAppDefaults(t *testing.T) {
	w := NewWhatsApp(WhatsAppConfig{Opener: &fakeOpener{}})
	defer w.Close()
	if *w.Chat.forward != (transport.Addr{Host: "g.whatsapp.net", Port: 5222}) || *w.Media.forward != (transport.Addr{Host: "whatsapp.net", Port: 443}) {
		t.Fatalf("chat → %v, media → %v", w.Chat.forward, w.Media.forward)
	}
	if w.Chat.proxyHeader || w.Media.proxyHeader {
		t.Fatal("a PROXY header by default")
	}
	s := WhatsAppSettings("192.168.1.10", 5222, 7777)
	for _, want := range []string{"Proxy address:  192.168.1.10", "Chat port:      5222", "Media port:     7777"} {
		if !strings.Contains(s, want) {
			t.Errorf("settings text lacks %q:\n%s", want, s)
		}
	}
}

// TestForwardBridgeDown: when the tunnel cannot open a stream, the app's
// connection is closed without a byte, and the forwarder keeps serving.
func TestForwardBridgeDown(t *testing.T) {
	f := &fakeOpener{err: errors.New("bridge unreachable")}
	p := NewForwarder(ForwardConfig{Opener: f, Destination: transport.Addr{Host: "g.whatsapp.net", Port: 5222}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	defer func() {
		p.Close()
		<-errc
	}()
	for range 2 {
		c := dialProxy(t, ln.Addr().String())
		if b := expectClosed(t, c); len(b) != 0 {
			t.Fatalf("app got %q from a forwarder whose bridge is down", b)
		}
	}
	if n := len(f.requests()); n != 2 {
		t.Fatalf("%d stream requests, want 2", n)
	}
}
