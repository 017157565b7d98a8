package main

import (
	"bytes"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/localproxy"
)

const testLink = "mirage://AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA@192.0.2.1:443?sni=www.example.com"

// TestParseFlags checks the flags a user types for the local proxy and
// the WhatsApp endpoint, and that mistakes get an error saying what to do.
func TestParseFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		ok   bool
		want string // in the error
	}{
		{[]string{testLink}, true, ""},
		{[]string{"-auth", "none", testLink}, true, ""},
		{[]string{"-auth", "alice:s3cret", testLink}, true, ""},
		{[]string{"-auth", "alice", testLink}, false, "USER:PASS"},
		{[]string{"-whatsapp", "127.0.0.1", testLink}, true, ""},
		{[]string{"-whatsapp", "192.168.1.10", "-whatsapp-chat-port", "15222", testLink}, true, ""},
		{[]string{"-whatsapp", "localhost", testLink}, false, "IP address"},
		{[]string{"-whatsapp", "127.0.0.1", "-whatsapp-media-port", "5222", testLink}, false, "different"},
		{[]string{"-whatsapp", "127.0.0.1", "-whatsapp-chat-port", "0", testLink}, false, "65535"},
		{[]string{"-procs", "4", testLink}, true, ""},
		{[]string{"-procs", "-1", testLink}, false, "number of cores"},
	} {
		c, err := parseFlags(tt.args, io.Discard, false)
		if (err == nil) != tt.ok || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want ok %v (%q)", tt.args, err, tt.ok, tt.want)
			continue
		}
		if err == nil && c.stateDir == "" {
			t.Errorf("%q: no state directory", tt.args)
		}
	}
}

// TestProcsDefault: the client runs on one core unless told otherwise
// (package cores says why).
func TestProcsDefault(t *testing.T) {
	c, err := parseFlags([]string{testLink}, io.Discard, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.procs != 1 {
		t.Fatalf("-procs defaults to %d, want 1", c.procs)
	}
}

// TestPrintProxyHelp: what the user reads says where the proxy is, with
// which credentials, and gives the tg:// link Telegram imports.
func TestPrintProxyHelp(t *testing.T) {
	creds := &localproxy.Credentials{User: "u1234", Pass: "abcd"}
	var b bytes.Buffer
	printProxyHelp(&b, netip.MustParseAddrPort("127.0.0.1:1080"), creds)
	for _, want := range []string{
		"127.0.0.1 port 1080",
		"User name: u1234",
		"Password:  abcd",
		"tg://socks?server=127.0.0.1&port=1080&user=u1234&pass=abcd",
		"HTTP proxy",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	printProxyHelp(&b, netip.MustParseAddrPort("127.0.0.1:1080"), nil)
	if strings.Contains(b.String(), "user=") || !strings.Contains(b.String(), "-auth none") {
		t.Errorf("help without credentials:\n%s", b.String())
	}
}
