//go:build linux

package main

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The delay line counts every byte that crosses it, both ways, and only
// those: the wire-bytes figures are its counts.
func TestDelayLineCountsWireBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	d, err := newDelayLine(ln.Addr().String(), 2*time.Millisecond, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := net.Dial("tcp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	const n = 300_000
	sent := bytes.Repeat([]byte("wire"), n/4)
	go c.Write(sent)
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatal("the echo through the delay line differs from what was sent")
	}
	if m := d.moved(); m != 2*n {
		t.Fatalf("the delay line counted %d bytes; %d crossed it (%d each way)", m, 2*n, n)
	}
}

// The wire-bytes columns are in the delay line's table only (loopback has
// no delay line to count them), and a slow link's throughput keeps its
// decimals.
func TestWireColumns(t *testing.T) {
	o := options{streams: 8, upload: true}
	rows := []row{
		{name: "direct TCP (SOCKS5 relay)", r: result{down1: 2.38, down8: 2.4, up1: 2.3, up8: 2.4, wireDown: 1, wireUp: 1, wireStream: 2}},
		{name: "Go crypto/tls relay", r: result{down1: 2.2, down8: 2.4, up1: 2.1, up8: 2.4, wireDown: 1.0035, wireUp: 1.0035, wireStream: 4269}},
		{name: "mirage", r: result{down1: 2.5, down8: 2.4, up1: 2.3, up8: 2.4, wireDown: 1.0038, wireUp: 1.0034, wireStream: 2453}},
	}
	loop := table{title: "Loopback", rows: rows}
	if s := loop.markdown(o); strings.Contains(s, "wire bytes") {
		t.Errorf("the loopback table has wire-bytes columns:\n%s", s)
	}
	delayed := table{title: "Delay line", rows: rows, wire: true}
	s := delayed.markdown(o)
	for _, want := range []string{"| wire bytes per byte down | wire bytes per byte up | wire bytes per new stream |", "| 1.0038 (1.00 / 1.00) | 1.0034 (1.00 / 1.00) | 2453 (1226.50 / 0.57) |", "| direct TCP (SOCKS5 relay) | 2.38 (1.00 / 1.08) |"} {
		if !strings.Contains(s, want) {
			t.Errorf("the delay line's table lacks %q:\n%s", want, s)
		}
	}
}
