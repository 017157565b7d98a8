package safelog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func TestScrubTable(t *testing.T) {
	tests := []struct{ in, want string }{
		// IPv4.
		{"1.2.3.4", "[scrubbed]"},
		{"0.0.0.0", "[scrubbed]"},
		{"255.255.255.255:65535", "[scrubbed]"},
		{"dial tcp 1.2.3.4:443: connection refused", "dial tcp [scrubbed]: connection refused"},
		{"from 10.0.0.1, to 192.168.1.1.", "from [scrubbed], to [scrubbed]."},
		{"addr=(1.2.3.4) \"8.8.8.8\"", "addr=([scrubbed]) \"[scrubbed]\""},
		{"read udp 127.0.0.1:5353->224.0.0.251:5353: i/o timeout", "read udp [scrubbed]->[scrubbed]: i/o timeout"},
		{"ip=1.2.3.4\n", "ip=[scrubbed]\n"},
		{"10.0.0.0/8", "[scrubbed]/8"},
		{"01.02.03.004", "[scrubbed]"}, // leading zeros: still someone's address
		{"[1.2.3.4]:80", "[scrubbed]"},
		// IPv6, every textual form.
		{"2001:db8::1", "[scrubbed]"},
		{"2001:0db8:0000:0000:0000:ff00:0042:8329", "[scrubbed]"},
		{"2001:DB8::FF00:42:8329", "[scrubbed]"},
		{"1:2:3:4:5:6:7:8", "[scrubbed]"},
		{"1::", "[scrubbed]"},
		{"::1", "[scrubbed]"},
		{"::", "[scrubbed]"}, // the unspecified address; see the package comment
		{"[::]:443", "[scrubbed]"},
		{"[::1]:8080", "[scrubbed]"},
		{"[2001:db8::1]", "[scrubbed]"},
		{"dial tcp [2001:db8::1]:443: connect: network is unreachable", "dial tcp [scrubbed]: connect: network is unreachable"},
		{"fe80::1%eth0 is up", "[scrubbed] is up"},
		{"[fe80::1%25en0]:80", "[scrubbed]"},
		{"::ffff:1.2.3.4", "[scrubbed]"},
		{"[::ffff:1.2.3.4]:443", "[scrubbed]"},
		{"x=::ffff:10.1.2.3;", "x=[scrubbed];"},
		{"64:ff9b::192.0.2.33", "[scrubbed]"},
		{"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", "[scrubbed]"}, // the longest form
		{"[0000:0000:0000:0000:0000:ffff:255.255.255.255]:65535", "[scrubbed]"},
		{"http://[2001:db8::2]:8080/path", "http://[scrubbed]/path"},
		{"1:2:3:4:5:6:7:8:9", "[scrubbed]"}, // eight groups and a "port"
		// Text containing an address is cut (documented).
		{"v1.2.3.4", "v[scrubbed]"},
		{"1.2.3.4.5", "[scrubbed].5"},
		{"256.1.1.1", "2[scrubbed]"},
		{"std::vector", "st[scrubbed]vector"},

		// Not addresses: left exactly as they are.
		{"", ""},
		{"no addresses here", "no addresses here"},
		{"version 1.2.3", "version 1.2.3"},
		{"go1.26.8", "go1.26.8"},
		{"1.2.3.", "1.2.3."},
		{"1.2..3.4", "1.2..3.4"},
		{"3.14159", "3.14159"},
		{"12:34:56", "12:34:56"},
		{"12:34:56.789", "12:34:56.789"},
		{"time=2025-11-24T20:19:00.123456789+01:00", "time=2025-11-24T20:19:00.123456789+01:00"},
		{"2025/11/24 20:19:00", "2025/11/24 20:19:00"},
		{"deadbeef", "deadbeef"},
		{"cafe:babe", "cafe:babe"},
		{"a:b:c:d", "a:b:c:d"},
		{"1:2:3:4:5:6:7", "1:2:3:4:5:6:7"}, // seven groups and no "::"
		{"00:11:22:33:44:55", "00:11:22:33:44:55"},
		{"1h2m3.5s", "1h2m3.5s"},
		{"took 250ms, then 1.5s", "took 250ms, then 1.5s"},
		{"sha256:0123456789abcdef", "sha256:0123456789abcdef"},
		{"main.go:42:13", "main.go:42:13"},
		{"host example.com:443", "host example.com:443"},
		{"localhost:8080", "localhost:8080"},
		{"uuid 123e4567-e89b-12d3-a456-426614174000", "uuid 123e4567-e89b-12d3-a456-426614174000"},
		{"0x1f.0x2", "0x1f.0x2"},
		{`level=INFO msg="session 42 closed" bytes=1024`, `level=INFO msg="session 42 closed" bytes=1024`},
		{"naïve: 1.2.3 ünïcode", "naïve: 1.2.3 ünïcode"},
	}
	for _, tc := range tests {
		if got := Scrub(tc.in); got != tc.want {
			t.Errorf("Scrub(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestAddr(t *testing.T) {
	tcp := &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 443}
	unix := &net.UnixAddr{Name: "/run/tor/socket", Net: "unix"}
	for _, tc := range []struct {
		addr   net.Addr
		unsafe bool
		want   string
	}{
		{nil, false, "<nil>"},
		{nil, true, "<nil>"},
		{tcp, false, "[scrubbed]"},
		{tcp, true, "203.0.113.7:443"},
		{unix, false, "[scrubbed]"},
		{unix, true, "/run/tor/socket"},
	} {
		if got := Addr(tc.addr, tc.unsafe); got != tc.want {
			t.Errorf("Addr(%v, %v) = %q, want %q", tc.addr, tc.unsafe, got, tc.want)
		}
	}
}

func TestError(t *testing.T) {
	err := fmt.Errorf("bridge: %w", &net.OpError{Op: "dial", Net: "tcp",
		Addr: &net.TCPAddr{IP: net.ParseIP("2001:db8::5"), Port: 443}, Err: errors.New("connection refused")})
	if got, want := Error(err, false), "bridge: dial tcp [scrubbed]: connection refused"; got != want {
		t.Errorf("Error(safe) = %q, want %q", got, want)
	}
	if got, want := Error(err, true), "bridge: dial tcp [2001:db8::5]:443: connection refused"; got != want {
		t.Errorf("Error(unsafe) = %q, want %q", got, want)
	}
	if got := Error(nil, false); got != "<nil>" {
		t.Errorf("Error(nil) = %q", got)
	}
}

func TestScrubberSplitAddress(t *testing.T) {
	// Every way of cutting the text into two writes, including inside the
	// addresses, gives the same output as scrubbing it whole.
	const text = "dial tcp [2001:db8::1]:443 via 192.168.10.20: refused\nnext 10.1.2.3\n"
	want := Scrub(text)
	for cut := 0; cut <= len(text); cut++ {
		var out bytes.Buffer
		s := NewScrubber(&out)
		s.Write([]byte(text[:cut]))
		if strings.Contains(out.String(), "192.168") || strings.Contains(out.String(), "2001:") {
			t.Fatalf("cut %d: a partial address was passed on: %q", cut, out.String())
		}
		s.Write([]byte(text[cut:]))
		if out.String() != want {
			t.Fatalf("cut %d: got %q, want %q", cut, out.String(), want)
		}
	}
}

func TestScrubberByteAtATimeAndFlush(t *testing.T) {
	const text = "a 1.2.3.4\nb [::1]:80\nc fe80::2%eth0 no newline at the end 5.6.7.8"
	var out bytes.Buffer
	s := NewScrubber(&out)
	for i := range len(text) {
		if n, err := s.Write([]byte{text[i]}); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got, want := out.String(), "a [scrubbed]\nb [scrubbed]\n"; got != want {
		t.Fatalf("before Flush: %q, want %q", got, want)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), Scrub(text); got != want {
		t.Fatalf("after Flush: %q, want %q", got, want)
	}
	if err := s.Flush(); err != nil || out.String() != Scrub(text) {
		t.Fatalf("second Flush wrote again or failed: %v", err)
	}
}

func TestScrubberLongLine(t *testing.T) {
	t.Run("cut at a safe byte", func(t *testing.T) {
		// An unfinished line past 64 KiB is written out, but not through
		// the address at its end, whose second half comes later.
		var out bytes.Buffer
		s := NewScrubber(&out)
		s.Write([]byte(strings.Repeat("word ", maxLine/5+1) + "1.2.3"))
		if out.Len() == 0 {
			t.Fatal("a line over 64 KiB was held whole")
		}
		if len(s.buf) > maxLine {
			t.Fatalf("holding %d bytes", len(s.buf))
		}
		s.Write([]byte(".4 end\n"))
		if got := out.String(); strings.Contains(got, "1.2.3") || !strings.HasSuffix(got, " [scrubbed] end\n") {
			t.Fatalf("address at the cut escaped: ...%q", got[len(got)-40:])
		}
	})
	for _, prefix := range []string{"", "x"} {
		t.Run(fmt.Sprintf("no safe byte after %q", prefix), func(t *testing.T) {
			// A run of address characters longer than the bound cannot be
			// cut safely; it is written out whole rather than held.
			var out bytes.Buffer
			s := NewScrubber(&out)
			long := prefix + strings.Repeat("0123456789abcdef", maxLine/16+1)
			s.Write([]byte(long))
			if out.String() != long || len(s.buf) != 0 {
				t.Fatalf("wrote %d bytes, holding %d; want the whole %d-byte line written", out.Len(), len(s.buf), len(long))
			}
		})
	}
	t.Run("bounded over many writes", func(t *testing.T) {
		var out bytes.Buffer
		s := NewScrubber(&out)
		for i := range 10000 {
			fmt.Fprintf(s, "chunk %d of 10.0.%d.%d; ", i, i/256%256, i%256)
			if len(s.buf) > maxLine {
				t.Fatalf("write %d: holding %d bytes", i, len(s.buf))
			}
		}
		s.Flush()
		if got := out.String(); strings.Contains(got, "10.0.") || strings.Count(got, "[scrubbed]") != 10000 {
			t.Fatalf("an address escaped or was lost across the forced cuts")
		}
	})
}

type failWriter struct{ err error }

func (w failWriter) Write(p []byte) (int, error) { return 0, w.err }

func TestScrubberWriteError(t *testing.T) {
	boom := errors.New("disk full")
	s := NewScrubber(failWriter{boom})
	if n, err := s.Write([]byte("partial")); n != 7 || err != nil {
		t.Fatalf("Write of a partial line = %d, %v; want 7, nil", n, err)
	}
	if n, err := s.Write([]byte(" line\n")); n != 6 || !errors.Is(err, boom) {
		t.Fatalf("Write = %d, %v; want 6, %v", n, err, boom)
	}
	if len(s.buf) != 0 {
		t.Fatalf("failed line kept: %q", s.buf)
	}
}

func TestScrubberConcurrent(t *testing.T) {
	const goroutines, lines = 8, 300
	var out bytes.Buffer // the Scrubber serialises its writes to out
	s := NewScrubber(&out)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range lines {
				fmt.Fprintf(s, "g%d line %d from 10.%d.%d.1:%d and [2001:db8::%x]:443 ok\n", g, i, g, i%256, 1000+i, i)
			}
		})
	}
	wg.Wait()
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != goroutines*lines {
		t.Fatalf("%d lines, want %d", len(got), goroutines*lines)
	}
	seen := map[string]bool{}
	for _, l := range got {
		var g, i int
		if _, err := fmt.Sscanf(l, "g%d line %d from [scrubbed] and [scrubbed] ok", &g, &i); err != nil {
			t.Fatalf("mangled or unscrubbed line %q: %v", l, err)
		}
		seen[l] = true
	}
	if len(seen) != goroutines*lines {
		t.Fatalf("%d distinct lines, want %d", len(seen), goroutines*lines)
	}
}

