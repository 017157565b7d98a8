package pt

import (
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

// TestProxyDialerSchemes proves the upstream proxies tor may hand us are
// accepted or refused with a message that names the scheme.
func TestProxyDialerSchemes(t *testing.T) {
	for raw, ok := range map[string]bool{
		"socks5://127.0.0.1:1080":           true,
		"socks5://user:pass@127.0.0.1:1080": true,
		"http://127.0.0.1:3128":             true,
		"socks4a://127.0.0.1:1080":          false,
		"https://127.0.0.1:443":             false,
	} {
		u, _ := url.Parse(raw)
		_, err := ProxyDialer(u)
		if (err == nil) != ok {
			t.Errorf("%s: err = %v", raw, err)
		}
		if err != nil && !strings.Contains(err.Error(), u.Scheme) {
			t.Errorf("%s: error does not name the scheme: %v", raw, err)
		}
	}
}

// TestBridgeLineFile proves the file the operator reads has obfs4's shape
// and a bridge line that parses back to the bridge's parameters.
func TestBridgeLineFile(t *testing.T) {
	priv, _ := keys.GenerateKey(nil)
	id, _ := keys.NewShortID(nil)
	p := link.Params{PublicKey: priv.Public(), ServerName: "www.example.com", ShortID: id}
	dir := t.TempDir()
	if err := writeBridgeLine(dir, 443, p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, BridgeLineFile))
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^Bridge mirage <IP ADDRESS>:443 <FINGERPRINT> .*$`).FindString(string(b))
	if line == "" {
		t.Fatalf("no bridge line with placeholders:\n%s", b)
	}
	line = strings.NewReplacer("<IP ADDRESS>", "192.0.2.1", "<FINGERPRINT>", strings.Repeat("AB", 20)).Replace(line)
	_, _, got, err := link.ParseBridgeLine(line)
	if err != nil || got != p {
		t.Fatalf("bridge line %q parses to %+v (%v), want %+v", line, got, err, p)
	}
}
