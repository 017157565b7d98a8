// Package link reads and writes the two ways a Mirage bridge is handed to a
// user:
//
//	mirage://KEY@HOST:PORT?sni=NAME&id=SHORTID&fp=chrome&pin=PIN#LABEL  (mirage-client)
//	Bridge mirage HOST:PORT FINGERPRINT key=KEY sni=NAME id=SHORTID pin=PIN (tor)
//
// Both carry the same Params. Every parameter but the key is optional: a
// bridge with no DNS name of its own has no sni, and its clients send no
// server name at all, as a browser does for an address typed as an IP. Users paste these by hand, often after a
// messenger or a mail client has mangled them, so every error names the
// field at fault and says what a correct value looks like. The writers
// produce one canonical form, which the parsers read back unchanged.
package link

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mirage-pt/mirage/transport/keys"
)

// Scheme is the URL scheme of a link.
const Scheme = "mirage"

// DefaultFingerprint is the browser mimicked when a link or bridge line
// names none. Links leave it out, so it is spelled "" in Params.
const DefaultFingerprint = "chrome"

// Fingerprints are the browsers whose ClientHello a client can send, the
// values fp= may take. The transport package maps each to a ClientHello.
var Fingerprints = []string{"chrome", "firefox", "safari", "ios", "edge"}

// Params are what a client needs to reach and authenticate a bridge, besides
// its address.
type Params struct {
	// PublicKey is the bridge's static X25519 key (key=, or KEY in a link).
	PublicKey keys.PublicKey
	// ServerName is the SNI to send (sni=): a DNS name, lower case.
	// "" means none: the client leaves the server_name extension out of
	// its ClientHello, as Chrome does when the user typed an IP address.
	// That is what a bridge without a domain name hands out; sending a
	// made-up name instead (older bridges said "localhost") marks every
	// such connection to a DPI rule. Links from those bridges still parse,
	// and their clients still send the name, so that they keep working.
	ServerName string
	// ShortID is the id the bridge gave this user (id=); optional.
	ShortID keys.ShortID
	// Fingerprint names the browser to mimic (fp=), one of Fingerprints.
	// "" means DefaultFingerprint, and the parsers return "" for it too.
	Fingerprint string
	// Budget is the most bytes one carrier connection may carry in either
	// direction, TLS handshake included (budget=, e.g. "14k"); 0 means no
	// budget. Set it for networks that freeze connections after a fixed
	// number of bytes; without it the client detects such freezes and
	// learns a budget on its own.
	Budget int
	// Pin is the SHA-256 of the bridge's site certificate's
	// SubjectPublicKeyInfo (pin=, base64url without padding); zero means
	// none. A bridge whose certificate no browser would trust (a
	// self-signed one) hands it out so that its clients, like a browser,
	// abort a handshake with anyone else's certificate before they send
	// a byte after it.
	Pin Pin
}

// Pin is the SHA-256 of a certificate's SubjectPublicKeyInfo (the form of
// HPKP's pin-sha256), which stays the same when a certificate is renewed
// with the same key.
type Pin [sha256.Size]byte

// SPKIPin returns the pin of a certificate whose DER SubjectPublicKeyInfo
// is spki (x509.Certificate.RawSubjectPublicKeyInfo).
func SPKIPin(spki []byte) Pin { return sha256.Sum256(spki) }

// IsZero reports whether p is "no pin".
func (p Pin) IsZero() bool { return p == Pin{} }