func TestNewHandler(t *testing.T) {
	log := func(unsafe bool) string {
		var out bytes.Buffer
		l := slog.New(NewHandler(&out, slog.LevelInfo, unsafe))
		l.Debug("hidden", "addr", "9.9.9.9")
		l.Info("client 198.51.100.4 connected",
			"remote", &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 5000},
			"err", errors.New("dial tcp 203.0.113.9:443: refused"),
			slog.Group("g", "peer", netip.MustParseAddrPort("[fe80::1%eth0]:80")))
		return out.String()
	}
	addrs := []string{"198.51.100.4", "2001:db8::7", "203.0.113.9", "fe80::1", "9.9.9.9"}

	safe := log(false)
	for _, a := range addrs {
		if strings.Contains(safe, a) {
			t.Errorf("safe log contains %s: %s", a, safe)
		}
	}
	if strings.Count(safe, "\n") != 1 || strings.Count(safe, "[scrubbed]") != 4 {
		t.Errorf("safe log should be one line with 4 scrubbed addresses: %s", safe)
	}

	unsafe := log(true)
	for _, a := range addrs[:4] {
		if !strings.Contains(unsafe, a) {
			t.Errorf("unsafe log lacks %s: %s", a, unsafe)
		}
	}
	if strings.Contains(unsafe, "hidden") {
		t.Errorf("level not applied: %s", unsafe)
	}
	if !NewHandler(&bytes.Buffer{}, nil, false).Enabled(context.Background(), slog.LevelInfo) {
		t.Error("nil level should mean Info")
	}
}

