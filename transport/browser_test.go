package transport

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/hello"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

// TestBrowserRequestLooksLikeTheBrowser: BrowserRequest gets the face's
// page over h2 with the link's browser hello (the same cipher suites as a
// Mirage dial sends, not Go's), so tools like `check` never show a Go TLS
// hello to the bridge's address.
func TestBrowserRequestLooksLikeTheBrowser(t *testing.T) {
	site := startPlainSite(t)
	// A recorder in front of the site keeps the hello.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", site)
		if err != nil {
			got <- nil
			return
		}
		defer up.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		consumed, msg, _ := hello.ReadClientHello(c)
		got <- msg
		c.SetReadDeadline(time.Time{})
		up.Write(consumed)
		go transportCopy(up, c)
		transportCopy(c, up)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+testSNI+"/", nil)
	resp, _, err := BrowserRequest(ctx, nil, ln.Addr().String(), link.Params{ServerName: testSNI, Pin: transporttest.Pin(t, siteCertificate(t))}, nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != 2 {
		t.Fatalf("spoke %s, want HTTP/2 as a browser does with an h2 site", resp.Proto)
	}
	msg := <-got
	ch, err := hello.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := keys.GenerateKey(nil)
	rec := recordHello(t, &ClientConfig{Address: "x:1", Params: link.Params{PublicKey: priv.Public(), ServerName: testSNI}})
	_, refMsg, err := hello.ReadClientHello(bytes.NewReader(rec))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := hello.Parse(refMsg)
	if err != nil {
		t.Fatal(err)
	}
	// GREASE values are drawn per connection.
	noGREASE := func(v []uint16) []uint16 {
		return slices.DeleteFunc(slices.Clone(v), func(x uint16) bool { return x&0x0f0f == 0x0a0a && x>>8 == x&0xff })
	}
	if !slices.Equal(noGREASE(ch.CipherSuites), noGREASE(ref.CipherSuites)) || len(ch.CipherSuites) != len(ref.CipherSuites) {
		t.Fatalf("cipher suites %x, want the browser's %x", ch.CipherSuites, ref.CipherSuites)
	}
}

func transportCopy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
