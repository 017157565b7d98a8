// Package safelog keeps clients' IP addresses out of Mirage's logs. A bridge
// log that names its users is a list for whoever seizes or reads it, so the
// binaries send all logging through NewHandler and print addresses only when
// the operator passes -unsafe-logging.
//
// Scrub is the core: it replaces every IP address in a string with
// "[scrubbed]". Addr, Error, Scrubber and NewHandler are built on it.
//
// # What counts as an address
//
// The rule is deliberately simple, so it can be stated and tested: every
// substring that is an IPv4 dotted quad (octets 0-255, leading zeros
// allowed) or that net/netip.ParseAddr accepts as an IPv6 address is
// replaced, whatever surrounds it. A following ":port", an IPv6 "%zone" and
// the brackets of "[v6]:port" go with it. Consequently the output of Scrub
// contains no such substring at all, which FuzzScrub checks.
//
// Text that is not an address is left alone: "1.2.3" (a version), "12:34:56"
// (a time), "00:11:22:33:44:55", hex words, durations like "1h2m3.5s",
// RFC 3339 timestamps. The price of "whatever surrounds it" is that text
// which merely contains an address is cut too: "v1.2.3.4" becomes
// "v[scrubbed]", "1.2.3.4.5" becomes "[scrubbed].5" and "256.1.1.1" becomes
// "2[scrubbed]". A leak is worse than an ugly log line, and no log format
// glues an address to other digits, so this costs nothing in practice.
//
// "::" on its own is scrubbed, as is any "x::y" made of hex digits, because
// ParseAddr accepts them (the unspecified address, and so on); "std::vector"
// in prose would become "st[scrubbed]vector". Go's logs do not use "::", and
// guessing from context whether "::" is an address would break the simple
// rule above.
//
// Likewise eight or more colon-separated hex groups, such as a certificate
// fingerprint written "AB:CD:EF:...", contain IPv6 addresses by this rule
// and are cut. Hostnames are not addresses and are not scrubbed.
//
// Scrub, Addr and Error are pure functions, safe for concurrent use.
package safelog

import (
	"net"
	"net/netip"
	"strings"
)

// scrubbed replaces each address.
const scrubbed = "[scrubbed]"

// maxV6Len is the longest text ParseAddr accepts as an IPv6 address without
// a zone: six groups of four hex digits and a dotted quad,
// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
const maxV6Len = 45

// Addr returns "[scrubbed]" for any address unless unsafe is true, then
// addr.String(); a nil addr gives "<nil>" either way. Every kind of address
// is scrubbed, not only IP ones: a Unix socket path or a hostname says as
// much about a user as an IP address.
func Addr(addr net.Addr, unsafe bool) string {
	if addr == nil {
		return "<nil>"
	}
	if unsafe {
		return addr.String()
	}
	return scrubbed
}

// Error returns err's text with addresses scrubbed unless unsafe is true, for
// logging errors like "dial tcp 1.2.3.4:443: connection refused". A nil err
// gives "<nil>".
func Error(err error, unsafe bool) string {
	if err == nil {
		return "<nil>"
	}
	if unsafe {
		return err.Error()
	}
	return Scrub(err.Error())
}

// Scrub returns s with every IP address replaced by "[scrubbed]" (see the
// package comment for exactly what is an address). It returns s itself when
// there is nothing to replace. Its cost is linear in len(s).
func Scrub(s string) string {
	// Every dotted quad has a '.', every IPv6 address a ':'.
	if !strings.ContainsAny(s, ".:") {
		return s
	}
	var b strings.Builder
	copied := 0 // s[:copied] is already in b
	for i := 0; i < len(s); {
		n := matchAt(s, i)
		if n == 0 {
			i++
			continue
		}
		if copied == 0 {
			b.Grow(len(s))
		}
		b.WriteString(s[copied:i])
		b.WriteString(scrubbed)
		i += n
		copied = i
	}
	if copied == 0 {
		return s
	}
	b.WriteString(s[copied:])
	return b.String()
}