// String returns p in base64url without padding, as pin= carries it, or
// "" for the zero pin.
func (p Pin) String() string {
	if p.IsZero() {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(p[:])
}

// ParsePin reads a pin as String writes it. The empty string is the zero
// pin. Errors start with "pin: ".
func ParsePin(s string) (Pin, error) {
	var p Pin
	if s == "" {
		return p, nil
	}
	// Strict: one text per pin, so that a link's canonical form is the
	// text it was given. The length is checked first: Decode writes past
	// a destination too short for its input.
	enc := base64.RawURLEncoding.Strict()
	bad := fmt.Errorf("pin: %s is not %d characters of base64url (A-Z a-z 0-9 - _); copy the link again", quote(s), enc.EncodedLen(len(p)))
	if len(s) != enc.EncodedLen(len(p)) {
		return Pin{}, bad
	}
	if n, err := enc.Decode(p[:], []byte(s)); err != nil || n != len(p) {
		return Pin{}, bad
	}
	if p.IsZero() {
		return Pin{}, fmt.Errorf("pin: %s is all zeros, no certificate's pin; copy the link again", quote(s))
	}
	return p, nil
}

// Budget bounds: a carrier must have room for a TLS handshake (a browser
// hello and a certificate flight take 3 to 6 KiB) and some data; past a
// gibibyte a budget means nothing.
const (
	MinBudget = 8 << 10
	MaxBudget = 1 << 30
)

// Link is a parsed mirage:// link.
type Link struct {
	Params
	// Address is the bridge's "host:port" as net.JoinHostPort writes it
	// (an IPv6 host in brackets), host names in lower case.
	Address string
	// Label is the optional human name from the link's #fragment.
	Label string
}

// where is the kind of text being parsed, which decides the prefix of an
// error and how its examples are written.
type where int

const (
	inLink where = iota
	inBridgeLine
	inParams // Params.Validate: no text, a Go value
)

// prefix starts every error about this kind of text.
func (w where) prefix() string {
	if w == inBridgeLine {
		return "bridge line"
	}
	return "link"
}

// errorf returns an error "PREFIX: FIELD: MESSAGE". format may use %w.
func (w where) errorf(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: "+format, append([]any{w.prefix(), field}, args...)...)
}

// the is how messages refer to this kind of text ("the link must …").
func (w where) the() string {
	switch w {
	case inLink:
		return "the link"
	case inBridgeLine:
		return "the bridge line"
	}
	return "Params"
}

// Parse reads a mirage:// link. Surrounding white space is ignored; the
// scheme is matched without regard to case, and host names, sni and fp are
// folded to lower case, all of which are case-insensitive.
func Parse(s string) (*Link, error) {
	w := inLink
	s = strings.TrimSpace(s)
	rest, fragment, _ := strings.Cut(s, "#")
	scheme, rest, ok := strings.Cut(rest, "://")
	if !ok {
		return nil, fmt.Errorf("link: %s is not a mirage:// link (it should look like mirage://KEY@HOST:PORT)", quote(s))
	}
	if !strings.EqualFold(scheme, Scheme) {
		return nil, w.errorf("scheme", "%s is not %s (the link must start with %s://)", quote(scheme), Scheme, Scheme)
	}
	rest, query, _ := strings.Cut(rest, "?")
	// The key is cut off first: a key damaged into standard base64 may
	// hold a '/', which must not be taken for the start of a path.
	userinfo, rest, ok := strings.Cut(rest, "@")
	if !ok {
		return nil, w.errorf("key", "missing (the link must have the bridge's key before '@': mirage://KEY@HOST:PORT)")
	}
	key, err := keys.ParsePublicKey(userinfo)
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	// A trailing "/" is what many tools add to a URL with an empty path;
	// anything else there is not part of a Mirage link.
	hostport, path, _ := strings.Cut(rest, "/")
	if path != "" {
		return nil, fmt.Errorf("link: %s after the address is not part of a link; a link has no path (mirage://KEY@HOST:PORT?PARAMETERS)", quote("/"+path))
	}
	addr, err := parseAddress(hostport, w)
	if err != nil {
		return nil, err
	}
	args, err := parseQuery(query)
	if err != nil {
		return nil, err
	}
	p, err := parseParams(args, w)
	if err != nil {
		return nil, err
	}
	p.PublicKey = key
	label, err := parseLabel(fragment)
	if err != nil {
		return nil, err
	}
	return &Link{Params: p, Address: addr, Label: label}, nil
}

// String returns the link in canonical form: the query in the order sni,
// id, fp, budget, pin, with sni left out when empty, id when zero, fp when
// it is the default and budget and pin when zero (no query at all when all are), sni and
// fp in lower case, and the label percent-encoded. Parse reads it back as l
// when l is itself canonical, as everything Parse returns is.
func (l *Link) String() string {
	var b strings.Builder
	b.WriteString(Scheme + "://")
	b.WriteString(l.PublicKey.String())
	b.WriteByte('@')
	b.WriteString(l.Address)
	sep := byte('?')
	param := func(name, value string) {
		b.WriteByte(sep)
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(value)
		sep = '&'
	}
	if l.ServerName != "" {
		param("sni", escape(strings.ToLower(l.ServerName)))
	}
	if !l.ShortID.IsZero() {
		param("id", l.ShortID.String())
	}
	if fp := canonicalFingerprint(l.Fingerprint); fp != "" {
		param("fp", escape(fp))
	}
	if l.Budget > 0 {
		param("budget", FormatBudget(l.Budget))
	}
	if !l.Pin.IsZero() {
		param("pin", l.Pin.String())
	}
	if l.Label != "" {
		b.WriteByte('#')
		b.WriteString(escape(l.Label))
	}
	return b.String()
}

// ParseArgs reads the arguments of a bridge line, as goptlib hands them to
// a pt client (pt.Args is a map[string][]string): key is required; sni,
// id, fp, budget and pin are optional. An unknown or repeated argument is an
// error, not ignored: it is most likely a typo that would otherwise change
// what the client does without a word.
func ParseArgs(args map[string][]string) (Params, error) {
	return parseParams(args, inBridgeLine)
}

// Args returns p as the arguments of a bridge line, "key=… sni=… id=… fp=…
// budget=… pin=…", with sni left out when empty, id, budget and pin when
// zero and fp when it is the default.
func (p Params) Args() string {
	var b strings.Builder
	b.WriteString("key=")
	b.WriteString(p.PublicKey.String())
	if p.ServerName != "" {
		b.WriteString(" sni=")
		b.WriteString(strings.ToLower(p.ServerName))
	}
	if !p.ShortID.IsZero() {
		b.WriteString(" id=")
		b.WriteString(p.ShortID.String())
	}
	if fp := canonicalFingerprint(p.Fingerprint); fp != "" {
		b.WriteString(" fp=")
		b.WriteString(fp)
	}
	if p.Budget > 0 {
		b.WriteString(" budget=")
		b.WriteString(FormatBudget(p.Budget))
	}
	if !p.Pin.IsZero() {
		b.WriteString(" pin=")
		b.WriteString(p.Pin.String())
	}
	return b.String()
}

// BridgeLine returns a torrc bridge line, "Bridge mirage ADDR FINGERPRINT
// ARGS". An empty fingerprint is left out, as tor allows. Neither addr nor
// fingerprint is checked, so that placeholders such as "<FINGERPRINT>" can
// be written for the operator to fill in.
func BridgeLine(addr, fingerprint string, p Params) string {
	s := "Bridge " + Scheme + " " + addr
	if fingerprint != "" {
		s += " " + fingerprint
	}
	return s + " " + p.Args()
}

// ParseBridgeLine reads a torrc bridge line, with or without the leading
// "Bridge". As tor does, it wants an IP address (no host name), takes port
// 443 when none is given, and treats the fingerprint (40 hex digits,
// returned as written) as optional. addr is in net.JoinHostPort's form.
func ParseBridgeLine(s string) (addr, fingerprint string, p Params, err error) {
	w := inBridgeLine
	fields := strings.Fields(s)
	if len(fields) > 0 && strings.EqualFold(fields[0], "Bridge") {
		fields = fields[1:]
	}
	if len(fields) == 0 {
		return "", "", Params{}, errors.New("bridge line: empty (it should look like Bridge mirage IP:PORT FINGERPRINT key=KEY)")
	}
	if fields[0] != Scheme {
		if strings.ContainsAny(fields[0], ".:") {
			return "", "", Params{}, w.errorf("transport", "missing (the bridge line must start with \"Bridge %s\")", Scheme)
		}
		return "", "", Params{}, w.errorf("transport", "%s is not %s (this is a bridge line for another pluggable transport)", quote(fields[0]), Scheme)
	}
	if len(fields) < 2 {
		return "", "", Params{}, w.errorf("address", "missing (the bridge line must give the bridge's IP:PORT after \"%s\")", Scheme)
	}
	if addr, err = parseBridgeAddress(fields[1]); err != nil {
		return "", "", Params{}, err
	}
	fields = fields[2:]
	if len(fields) > 0 && !strings.Contains(fields[0], "=") {
		fingerprint = fields[0]
		if err := checkRelayFingerprint(fingerprint); err != nil {
			return "", "", Params{}, err
		}
		fields = fields[1:]
	}
	args := make(map[string][]string)
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return "", "", Params{}, fmt.Errorf("bridge line: %s is not a name=value argument (they come last, after the address and fingerprint)", quote(f))
		}
		args[k] = append(args[k], v)
	}
	if p, err = parseParams(args, w); err != nil {
		return "", "", Params{}, err
	}
	return addr, fingerprint, p, nil
}

