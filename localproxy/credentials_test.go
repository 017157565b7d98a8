package localproxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadOrCreateCredentials: the first run makes random credentials
// and keeps them private (0600); later runs get the same ones, so Telegram
// and browsers set up once keep working; a damaged file is an error that
// says what to do, not new credentials behind the user's back.
func TestLoadOrCreateCredentials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	c1, created, err := LoadOrCreateCredentials(dir)
	if err != nil || !created {
		t.Fatalf("first run: %v, created %v", err, created)
	}
	if len(c1.User) < 8 || len(c1.Pass) < 32 {
		t.Fatalf("weak credentials %+v", c1)
	}
	fi, err := os.Stat(filepath.Join(dir, CredentialsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, mode %v", err, fi.Mode())
	}
	c2, created, err := LoadOrCreateCredentials(dir)
	if err != nil || created || *c2 != *c1 {
		t.Fatalf("second run: %+v, created %v, %v; want %+v", c2, created, err, c1)
	}
	other, _, _ := LoadOrCreateCredentials(t.TempDir())
	if *other == *c1 {
		t.Fatal("two state directories got the same credentials")
	}
	os.WriteFile(filepath.Join(dir, CredentialsFile), []byte("garbage\n"), 0o600)
	if _, _, err := LoadOrCreateCredentials(dir); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("damaged file: %v", err)
	}
}

// TestTelegramLink: the link carries server, port, user and password,
// escaped, in the order Telegram writes them.
func TestTelegramLink(t *testing.T) {
	got := TelegramLink("127.0.0.1", 1080, &Credentials{User: "u1", Pass: "p&=1"})
	if want := "tg://socks?server=127.0.0.1&port=1080&user=u1&pass=p%26%3D1"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	u, err := url.Parse(got)
	if err != nil || u.Query().Get("pass") != "p&=1" {
		t.Fatalf("does not parse back: %v %v", u, err)
	}
	if got := TelegramLink("192.168.1.10", 1080, nil); got != "tg://socks?server=192.168.1.10&port=1080" {
		t.Fatalf("without credentials: %s", got)
	}
}

// TestScanWithoutCredentials is the app that scans localhost for SOCKS
// ports: without the credentials it gets a plain SOCKS5 or HTTP refusal
// that says nothing about Mirage or a bridge, and the bridge sees no
// connection at all. With the generated credentials, as Telegram sends
// them from the tg:// link, the same port works.
func TestScanWithoutCredentials(t *testing.T) {
	client, bridgeConns := egressBridge(t)
	creds, err := NewCredentials(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startProxy(t, client, creds.User+":"+creds.Pass)
	echo := startEcho(t)

	var seen bytes.Buffer // every byte the scanner got
	// SOCKS5, offering no authentication only: method 0xFF, closed.
	c := dialProxy(t, addr)
	c.Write(append(socksGreeting(methodNoAuth), socksVersion, socksCmdConnect, 0))
	c.Write(ipv4Addr(t, echo))
	got := expectClosed(t, c)
	if !bytes.Equal(got, []byte{socksVersion, methodNoneOK}) {
		t.Errorf("no-auth greeting answered %x, want 05ff and close", got)
	}
	seen.Write(got)
	// SOCKS5 with a guessed password: RFC 1929 failure, closed.
	for _, guess := range [][2]string{{creds.User, "password"}, {"admin", creds.Pass}, {"", ""}} {
		c = dialProxy(t, addr)
		msg := append(socksGreeting(methodUserPass), userPassVersion, byte(len(guess[0])))
		msg = append(append(msg, guess[0]...), byte(len(guess[1])))
		msg = append(append(msg, guess[1]...), socksVersion, socksCmdConnect, 0)
		c.Write(append(msg, ipv4Addr(t, echo)...))
		got = expectClosed(t, c)
		if !bytes.Equal(got, []byte{socksVersion, methodUserPass, userPassVersion, userPassRejected}) {
			t.Errorf("guess %q answered %x, want 0502 0101 and close", guess, got)
		}
		seen.Write(got)
	}
	// HTTP proxy without, and with wrong, Proxy-Authorization: 407.
	for _, auth := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte(creds.User+":nope"))} {
		c = dialProxy(t, addr)
		req := "CONNECT " + echo + " HTTP/1.1\r\nHost: " + echo + "\r\n"
		if auth != "" {
			req += "Proxy-Authorization: " + auth + "\r\n"
		}
		c.Write([]byte(req + "\r\n"))
		got = expectClosed(t, c)
		seen.Write(got)
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
		if err != nil {
			t.Fatalf("HTTP answer %q: %v", got, err)
		}
		if resp.StatusCode != http.StatusProxyAuthRequired || !strings.HasPrefix(resp.Header.Get("Proxy-Authenticate"), "Basic ") {
			t.Errorf("HTTP without credentials: %s, Proxy-Authenticate %q", resp.Status, resp.Header.Get("Proxy-Authenticate"))
		}
	}
	for _, word := range []string{"mirage", "bridge", "tunnel"} {
		if strings.Contains(strings.ToLower(seen.String()), word) {
			t.Errorf("a scanner without credentials read %q:\n%s", word, seen.String())
		}
	}
	if n := bridgeConns(); n != 0 {
		t.Fatalf("the scan caused %d connections to the bridge", n)
	}

	// Telegram, with the credentials from the link.
	c = dialProxy(t, addr)
	if rep := socksConnect(t, c, creds.User, creds.Pass, ipv4Addr(t, echo)); rep != repSucceeded {
		t.Fatalf("with the credentials: REP %#x", rep)
	}
	echoRoundTrip(t, c, "telegram")
	if n := bridgeConns(); n != 1 {
		t.Fatalf("%d bridge connections after one authenticated app, want 1", n)
	}
}