// matchAt returns the length of the address text starting at s[i] (with its
// brackets, zone and port), or 0 if none starts there. Taking the longest
// match at the leftmost position and resuming after it is what guarantees
// that no address survives: an address in the output would start at a
// position where matchAt was called and found nothing.
func matchAt(s string, i int) int {
	if s[i] == '[' {
		// "[v6]" or "[v6]:port" as a unit, so the brackets do not outlive
		// their contents. Without a closing bracket the '[' is ordinary text
		// and the address is found at i+1.
		n := addrAt(s, i+1)
		end := i + 1 + n
		if n == 0 || end >= len(s) || s[end] != ']' {
			return 0
		}
		end++
		return end + portLen(s, end) - i
	}
	n := addrAt(s, i)
	if n == 0 {
		return 0
	}
	// The match is the longest possible, so a ":digits" after it is not
	// part of an IPv6 address and can only be a port.
	return n + portLen(s, i+n)
}

// addrAt returns the length of the longest IPv4 or IPv6 address (with zone)
// starting at s[i].
func addrAt(s string, i int) int {
	if i >= len(s) {
		return 0
	}
	n4 := v4Len(s[i:])
	n6 := v6Len(s, i)
	if n4 >= n6 {
		return n4
	}
	return n6 + zoneLen(s, i+n6)
}

// v4Len returns the length of the longest dotted quad at the start of s, or
// 0. The first three octets must be whole digit runs (a '.' follows them);
// only the last may be cut short ("1.2.3.456" matches "1.2.3.45"), so there
// is never a choice to backtrack over.
func v4Len(s string) int {
	i := 0
	for part := range 4 {
		if part > 0 {
			if i >= len(s) || s[i] != '.' {
				return 0
			}
			i++
		}
		j, v := i, 0
		for j < len(s) && j-i < 3 && isDigit(s[j]) {
			v = v*10 + int(s[j]-'0')
			j++
		}
		if j == i {
			return 0
		}
		if v > 255 {
			if part < 3 {
				return 0
			}
			j-- // two digits are always a valid octet
		}
		i = j
	}
	return i
}

// v6Len returns the length of the longest text starting at s[i] that
// netip.ParseAddr accepts as an IPv6 address, or 0. It parses candidates
// from the longest down, within a window cut short wherever no address can
// reach: past maxV6Len characters, a ninth colon or a second "::". That keeps
// Scrub linear, with a small constant, even on a line made entirely of hex
// digits and colons.
func v6Len(s string, i int) int {
	if !isHex(s[i]) && s[i] != ':' {
		return 0
	}
	end, colons, doubles := i, 0, 0
	for end < len(s) && end-i < maxV6Len && isV6Char(s[end]) {
		if s[end] == ':' {
			if colons++; colons > 8 {
				break // "1:2:3:4:5:6:7::" has the most colons, 8
			}
			if end > i && s[end-1] == ':' {
				if doubles++; doubles > 1 {
					break // at most one "::", and never ":::"
				}
			}
		}
		end++
	}
	// Every IPv6 address has "::", or seven colons (six before a dotted
	// quad); most hex words and times fail here without parsing.
	if doubles == 0 && colons < 6 {
		return 0
	}
	for j := end; j >= i+2; j-- {
		// An address ends in a hex digit or "::".
		if c := s[j-1]; !isHex(c) && !(c == ':' && s[j-2] == ':') {
			continue
		}
		a, err := netip.ParseAddr(s[i:j])
		if err == nil && a.Is6() {
			return j - i
		}
	}
	return 0
}

// zoneLen returns the length of an IPv6 zone ("%eth0", or "%25eth0" as in
// URLs) at s[i], or 0.
func zoneLen(s string, i int) int {
	if i >= len(s) || s[i] != '%' {
		return 0
	}
	j := i + 1
	for j < len(s) && isZoneChar(s[j]) {
		j++
	}
	if j == i+1 {
		return 0 // a lone '%' is text
	}
	return j - i
}

// portLen returns the length of ":digits" at s[i], or 0.
func portLen(s string, i int) int {
	if i >= len(s) || s[i] != ':' {
		return 0
	}
	j := i + 1
	for j < len(s) && isDigit(s[j]) {
		j++
	}
	if j == i+1 {
		return 0
	}
	return j - i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isV6Char(c byte) bool { return isHex(c) || c == ':' || c == '.' }

func isZoneChar(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' ||
		c == '.' || c == '_' || c == '-' || c == '~'
}