// Validate checks Params made in code, with the rules the parsers apply:
// a usable key, a lower-case DNS name or nothing for ServerName (the name
// is sent as written, and browsers send lower case) and a known Fingerprint.
func (p Params) Validate() error {
	w := inParams
	if p.PublicKey == (keys.PublicKey{}) {
		return w.errorf("key", "missing (Params.PublicKey is zero; set it to the bridge's public key)")
	}
	if _, err := keys.ParsePublicKey(p.PublicKey.String()); err != nil {
		return fmt.Errorf("link: %w", err)
	}
	if p.ServerName == "" {
		// No name: nothing more to check.
	} else if err := checkDNSName(p.ServerName); err != nil {
		return w.errorf("sni", "%w", err)
	} else if p.ServerName != strings.ToLower(p.ServerName) {
		return w.errorf("sni", "%s has upper-case letters; write it in lower case, as browsers send it", quote(p.ServerName))
	}
	if p.Fingerprint != "" && !slices.Contains(Fingerprints, p.Fingerprint) {
		return w.errorf("fp", "%s is not one of %s", quote(p.Fingerprint), strings.Join(Fingerprints, ", "))
	}
	if p.Budget != 0 && (p.Budget < MinBudget || p.Budget > MaxBudget) {
		return w.errorf("budget", "%d is outside %d to %d bytes (0 means no budget)", p.Budget, MinBudget, MaxBudget)
	}
	return nil
}

