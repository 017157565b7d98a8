package link

import (
	"strings"
	"testing"
)

// linkSeeds are valid and nearly valid links for the fuzzers to mutate.
var linkSeeds = []string{
	"mirage://" + testKey + "@bridge.example.com:443?sni=www.example.com",
	"mirage://" + testKey + "@198.51.100.7:8443?sni=cdn.example.net&id=0123456789abcdef&fp=firefox#home",
	"MIRAGE://" + testKey + "@[2001:DB8::1]:443/?sni=A.Example&id=0123456789ABCDEF&fp=chrome#My%20bridge%20%E2%9C%93",
	"mirage://" + testKey + "@[::ffff:192.0.2.1]:00443?&sni=a%2Eexample&&fp=ios#Мой мост",
	"mirage://" + testKey + "@h.example:443?sni=a.example#%FF",
	"mirage://" + testKey + "@h.example:443?sni=192.0.2.1",
	"mirage://" + testKey + "@[fe80::1%25eth0]:443?sni=a.example",
	"mirage://" + testKey2 + "=@h.example:65536?sni=a..example&x=1&sni=b",
	" mirage://" + testKey + "@h.example:443?sni=xn--tt-bja.example&fp=edge#a+b%20c\n",
	"mirage://" + testKey + "@192.0.2.1:443?pin=" + testPin.String(),
	"mirage://" + testKey + "@192.0.2.1:443?pin=" + testPin.String()[:42] + "B&budget=14k",
}

// FuzzParseLink proves Parse never panics, accepts only Params that
// Validate, and that its canonical form is a fixed point: Parse(String())
// gives the same Link, whose String is the same text.
func FuzzParseLink(f *testing.F) {
	for _, s := range linkSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "link: ") {
				t.Fatalf("error %q lacks the \"link: \" prefix", err)
			}
			return
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("Parse(%q) accepted Params that do not validate: %v", s, err)
		}
		text := l.String()
		l2, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q) ok, but Parse of its String %q: %v", s, text, err)
		}
		if *l2 != *l {
			t.Fatalf("round trip of %q through %q:\n got %+v\nwant %+v", s, text, *l2, *l)
		}
		if text2 := l2.String(); text2 != text {
			t.Fatalf("String not canonical: %q then %q", text, text2)
		}
	})
}

// FuzzParseArgs proves ParseArgs never panics, accepts only Params that
// Validate, and reads Args back unchanged. The input is split like a
// bridge line's arguments so that duplicates and odd names occur.
func FuzzParseArgs(f *testing.F) {
	f.Add("key=" + testKey + " sni=a.example")
	f.Add("key=" + testKey + " sni=WWW.Example.com id=0123456789ABCDEF fp=Chrome")
	f.Add("key=" + testKey + " sni=a.example fp=ios fp=edge")
	f.Add("key=" + testKey2 + " sni=a.example id= fp= =x")
	f.Add("sni=a.example key")
	f.Add("key=" + testKey + " pin=" + testPin.String())
	f.Add("key=" + testKey + " pin=" + testPin.String() + "=")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseArgs(argsMap(s))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "bridge line: ") {
				t.Fatalf("error %q lacks the \"bridge line: \" prefix", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParseArgs(%q) accepted Params that do not validate: %v", s, err)
		}
		text := p.Args()
		p2, err := ParseArgs(argsMap(text))
		if err != nil {
			t.Fatalf("ParseArgs(%q) ok, but ParseArgs of its Args %q: %v", s, text, err)
		}
		if p2 != p {
			t.Fatalf("round trip of %q through %q:\n got %+v\nwant %+v", s, text, p2, p)
		}
	})
}

// FuzzParseBridgeLine proves ParseBridgeLine never panics and that
// BridgeLine of what it returns parses back to the same values.
func FuzzParseBridgeLine(f *testing.F) {
	f.Add("Bridge mirage 192.0.2.1:443 " + testFP + " key=" + testKey + " sni=a.example")
	f.Add("mirage [2001:db8::1] key=" + testKey + " sni=a.example id=0123456789abcdef fp=safari")
	f.Add("bridge\tmirage 192.0.2.1 " + strings.ToLower(testFP) + " sni=A.example key=" + testKey + "\n")
	f.Add("Bridge mirage <IP ADDRESS>:443 <FINGERPRINT> key=" + testKey + " sni=a.example")
	f.Add("Bridge obfs4 192.0.2.1:443 cert=x iat-mode=0")
	f.Add("Bridge mirage 192.0.2.1:443 key=" + testKey + " pin=" + testPin.String())
	f.Add("Bridge mirage [::ffff:192.0.2.1]:0443 key=" + testKey + " sni=a.example sni=b")
	f.Fuzz(func(t *testing.T, s string) {
		addr, fp, p, err := ParseBridgeLine(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "bridge line: ") {
				t.Fatalf("error %q lacks the \"bridge line: \" prefix", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("ParseBridgeLine(%q) accepted Params that do not validate: %v", s, err)
		}
		line := BridgeLine(addr, fp, p)
		addr2, fp2, p2, err := ParseBridgeLine(line)
		if err != nil {
			t.Fatalf("ParseBridgeLine(%q) ok, but ParseBridgeLine of its BridgeLine %q: %v", s, line, err)
		}
		if addr2 != addr || fp2 != fp || p2 != p {
			t.Fatalf("round trip of %q through %q: %q %q %+v, want %q %q %+v", s, line, addr2, fp2, p2, addr, fp, p)
		}
	})
}