// parsableSubstring returns a substring of s that net/netip accepts as an
// address, or "". It looks further than any address can be long, so it
// would also catch Scrub's window being too short.
func parsableSubstring(s string) string {
	for i := range len(s) {
		for j := i + 2; j <= len(s) && j <= i+64; j++ {
			if _, err := netip.ParseAddr(s[i:j]); err == nil {
				return s[i:j]
			}
		}
	}
	return ""
}

// renderAddr writes the address in ip (4 or 16 bytes, else none) in one of
// the forms a log might show it, chosen by form.
func renderAddr(ip []byte, form uint8, port uint16) (core, text string) {
	var a netip.Addr
	switch {
	case len(ip) >= 16:
		a = netip.AddrFrom16([16]byte(ip[:16]))
	case len(ip) >= 4:
		a = netip.AddrFrom4([4]byte(ip[:4]))
	default:
		return "", ""
	}
	core = a.String()
	switch form % 8 {
	case 1:
		return core, netip.AddrPortFrom(a, port).String()
	case 2:
		if a.Is4() {
			core = "::ffff:" + core
		}
		return core, "[" + core + "]:" + fmt.Sprint(port)
	case 3:
		if a.Is6() {
			core = a.StringExpanded()
		}
	case 4:
		core = strings.ToUpper(core)
	case 5:
		if a.Is6() {
			core += "%eth0"
		}
	case 6:
		if a.Is4() {
			core = "::ffff:" + core
		}
	case 7:
		// Six full groups and a dotted quad: the longest form there is.
		if a.Is6() {
			b := a.As16()
			core = a.StringExpanded()[:30] + netip.AddrFrom4([4]byte(b[12:])).String()
		}
	}
	return core, core
}