// parseParams reads sni, id, fp, budget, pin and, in a bridge line, key
// from args.
func parseParams(args map[string][]string, w where) (Params, error) {
	known := []string{"sni", "id", "fp", "budget", "pin"}
	if w == inBridgeLine {
		known = []string{"key", "sni", "id", "fp", "budget", "pin"}
	}
	// Checked in a fixed order: map order is random, and the same input
	// should always give the same error.
	var unknown []string
	for name := range args {
		if !slices.Contains(known, name) {
			unknown = append(unknown, quote(name))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		noun := "parameter"
		if len(unknown) > 1 {
			noun += "s"
		}
		return Params{}, fmt.Errorf("%s: unknown %s %s (%s has only %s)",
			w.prefix(), noun, strings.Join(unknown, ", "), w.the(), strings.Join(known, ", "))
	}
	for _, name := range known {
		if n := len(args[name]); n > 1 {
			return Params{}, w.errorf(name, "given %d times; give it once", n)
		}
	}
	get := func(name string) string {
		if vs := args[name]; len(vs) > 0 {
			return vs[0]
		}
		return ""
	}

	var p Params
	if w == inBridgeLine {
		if _, ok := args["key"]; !ok {
			return Params{}, w.errorf("key", "missing (the bridge line must have the bridge's key, key=KEY)")
		}
		k, err := keys.ParsePublicKey(get("key"))
		if err != nil {
			return Params{}, fmt.Errorf("bridge line: %w", err)
		}
		p.PublicKey = k
	}

	// No sni, or an empty one, means no server name: the client sends
	// none. An empty value is what a bridge line gets from a bridge that
	// writes every argument, so it is read as absent rather than refused.
	if sni := get("sni"); sni != "" {
		if err := checkDNSName(sni); err != nil {
			return Params{}, w.errorf("sni", "%w (leave sni out to send no server name, as a browser does for an IP address)", err)
		}
		p.ServerName = strings.ToLower(sni)
	}

	id, err := keys.ParseShortID(get("id"))
	if err != nil {
		return Params{}, fmt.Errorf("%s: %w", w.prefix(), err)
	}
	p.ShortID = id

	fp := strings.ToLower(get("fp"))
	if fp != "" && !slices.Contains(Fingerprints, fp) {
		return Params{}, w.errorf("fp", "%s is not one of %s (leave fp out for %s)", quote(get("fp")), strings.Join(Fingerprints, ", "), DefaultFingerprint)
	}
	p.Fingerprint = canonicalFingerprint(fp)

	if v, ok := args["budget"]; ok {
		b, err := ParseBudget(v[0])
		if err != nil {
			return Params{}, w.errorf("budget", "%w", err)
		}
		p.Budget = b
	}

	pin, err := ParsePin(get("pin"))
	if err != nil {
		return Params{}, fmt.Errorf("%s: %w", w.prefix(), err)
	}
	p.Pin = pin
	return p, nil
}

// ParseBudget reads a carrier budget: a number of bytes, or of KiB with a
// k suffix ("14k" is 14336 bytes), or of MiB with m.
func ParseBudget(s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 || t[0] == '+' {
		return 0, fmt.Errorf("%s is not a size (write it like 14k: bytes per connection, k for KiB)", quote(s))
	}
	if n > MaxBudget/mult {
		return 0, fmt.Errorf("%s is more than %s (leave budget out for no budget)", quote(s), FormatBudget(MaxBudget))
	}
	n *= mult
	if n < MinBudget {
		return 0, fmt.Errorf("%s is less than %s, too little for a TLS handshake and data", quote(s), FormatBudget(MinBudget))
	}
	return n, nil
}

// FormatBudget writes a budget as ParseBudget reads it, in the largest
// unit that divides it.
func FormatBudget(n int) string {
	switch {
	case n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "m"
	case n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "k"
	}
	return strconv.Itoa(n)
}

// canonicalFingerprint spells the default fingerprint "", so that "fp=chrome"
// and no fp at all give equal Params and one canonical text.
func canonicalFingerprint(fp string) string {
	fp = strings.ToLower(fp)
	if fp == DefaultFingerprint {
		return ""
	}
	return fp
}

// parseQuery splits a link's query into its parameters, keeping repeats so
// that parseParams can reject them. Empty pieces ("a=1&&b=2", a trailing
// '&') are skipped, as net/url does.
func parseQuery(q string) (map[string][]string, error) {
	args := make(map[string][]string)
	for _, piece := range strings.Split(q, "&") {
		if piece == "" {
			continue
		}
		k, v, _ := strings.Cut(piece, "=")
		name, err1 := unescape(k)
		value, err2 := unescape(v)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("link: %s has a broken %%-escape (a '%%' must be followed by two hex digits)", quote(piece))
		}
		args[name] = append(args[name], value)
	}
	return args, nil
}

