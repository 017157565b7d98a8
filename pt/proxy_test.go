package pt

import (
	"context"
	"io"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// TestSOCKS5UpstreamDialer drives the upstream SOCKS5 dialer against a
// hand-written proxy: user/password, the destination in the module's one
// address encoding (an IPv4-mapped address goes as IPv4), a bound address
// given as a domain name skipped, and the tunnel's bytes after it intact.
func TestSOCKS5UpstreamDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan transport.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		greeting := make([]byte, 3)
		if _, err := io.ReadFull(c, greeting); err != nil || greeting[2] != 2 {
			return
		}
		c.Write([]byte{5, 2})
		auth := make([]byte, 2+5+1+6) // VER ULEN "alice" PLEN "s3cret"
		if _, err := io.ReadFull(c, auth); err != nil || string(auth[2:7]) != "alice" || string(auth[8:]) != "s3cret" {
			c.Write([]byte{1, 1})
			return
		}
		c.Write([]byte{1, 0})
		hdr := make([]byte, 3)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		a, err := transport.ReadAddr(c)
		if err != nil {
			return
		}
		got <- a
		reply, _ := transport.Addr{Host: "bound.example", Port: 1}.AppendBinary([]byte{5, 0, 0})
		c.Write(append(reply, "tunnel"...))
	}()
	u, _ := url.Parse("socks5://alice:s3cret@" + ln.Addr().String())
	dial, err := ProxyDialer(u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", "[::ffff:192.0.2.7]:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a := <-got; a != (transport.Addr{Host: "192.0.2.7", Port: 443}) {
		t.Errorf("proxy was asked for %v, want 192.0.2.7:443", a)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 6)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "tunnel" {
		t.Fatalf("after the reply: %q, %v", b, err)
	}
}