func FuzzScrub(f *testing.F) {
	v4 := []byte{1, 2, 3, 4}
	v6 := netip.MustParseAddr("2001:db8::1").AsSlice()
	mapped := netip.MustParseAddr("::ffff:1.2.3.4").AsSlice()
	f.Add("dial tcp ", v4, uint8(1), uint16(443), ": connection refused")
	f.Add("dial tcp ", v6, uint8(2), uint16(443), ": refused")
	f.Add("", v6, uint8(5), uint16(0), "")
	f.Add("x", mapped, uint8(0), uint16(80), "y")
	f.Add("1.2.3", v4, uint8(0), uint16(0), ".5")
	f.Add("12:34:", []byte{255, 255, 255, 255}, uint8(3), uint16(65535), ":56")
	f.Add("deadbeef", make([]byte, 16), uint8(4), uint16(1), "cafe")
	f.Add("9999", v4, uint8(0), uint16(0), "9999")
	f.Add("abcd:", v6, uint8(3), uint16(0), ":abcd")
	f.Add("[", v6, uint8(0), uint16(0), "]")
	f.Add("0", bytes.Repeat([]byte{0xff}, 16), uint8(7), uint16(0), "0")
	f.Add("version 1.2.3 at 12:34:56", []byte{}, uint8(0), uint16(0), " took 1h2m3.5s")
	f.Fuzz(func(t *testing.T, prefix string, ip []byte, form uint8, port uint16, suffix string) {
		core, text := renderAddr(ip, form, port)
		in := prefix + text + suffix
		out := Scrub(in)
		if core != "" && strings.Contains(out, core) {
			t.Fatalf("Scrub(%q) = %q still contains %q", in, out, core)
		}
		if sub := parsableSubstring(out); sub != "" {
			t.Fatalf("Scrub(%q) = %q still contains the address %q", in, out, sub)
		}
		if again := Scrub(out); again != out {
			t.Fatalf("Scrub not idempotent: %q -> %q -> %q", in, out, again)
		}
		// With spaces around it, the address is replaced exactly, as a
		// whole, and nothing else changes: a match never spans a space.
		if text != "" {
			spaced := prefix + " " + text + " " + suffix
			if got, want := Scrub(spaced), Scrub(prefix)+" [scrubbed] "+Scrub(suffix); got != want {
				t.Fatalf("Scrub(%q) = %q, want %q", spaced, got, want)
			}
		}
		if !strings.ContainsAny(in, ".:") && out != in {
			t.Fatalf("Scrub(%q) = %q changed text without '.' or ':'", in, out)
		}
	})
}

func BenchmarkScrub(b *testing.B) {
	for _, bc := range []struct{ name, in string }{
		{"logline", `time=2025-11-24T20:19:00.123Z level=INFO msg="dial tcp 1.2.3.4:443: refused" session=42` + "\n"},
		{"hostile", strings.Repeat("1::", 1000)},
		{"hostile2", strings.Repeat("a:", 1500)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				Scrub(bc.in)
			}
		})
	}
}