// parseLabel decodes a link's fragment. It refuses control characters and
// invalid UTF-8: a label is shown to the user, and a link from a stranger
// must not be able to put terminal escapes or fake lines on their screen.
func parseLabel(fragment string) (string, error) {
	label, err := unescape(fragment)
	if err != nil {
		return "", errors.New("link: label: has a broken %-escape (a '%' must be followed by two hex digits); remove the label after '#'")
	}
	if !utf8.ValidString(label) {
		return "", errors.New("link: label: is not valid UTF-8 text; remove the label after '#'")
	}
	if strings.IndexFunc(label, unicode.IsControl) >= 0 {
		return "", errors.New("link: label: has control characters; remove the label after '#'")
	}
	return label, nil
}

// parseAddress checks a link's HOST:PORT and returns it in canonical form.
func parseAddress(hostport string, w where) (string, error) {
	host, port, bracketed, err := splitHostPort(hostport, w)
	if err != nil {
		return "", err
	}
	if host == "" {
		return "", w.errorf("host", "missing (the link must say where the bridge is: mirage://KEY@HOST:PORT)")
	}
	if bracketed {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() {
			return "", w.errorf("host", "%s is not an IPv6 address (only IPv6 addresses go in brackets)", quote("["+host+"]"))
		}
		if a.Zone() != "" {
			return "", w.errorf("host", "%s has a zone, which means nothing off this machine; remove the %%zone", quote(host))
		}
		host = a.String()
	} else if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
		host = a.String()
	} else if err := checkDNSName(host); err != nil {
		return "", w.errorf("host", "%w", err)
	} else {
		host = strings.ToLower(host)
	}
	n, err := parsePort(port, w)
	if err != nil {
		return "", err
	}
	return joinHostPort(host, n), nil
}

// parseBridgeAddress checks a bridge line's IP:PORT as tor does: an IP
// address, since tor does not resolve bridge addresses, an IPv6 one in
// brackets, and port 443 when none is given. It returns the address in
// canonical form.
func parseBridgeAddress(s string) (string, error) {
	w := inBridgeLine
	notIP := w.errorf("address", "%s is not IP:PORT (tor needs the bridge's IP address, not a host name; an IPv6 address goes in brackets, [2001:db8::1]:443)", quote(s))
	host, port, v6 := s, "443", strings.HasPrefix(s, "[")
	if v6 {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", notIP
		}
		rest := s[end+1:]
		host = s[1:end]
		switch {
		case rest == "":
		case rest[0] == ':':
			port = rest[1:]
		default:
			return "", notIP
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" || a.Is4() == v6 {
		return "", notIP
	}
	n, err := parsePort(port, w)
	if err != nil {
		return "", err
	}
	return joinHostPort(a.String(), n), nil
}

