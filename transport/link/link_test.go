package link

import (
	"strings"
	"testing"

	"github.com/mirage-pt/mirage/transport/keys"
)

// testKey is RFC 7748 §6.1's Alice public key; testKey2 is Bob's.
const (
	testKey  = "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"
	testKey2 = "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08"
	testFP   = "0123456789ABCDEF0123456789ABCDEF01234567"
)

func mustKey(t testing.TB, s string) keys.PublicKey {
	t.Helper()
	k, err := keys.ParsePublicKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustID(t testing.TB, s string) keys.ShortID {
	t.Helper()
	id, err := keys.ParseShortID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestParse proves well-formed links, in the many spellings people send
// them, parse to the right values in canonical form.
func TestParse(t *testing.T) {
	key := mustKey(t, testKey)
	id := mustID(t, "0123456789abcdef")
	for _, tc := range []struct {
		name, in string
		want     Link
	}{
		{"minimal", "mirage://" + testKey + "@bridge.example.com:443?sni=www.example.com",
			Link{Params: Params{PublicKey: key, ServerName: "www.example.com"}, Address: "bridge.example.com:443"}},
		{"everything", "mirage://" + testKey + "@198.51.100.7:8443?sni=cdn.example.net&id=0123456789abcdef&fp=firefox#home",
			Link{Params: Params{PublicKey: key, ServerName: "cdn.example.net", ShortID: id, Fingerprint: "firefox"}, Address: "198.51.100.7:8443", Label: "home"}},
		{"any parameter order", "mirage://" + testKey + "@h.example:1?fp=ios&id=0123456789abcdef&sni=a.example",
			Link{Params: Params{PublicKey: key, ServerName: "a.example", ShortID: id, Fingerprint: "ios"}, Address: "h.example:1"}},
		{"upper-case hex id", "mirage://" + testKey + "@h.example:443?sni=a.example&id=0123456789ABCDEF",
			Link{Params: Params{PublicKey: key, ServerName: "a.example", ShortID: id}, Address: "h.example:443"}},
		{"case-insensitive parts folded", "MIRAGE://" + testKey + "@Bridge.EXAMPLE.com:443?sni=WWW.Example.COM&fp=Safari",
			Link{Params: Params{PublicKey: key, ServerName: "www.example.com", Fingerprint: "safari"}, Address: "bridge.example.com:443"}},
		{"fp=chrome is the default", "mirage://" + testKey + "@h.example:443?sni=a.example&fp=chrome",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"empty id and fp", "mirage://" + testKey + "@h.example:443?sni=a.example&id=&fp=",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"IPv6", "mirage://" + testKey + "@[2001:DB8:0:0::1]:443?sni=a.example",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "[2001:db8::1]:443"}},
		{"IPv4-mapped IPv6", "mirage://" + testKey + "@[::ffff:192.0.2.1]:443?sni=a.example",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "[::ffff:192.0.2.1]:443"}},
		{"port with leading zeros", "mirage://" + testKey + "@h.example:00443?sni=a.example",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"highest port", "mirage://" + testKey + "@h.example:65535?sni=a.example",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:65535"}},
		{"surrounding white space", " \t\r\nmirage://" + testKey + "@h.example:443?sni=a.example\r\n",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"trailing slash", "mirage://" + testKey + "@h.example:443/?sni=a.example",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"stray ampersands", "mirage://" + testKey + "@h.example:443?&sni=a.example&&",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"percent-encoded sni", "mirage://" + testKey + "@h.example:443?%73ni=a%2Eexample",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
		{"label with spaces and unicode", "mirage://" + testKey + "@h.example:443?sni=a.example#My%20bridge%20%E2%9C%93%20%C3%A9t%C3%A9",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443", Label: "My bridge ✓ été"}},
		{"raw label", "mirage://" + testKey + "@h.example:443?sni=a.example#Мой мост #2 a+b",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443", Label: "Мой мост #2 a+b"}},
		{"empty label", "mirage://" + testKey + "@h.example:443?sni=a.example#",
			Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if *got != tc.want {
				t.Fatalf("Parse:\n got %+v\nwant %+v", *got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("parsed Params do not validate: %v", err)
			}
		})
	}
}

// TestParseErrors proves each kind of broken link is refused with an
// error that starts "link: ", names the field at fault and says what is
// wrong or what to do.
func TestParseErrors(t *testing.T) {
	base := "mirage://" + testKey + "@h.example:443"
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"empty", "", []string{"not a mirage:// link"}},
		{"not a URL", "hello", []string{"not a mirage:// link"}},
		{"bridge line instead", "Bridge mirage 1.2.3.4:443 key=" + testKey, []string{"not a mirage:// link"}},
		{"no slashes", "mirage:" + testKey + "@h.example:443?sni=a.example", []string{"not a mirage:// link"}},
		{"other scheme", "vless://" + testKey + "@h.example:443?sni=a.example", []string{"scheme:", `"vless"`, "must start with mirage://"}},
		{"no key", "mirage://h.example:443?sni=a.example", []string{"key: missing", "before '@'"}},
		{"empty key", "mirage://@h.example:443?sni=a.example", []string{"key: missing"}},
		{"short key", "mirage://" + testKey[:40] + "@h.example:443?sni=a.example", []string{"key:", "40 characters"}},
		{"padded key", "mirage://" + testKey + "=@h.example:443?sni=a.example", []string{"key:", "padding"}},
		{"std base64 key", "mirage://" + strings.ReplaceAll(testKey2, "-", "+") + "@h.example:443?sni=a.example", []string{"key:", "standard base64"}},
		{"std base64 key with slash", "mirage://" + strings.ReplaceAll(testKey, "_", "/") + "@h.example:443?sni=a.example", []string{"key:", "standard base64"}},
		{"zero key", "mirage://" + strings.Repeat("A", 43) + "@h.example:443?sni=a.example", []string{"key:", "all zeros"}},
		{"password", "mirage://" + testKey + ":pw@h.example:443?sni=a.example", []string{"key:", "46 characters"}},
		{"no host", "mirage://" + testKey + "@:443?sni=a.example", []string{"host: missing"}},
		{"no port", "mirage://" + testKey + "@h.example?sni=a.example", []string{"port: missing"}},
		{"empty port", "mirage://" + testKey + "@h.example:?sni=a.example", []string{"port: missing"}},
		{"port zero", base[:len(base)-3] + "0?sni=a.example", []string{"port:", "1 to 65535"}},
		{"port too big", base[:len(base)-3] + "65536?sni=a.example", []string{"port:", `"65536"`, "1 to 65535"}},
		{"port sign", base[:len(base)-3] + "+443?sni=a.example", []string{"port:", "1 to 65535"}},
		{"port name", base[:len(base)-3] + "https?sni=a.example", []string{"port:", "1 to 65535"}},
		{"port huge", base[:len(base)-3] + "000000443?sni=a.example", []string{"port:"}},
		{"IPv6 without brackets", "mirage://" + testKey + "@2001:db8::1:443?sni=a.example", []string{"host:", "brackets"}},
		{"IPv6 unclosed", "mirage://" + testKey + "@[2001:db8::1:443?sni=a.example", []string{"host:", "without ']'"}},
		{"IPv6 no port", "mirage://" + testKey + "@[2001:db8::1]?sni=a.example", []string{"port: missing"}},
		{"IPv6 junk after bracket", "mirage://" + testKey + "@[2001:db8::1]x:443?sni=a.example", []string{"port:"}},
		{"IPv4 in brackets", "mirage://" + testKey + "@[192.0.2.1]:443?sni=a.example", []string{"host:", "not an IPv6 address"}},
		{"IPv6 zone", "mirage://" + testKey + "@[fe80::1%25eth0]:443?sni=a.example", []string{"host:", "zone"}},
		{"host with underscore", "mirage://" + testKey + "@bad_host.example:443?sni=a.example", []string{"host:", "'_'"}},
		{"host octal-looking IP", "mirage://" + testKey + "@01.2.3.4:443?sni=a.example", []string{"host:", "last label is all digits"}},
		{"host with space", "mirage://" + testKey + "@a b.example:443?sni=a.example", []string{"host:"}},
		{"path", base + "/path?sni=a.example", []string{"no path"}},
		{"sni is IPv4", base + "?sni=192.0.2.1", []string{"sni:", "IP address"}},
		{"sni is IPv6", base + "?sni=%5B2001:db8::1%5D", []string{"sni:", "IP address"}},
		{"sni trailing dot", base + "?sni=a.example.", []string{"sni:", "ends in a dot"}},
		{"sni empty label", base + "?sni=a..example", []string{"sni:", "empty label"}},
		{"sni leading dot", base + "?sni=.example", []string{"sni:", "empty label"}},
		{"sni hyphen", base + "?sni=-a.example", []string{"sni:", "'-'"}},
		{"sni label too long", base + "?sni=" + strings.Repeat("a", 64) + ".example", []string{"sni:", "64 characters"}},
		{"sni too long", base + "?sni=" + strings.Repeat(strings.Repeat("a", 60)+".", 5) + "example", []string{"sni:", "253"}},
		{"sni unicode", base + "?sni=%C3%A9t%C3%A9.example", []string{"sni:", "xn--"}},
		{"sni underscore", base + "?sni=a_b.example", []string{"sni:", "'_'"}},
		{"sni wildcard", base + "?sni=*.example.com", []string{"sni:", "'*'"}},
		{"sni numeric TLD", base + "?sni=a.123", []string{"sni:", "all digits"}},
		{"bad id", base + "?sni=a.example&id=xyz", []string{"id:", "16 hex digits"}},
		{"bad id chars", base + "?sni=a.example&id=0123456789abcdeg", []string{"id:", "hex digits"}},
		{"bad fp", base + "?sni=a.example&fp=opera", []string{"fp:", `"opera"`, "chrome, firefox, safari, ios, edge"}},
		{"unknown param", base + "?sni=a.example&flow=xtls", []string{"unknown parameter", `"flow"`, "sni, id, fp"}},
		{"unknown params", base + "?sni=a.example&b=1&a=2", []string{"unknown parameters", `"a", "b"`}},
		{"key in query", base + "?sni=a.example&key=" + testKey, []string{"unknown parameter", `"key"`}},
		{"case of param name", base + "?SNI=a.example", []string{"unknown parameter", `"SNI"`}},
		{"repeated sni", base + "?sni=a.example&sni=b.example", []string{"sni:", "given 2 times"}},
		{"repeated id", base + "?sni=a.example&id=0123456789abcdef&id=0123456789abcdef", []string{"id:", "given 2 times"}},
		{"repeated fp", base + "?sni=a.example&fp=ios&fp=&", []string{"fp:", "given 2 times"}},
		{"bad escape in query", base + "?sni=a%zz.example", []string{"%-escape"}},
		{"truncated escape in query", base + "?sni=a.example%2", []string{"%-escape"}},
		{"bad escape in label", base + "?sni=a.example#50%", []string{"label:", "%-escape"}},
		{"control character in label", base + "?sni=a.example#a%1B[31mred", []string{"label:", "control"}},
		{"newline in label", base + "?sni=a.example#a%0Ab", []string{"label:", "control"}},
		{"invalid UTF-8 in label", base + "?sni=a.example#%FF", []string{"label:", "UTF-8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.in, *l)
			}
			if !strings.HasPrefix(err.Error(), "link: ") {
				t.Errorf("error %q does not start with \"link: \"", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestNoServerName proves that sni is optional: a bridge with no DNS name
// hands out a link and bridge line with no sni at all (its clients send
// no server name, as a browser does for an IP address), both read back
// with an empty ServerName, and "sni=" with nothing after it (as a bridge
// that writes every argument puts it) means the same. Links of older
// bridges, which all said sni=localhost, still parse as they were written,
// so that their users keep reaching those bridges. Before sni became
// optional every one of these was refused.
func TestNoServerName(t *testing.T) {
	key := mustKey(t, testKey)
	id := mustID(t, "0123456789abcdef")
	for _, tc := range []struct {
		name string
		l    Link
		want string
	}{
		{"nothing but the key", Link{Params: Params{PublicKey: key}, Address: "192.0.2.7:443"},
			"mirage://" + testKey + "@192.0.2.7:443"},
		{"id", Link{Params: Params{PublicKey: key, ShortID: id}, Address: "192.0.2.7:443", Label: "home"},
			"mirage://" + testKey + "@192.0.2.7:443?id=0123456789abcdef#home"},
		{"fp and budget", Link{Params: Params{PublicKey: key, Fingerprint: "firefox", Budget: 14 << 10}, Address: "[2001:db8::7]:8443"},
			"mirage://" + testKey + "@[2001:db8::7]:8443?fp=firefox&budget=14k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.l.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			s := tc.l.String()
			if s != tc.want {
				t.Fatalf("String() = %s, want %s", s, tc.want)
			}
			got, err := Parse(s)
			if err != nil {
				t.Fatalf("Parse(%s): %v", s, err)
			}
			if *got != tc.l {
				t.Fatalf("Parse(String()) = %+v, want %+v", *got, tc.l)
			}
			if strings.Contains(s, "sni") {
				t.Fatalf("link %s names an sni", s)
			}
			line := BridgeLine(tc.l.Address, testFP, tc.l.Params)
			if strings.Contains(line, "sni") {
				t.Fatalf("bridge line %s names an sni", line)
			}
			addr, fp, p, err := ParseBridgeLine(line)
			if err != nil {
				t.Fatalf("ParseBridgeLine(%s): %v", line, err)
			}
			if addr != tc.l.Address || fp != testFP || p != tc.l.Params {
				t.Fatalf("ParseBridgeLine(%s) = %s %s %+v", line, addr, fp, p)
			}
		})
	}
	for _, in := range []string{
		"mirage://" + testKey + "@192.0.2.7:443?sni=",
		"mirage://" + testKey + "@192.0.2.7:443?",
	} {
		if l, err := Parse(in); err != nil || l.ServerName != "" {
			t.Errorf("Parse(%s) = %+v, %v; want no server name", in, l, err)
		}
	}
	if p, err := ParseArgs(map[string][]string{"key": {testKey}, "sni": {""}}); err != nil || p.ServerName != "" {
		t.Errorf("ParseArgs(key, sni=) = %+v, %v; want no server name", p, err)
	}
	old := "mirage://" + testKey + "@192.0.2.7:8443?sni=localhost#mirage"
	l, err := Parse(old)
	if err != nil || l.ServerName != "localhost" || l.String() != old {
		t.Errorf("an older bridge's link %s: Parse = %+v, %v", old, l, err)
	}
}

// TestDNSNameLimits proves the length limits sit exactly at 63 per label
// and 253 in all.
func TestDNSNameLimits(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := label63 + "." + label63 + "." + label63 + "." + strings.Repeat("b", 61) // 63*3+61+3
	if len(name253) != 253 {
		t.Fatalf("test name is %d long", len(name253))
	}
	for name, ok := range map[string]bool{
		label63 + ".example": true, "a" + label63 + ".example": false,
		name253: true, "c" + name253: false,
		"localhost": true, "xn--tt-bja.example": true, "a-b.c0": true, "0a.b": true,
	} {
		if err := checkDNSName(name); (err == nil) != ok {
			t.Errorf("checkDNSName(%d chars %.20q…) = %v, want ok=%v", len(name), name, err, ok)
		}
	}
}

// TestString proves the canonical text: query in the order sni, id, fp,
// id left out when zero, fp left out for the default, label escaped so
// nothing in it can be read as part of the URL.
func TestString(t *testing.T) {
	key := mustKey(t, testKey)
	id := mustID(t, "0123456789abcdef")
	for _, tc := range []struct {
		l    Link
		want string
	}{
		{Link{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"},
			"mirage://" + testKey + "@h.example:443?sni=a.example"},
		{Link{Params: Params{PublicKey: key, ServerName: "a.example", ShortID: id, Fingerprint: "edge"}, Address: "[2001:db8::1]:443", Label: "x"},
			"mirage://" + testKey + "@[2001:db8::1]:443?sni=a.example&id=0123456789abcdef&fp=edge#x"},
		{Link{Params: Params{PublicKey: key, ServerName: "A.Example", Fingerprint: "chrome"}, Address: "h.example:443", Label: "My bridge #1 & ✓ 100% a+b"},
			"mirage://" + testKey + "@h.example:443?sni=a.example#My%20bridge%20%231%20%26%20%E2%9C%93%20100%25%20a%2Bb"},
	} {
		if got := tc.l.String(); got != tc.want {
			t.Errorf("String():\n got %s\nwant %s", got, tc.want)
		}
	}
}

// TestRoundTrip proves Parse(l.String()) gives back l for links in
// canonical form, including IPv6 hosts and labels with spaces and unicode.
func TestRoundTrip(t *testing.T) {
	key := mustKey(t, testKey)
	id := mustID(t, "fedcba9876543210")
	for _, l := range []Link{
		{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443"},
		{Params: Params{PublicKey: key, ServerName: "a.example", ShortID: id}, Address: "192.0.2.1:1"},
		{Params: Params{PublicKey: key, ServerName: "www.example.com", ShortID: id, Fingerprint: "ios"}, Address: "[2001:db8::1]:65535", Label: "Мой мост ✓ #2"},
		{Params: Params{PublicKey: key, ServerName: "a.example", Fingerprint: "firefox"}, Address: "[::ffff:192.0.2.1]:443", Label: " spaces  around "},
		{Params: Params{PublicKey: key, ServerName: "a.example"}, Address: "h.example:443", Label: "?&=#%+/\\'\""},
	} {
		s := l.String()
		got, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if *got != l {
			t.Fatalf("round trip of %s:\n got %+v\nwant %+v", s, *got, l)
		}
	}
}

// TestParseArgs proves a bridge line's arguments, as goptlib hands them
// over, become the right Params.
func TestParseArgs(t *testing.T) {
	key := mustKey(t, testKey)
	p, err := ParseArgs(map[string][]string{
		"key": {testKey}, "sni": {"WWW.example.com"}, "id": {"0123456789ABCDEF"}, "fp": {"chrome"},
	})
	want := Params{PublicKey: key, ServerName: "www.example.com", ShortID: mustID(t, "0123456789abcdef")}
	if err != nil || p != want {
		t.Fatalf("ParseArgs = %+v, %v; want %+v", p, err, want)
	}
	p, err = ParseArgs(map[string][]string{"key": {testKey}, "sni": {"a.example"}, "fp": {"safari"}})
	if err != nil || p != (Params{PublicKey: key, ServerName: "a.example", Fingerprint: "safari"}) {
		t.Fatalf("ParseArgs = %+v, %v", p, err)
	}
}

// TestParseArgsErrors proves each broken argument is refused with an error
// that starts "bridge line: " and names the argument.
func TestParseArgsErrors(t *testing.T) {
	ok := func() map[string][]string {
		return map[string][]string{"key": {testKey}, "sni": {"a.example"}}
	}
	with := func(k string, v ...string) map[string][]string {
		m := ok()
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name string
		args map[string][]string
		want []string
	}{
		{"nil", nil, []string{"key: missing", "key=KEY"}},
		{"no key", with("key"), []string{"key: missing"}},
		{"empty key", with("key", ""), []string{"key: missing"}},
		{"bad key", with("key", "notakey"), []string{"key:", `"notakey"`, "43"}},
		{"low-order key", with("key", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), []string{"key:", "low-order"}},
		{"IP sni", with("sni", "192.0.2.1"), []string{"sni:", "IP address"}},
		{"bad sni", with("sni", "a b"), []string{"sni:", "' '"}},
		{"bad id", with("id", "123"), []string{"id:", "16 hex digits"}},
		{"bad fp", with("fp", "opera"), []string{"fp:", "chrome, firefox, safari, ios, edge"}},
		{"unknown", with("cert", "x"), []string{"unknown parameter", `"cert"`, "key, sni, id, fp"}},
		{"unknown empty name", with("", "x"), []string{"unknown parameter", `""`}},
		{"repeated key", with("key", testKey, testKey), []string{"key:", "given 2 times"}},
		{"repeated sni", with("sni", "a.example", "b.example"), []string{"sni:", "given 2 times"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseArgs(tc.args)
			if err == nil {
				t.Fatalf("ParseArgs = %+v, want an error", p)
			}
			if !strings.HasPrefix(err.Error(), "bridge line: ") {
				t.Errorf("error %q does not start with \"bridge line: \"", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// argsMap splits "k=v k=v" as tor and goptlib would.
func argsMap(s string) map[string][]string {
	m := make(map[string][]string)
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = append(m[k], v)
	}
	return m
}

// TestArgs proves the bridge-line text of Params, and that ParseArgs reads
// it back unchanged.
func TestArgs(t *testing.T) {
	key := mustKey(t, testKey)
	id := mustID(t, "0123456789abcdef")
	for _, tc := range []struct {
		p    Params
		want string
	}{
		{Params{PublicKey: key, ServerName: "a.example"}, "key=" + testKey + " sni=a.example"},
		{Params{PublicKey: key, ServerName: "a.example", ShortID: id}, "key=" + testKey + " sni=a.example id=0123456789abcdef"},
		{Params{PublicKey: key, ServerName: "a.example", ShortID: id, Fingerprint: "ios"}, "key=" + testKey + " sni=a.example id=0123456789abcdef fp=ios"},
		{Params{PublicKey: key, ServerName: "a.example", Fingerprint: "firefox"}, "key=" + testKey + " sni=a.example fp=firefox"},
	} {
		if got := tc.p.Args(); got != tc.want {
			t.Errorf("Args() = %q, want %q", got, tc.want)
		}
		got, err := ParseArgs(argsMap(tc.p.Args()))
		if err != nil || got != tc.p {
			t.Errorf("ParseArgs(Args()) = %+v, %v; want %+v", got, err, tc.p)
		}
	}
	// The default fingerprint, however spelled, is left out.
	if got := (Params{PublicKey: key, ServerName: "a.example", Fingerprint: "chrome"}).Args(); strings.Contains(got, "fp=") {
		t.Errorf("Args() = %q names the default fingerprint", got)
	}
}

// TestBridgeLine proves the torrc line's text, with and without a relay
// fingerprint and with the placeholders the server writes.
func TestBridgeLine(t *testing.T) {
	p := Params{PublicKey: mustKey(t, testKey), ServerName: "a.example", ShortID: mustID(t, "0123456789abcdef")}
	for _, tc := range []struct{ addr, fp, want string }{
		{"192.0.2.1:443", testFP, "Bridge mirage 192.0.2.1:443 " + testFP + " key=" + testKey + " sni=a.example id=0123456789abcdef"},
		{"[2001:db8::1]:443", "", "Bridge mirage [2001:db8::1]:443 key=" + testKey + " sni=a.example id=0123456789abcdef"},
		{"<IP ADDRESS>:443", "<FINGERPRINT>", "Bridge mirage <IP ADDRESS>:443 <FINGERPRINT> key=" + testKey + " sni=a.example id=0123456789abcdef"},
	} {
		if got := BridgeLine(tc.addr, tc.fp, p); got != tc.want {
			t.Errorf("BridgeLine:\n got %s\nwant %s", got, tc.want)
		}
	}
}

// TestParseBridgeLine proves bridge lines as users paste them parse, and
// that BridgeLine's output reads back unchanged.
func TestParseBridgeLine(t *testing.T) {
	key := mustKey(t, testKey)
	p := Params{PublicKey: key, ServerName: "a.example"}
	pf := Params{PublicKey: key, ServerName: "a.example", ShortID: mustID(t, "0123456789abcdef"), Fingerprint: "edge"}
	for _, tc := range []struct {
		in, addr, fp string
		p            Params
	}{
		{"Bridge mirage 192.0.2.1:443 " + testFP + " key=" + testKey + " sni=a.example", "192.0.2.1:443", testFP, p},
		{"mirage 192.0.2.1:443 key=" + testKey + " sni=a.example", "192.0.2.1:443", "", p},
		{"  bridge\tmirage  192.0.2.1:443\t" + strings.ToLower(testFP) + "  sni=A.example key=" + testKey + "\n", "192.0.2.1:443", strings.ToLower(testFP), p},
		{"Bridge mirage 192.0.2.1 key=" + testKey + " sni=a.example", "192.0.2.1:443", "", p},
		{"Bridge mirage [2001:DB8::1]:9001 key=" + testKey + " sni=a.example id=0123456789ABCDEF fp=edge", "[2001:db8::1]:9001", "", pf},
		{"Bridge mirage [2001:db8::1] key=" + testKey + " sni=a.example", "[2001:db8::1]:443", "", p},
	} {
		addr, fp, got, err := ParseBridgeLine(tc.in)
		if err != nil {
			t.Errorf("ParseBridgeLine(%q): %v", tc.in, err)
			continue
		}
		if addr != tc.addr || fp != tc.fp || got != tc.p {
			t.Errorf("ParseBridgeLine(%q) = %q, %q, %+v; want %q, %q, %+v", tc.in, addr, fp, got, tc.addr, tc.fp, tc.p)
		}
		addr2, fp2, got2, err := ParseBridgeLine(BridgeLine(addr, fp, got))
		if err != nil || addr2 != addr || fp2 != fp || got2 != got {
			t.Errorf("round trip of %q: %q, %q, %+v, %v", tc.in, addr2, fp2, got2, err)
		}
	}
}

// TestParseBridgeLineErrors proves broken bridge lines are refused with an
// error that starts "bridge line: " and names the part at fault.
func TestParseBridgeLineErrors(t *testing.T) {
	args := " key=" + testKey + " sni=a.example"
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"empty", "", []string{"empty"}},
		{"only Bridge", "Bridge", []string{"empty"}},
		{"no transport", "Bridge 192.0.2.1:443" + args, []string{"transport: missing", `"Bridge mirage"`}},
		{"other transport", "Bridge obfs4 192.0.2.1:443" + args, []string{"transport:", `"obfs4"`}},
		{"transport case", "Bridge Mirage 192.0.2.1:443" + args, []string{"transport:", `"Mirage"`}},
		{"no address", "Bridge mirage", []string{"address: missing"}},
		{"host name", "Bridge mirage bridge.example:443" + args, []string{"address:", "IP address, not a host name"}},
		{"placeholder address", "Bridge mirage <IP ADDRESS>:443 <FINGERPRINT>" + args, []string{"address:", `"<IP"`}},
		{"bare IPv6", "Bridge mirage 2001:db8::1" + args, []string{"address:", "brackets"}},
		{"IPv4 in brackets", "Bridge mirage [192.0.2.1]:443" + args, []string{"address:"}},
		{"IPv6 zone", "Bridge mirage [fe80::1%eth0]:443" + args, []string{"address:"}},
		{"IPv6 junk", "Bridge mirage [2001:db8::1]x" + args, []string{"address:"}},
		{"bad port", "Bridge mirage 192.0.2.1:99999" + args, []string{"port:", "1 to 65535"}},
		{"empty port", "Bridge mirage 192.0.2.1:" + args, []string{"port: missing"}},
		{"placeholder fingerprint", "Bridge mirage 192.0.2.1:443 <FINGERPRINT>" + args, []string{"fingerprint:", "placeholder"}},
		{"short fingerprint", "Bridge mirage 192.0.2.1:443 " + testFP[:39] + args, []string{"fingerprint:", "40 hex digits"}},
		{"non-hex fingerprint", "Bridge mirage 192.0.2.1:443 " + testFP[:39] + "G" + args, []string{"fingerprint:", "40 hex digits"}},
		{"stray word", "Bridge mirage 192.0.2.1:443" + args + " extra", []string{`"extra"`, "name=value"}},
		{"no key", "Bridge mirage 192.0.2.1:443 sni=a.example", []string{"key: missing"}},
		{"bad key", "Bridge mirage 192.0.2.1:443 key=notakey sni=a.example", []string{"key:", `"notakey"`}},
		{"repeated", "Bridge mirage 192.0.2.1:443" + args + " sni=b.example", []string{"sni:", "given 2 times"}},
		{"unknown", "Bridge mirage 192.0.2.1:443" + args + " iat-mode=0", []string{"unknown parameter", `"iat-mode"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, fp, p, err := ParseBridgeLine(tc.in)
			if err == nil {
				t.Fatalf("ParseBridgeLine = %q, %q, %+v; want an error", addr, fp, p)
			}
			if !strings.HasPrefix(err.Error(), "bridge line: ") {
				t.Errorf("error %q does not start with \"bridge line: \"", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestValidate proves Params made in code are checked by the parsers'
// rules, with errors naming the field.
func TestValidate(t *testing.T) {
	key := mustKey(t, testKey)
	good := Params{PublicKey: key, ServerName: "a.example"}
	for _, fp := range append([]string{""}, Fingerprints...) {
		p := good
		p.Fingerprint = fp
		if err := p.Validate(); err != nil {
			t.Errorf("fp %q: %v", fp, err)
		}
	}
	lowOrder := keys.PublicKey{1}
	for _, tc := range []struct {
		name string
		edit func(*Params)
		want string
	}{
		{"zero key", func(p *Params) { p.PublicKey = keys.PublicKey{} }, "key: missing"},
		{"low-order key", func(p *Params) { p.PublicKey = lowOrder }, "key:"},
		{"IP sni", func(p *Params) { p.ServerName = "::1" }, "sni:"},
		{"upper-case sni", func(p *Params) { p.ServerName = "A.example" }, "sni:"},
		{"bad fp", func(p *Params) { p.Fingerprint = "netscape" }, "fp:"},
		{"fp not lower case", func(p *Params) { p.Fingerprint = "Chrome" }, "fp:"},
	} {
		p := good
		tc.edit(&p)
		err := p.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "link: "+tc.want) {
			t.Errorf("%s: Validate() = %v, want an error starting \"link: %s\"", tc.name, err, tc.want)
		}
	}
}

// testPin is the pin of a made-up SubjectPublicKeyInfo.
var testPin = SPKIPin([]byte("a SubjectPublicKeyInfo"))

// TestPin proves that pin= is carried by links and bridge lines in
// base64url without padding, reads back to the same Params, and that a
// damaged pin is refused with an error that names it: a pin that parsed
// to something else would make the client refuse the genuine bridge.
func TestPin(t *testing.T) {
	key := mustKey(t, testKey)
	text := testPin.String()
	if len(text) != 43 || strings.ContainsAny(text, "+/=") {
		t.Fatalf("pin text %q is not 43 characters of unpadded base64url", text)
	}
	l := Link{Params: Params{PublicKey: key, ServerName: "a.example", Pin: testPin}, Address: "192.0.2.7:443"}
	want := "mirage://" + testKey + "@192.0.2.7:443?sni=a.example&pin=" + text
	if s := l.String(); s != want {
		t.Fatalf("String() = %s, want %s", s, want)
	}
	got, err := Parse(want)
	if err != nil || *got != l {
		t.Fatalf("Parse(%s) = %+v, %v; want %+v", want, got, err, l)
	}
	line := BridgeLine("192.0.2.7:443", testFP, l.Params)
	if !strings.HasSuffix(line, " pin="+text) {
		t.Fatalf("bridge line %q does not end with pin=%s", line, text)
	}
	_, _, p, err := ParseBridgeLine(line)
	if err != nil || p != l.Params {
		t.Fatalf("ParseBridgeLine(%s) = %+v, %v; want %+v", line, p, err, l.Params)
	}
	if got, err := ParsePin(""); err != nil || !got.IsZero() || got.String() != "" {
		t.Fatalf(`ParsePin("") = %v, %v; want the zero pin`, got, err)
	}
	for _, bad := range []string{
		text[:42],               // cut short
		text + "A",              // too long
		strings.Repeat("A", 44), // longer still (Decode would overrun)
		"+" + text[1:],          // standard base64
		text[:42] + "=",         // padding
		strings.Repeat("A", 43), // all zeros
		text[:42] + "B",         // stray padding bits: a second text for one pin
	} {
		if _, err := ParsePin(bad); err == nil {
			t.Errorf("ParsePin(%q) accepted it", bad)
		}
		_, err := Parse("mirage://" + testKey + "@192.0.2.7:443?pin=" + bad)
		if err == nil || !strings.HasPrefix(err.Error(), "link: pin: ") {
			t.Errorf("Parse with pin=%q: error %v, want one starting \"link: pin: \"", bad, err)
		}
	}
}