// splitHostPort is net.SplitHostPort with errors a user can act on.
func splitHostPort(s string, w where) (host, port string, bracketed bool, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false, w.errorf("host", "%s has '[' without ']'", quote(s))
		}
		host, rest := s[1:end], s[end+1:]
		if rest == "" {
			return "", "", false, w.errorf("port", "missing (put it after the host, e.g. %s:443)", s)
		}
		if rest[0] != ':' {
			return "", "", false, w.errorf("port", "%s after ']' is not :PORT", quote(rest))
		}
		return host, rest[1:], true, nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", false, w.errorf("port", "missing (the link must give the bridge's port after the host, e.g. HOST:443)")
	}
	host, port = s[:i], s[i+1:]
	if strings.Contains(host, ":") {
		return "", "", false, w.errorf("host", "%s looks like an IPv6 address without brackets; write it as [2001:db8::1]:443", quote(s))
	}
	return host, port, false, nil
}

// parsePort reads a decimal port, 1 to 65535. strconv.Atoi alone would
// also take "+443".
func parsePort(s string, w where) (int, error) {
	if s == "" {
		return 0, w.errorf("port", "missing (give the bridge's port after ':', e.g. :443)")
	}
	bad := w.errorf("port", "%s is not a port number from 1 to 65535", quote(s))
	if len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, bad
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, bad
	}
	return n, nil
}

// joinHostPort is net.JoinHostPort, which this package does not otherwise
// need net for.
func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}

// checkRelayFingerprint checks a bridge line's relay fingerprint: the hex
// SHA-1 tor uses to make sure it reached the right relay.
func checkRelayFingerprint(fp string) error {
	const field = "fingerprint"
	if strings.HasPrefix(fp, "<") {
		return inBridgeLine.errorf(field, "%s is a placeholder; replace it with the bridge relay's fingerprint (40 hex digits), or leave it out", quote(fp))
	}
	if len(fp) != 40 || strings.Trim(fp, "0123456789abcdefABCDEF") != "" {
		return inBridgeLine.errorf(field, "%s is not 40 hex digits (the relay fingerprint comes right after the address; it may be left out)", quote(fp))
	}
	return nil
}

// checkDNSName checks that s is a host name a browser would send as SNI:
// letters, digits and hyphens in dot-separated labels of 1 to 63
// characters, 253 in all, not starting or ending with a hyphen. An IP
// address is refused: browsers never put one in SNI (RFC 6066 forbids it),
// so sending one would mark the connection.
func checkDNSName(s string) error {
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return fmt.Errorf("%s is an IP address; browsers never send one as the server name, so give a DNS name", quote(s))
	}
	if strings.HasSuffix(s, ".") && len(s) > 1 {
		return fmt.Errorf("%s ends in a dot; remove it (browsers send names without it)", quote(s))
	}
	if len(s) > 253 {
		return fmt.Errorf("%s is %d characters, more than the 253 of the longest DNS name", quote(s), len(s))
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		switch {
		case l == "":
			return fmt.Errorf("%s has an empty label (a leading dot or two dots in a row)", quote(s))
		case len(l) > 63:
			return fmt.Errorf("%s has a label of %d characters, more than the 63 DNS allows", quote(s), len(l))
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Errorf("%s has a label starting or ending with '-', which DNS names cannot have", quote(s))
		}
		for _, r := range l {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			case r >= utf8.RuneSelf:
				return fmt.Errorf("%s has non-ASCII characters; write an international name in its xn-- (punycode) form", quote(s))
			default:
				return fmt.Errorf("%s has %q, which DNS names cannot have (only letters, digits, '-' and '.')", quote(s), r)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("%s is not a DNS name (its last label is all digits)", quote(s))
	}
	return nil
}

// escape percent-encodes every byte but RFC 3986's unreserved characters,
// which is valid in a query value and in a fragment, and leaves nothing for
// a mail client or a messenger to reinterpret (spaces, '#', '&', non-ASCII).
func escape(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// unescape decodes %XX escapes. Unlike url.QueryUnescape it leaves '+'
// alone: no Mirage value has one, and String never writes one, so the
// round trip does not depend on which rule a sender's tool followed.
func unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("truncated escape")
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", errors.New("bad escape")
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	return string(b), nil
}

// unhex is the value of one hex digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// quote quotes user input for an error message, cut short so that a huge
// paste does not become a huge message.
func quote(s string) string {
	const limit = 64
	if len(s) <= limit {
		return strconv.Quote(s)
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}
