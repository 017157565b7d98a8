package hello

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// KeyShare is one entry of the key_share extension.
type KeyShare struct {
	Group uint16 // named group, e.g. 0x001d for x25519
	Data  []byte // key_exchange bytes; aliases ClientHello.Raw
}

// Extension is one extension in wire order.
type Extension struct {
	Type uint16
	Data []byte // extension_data without its length; aliases ClientHello.Raw
}

// ClientHello is a parsed ClientHello. Slices alias Raw, so a caller that
// wants to change Raw must copy first (see AuthData).
type ClientHello struct {
	Raw                []byte // the handshake message as given to Parse (4-byte header + body)
	LegacyVersion      uint16
	Random             []byte // 32 bytes
	SessionID          []byte // 0..32 bytes
	SessionIDOffset    int    // offset of the session_id bytes within Raw (so callers can zero them)
	CipherSuites       []uint16
	CompressionMethods []byte
	// Extensions holds every extension in wire order. It is nil when the
	// hello has no extensions block at all (legal before TLS 1.3) and
	// non-nil, possibly empty, when the block is present.
	Extensions        []Extension
	ServerName        string     // host_name from server_name (0x0000) as sent, "" if absent
	ALPN              []string   // from application_layer_protocol_negotiation (0x0010)
	SupportedVersions []uint16   // from supported_versions (0x002b)
	KeyShares         []KeyShare // from key_share (0x0033)
	// BindersOffset is where the binders of pre_shared_key (0x0029)
	// begin in Raw, their 2-byte list length included; 0 when the hello
	// offers no PSK. The extension is the last one (RFC 8446, section
	// 4.2.11) and the binders its last field, so they run to the end of
	// Raw.
	BindersOffset int
}

// Parse parses a ClientHello handshake message (4-byte header + body). It
// is strict: any length field that overruns, trailing bytes anywhere
// (message body, extension block, inside the extensions it decodes),
// duplicate extension types, session_id longer than 32, empty cipher suites
// or compression list, a server_name list with no host_name or an invalid
// one, or a malformed extension it decodes is an error. Unknown extensions
// are kept as raw Extension entries without decoding. It never panics on
// any input.
//
// Strictness matters because the bridge authenticates the exact bytes: a
// hello that a real TLS server would reject must not authenticate, and
// leniency would let two different readings of the same bytes disagree.
func Parse(msg []byte) (*ClientHello, error) {
	c := cursor{b: msg}
	typ, err := c.u8("handshake type")
	if err != nil {
		return nil, err
	}
	if typ != handshakeClientHello {
		return nil, fmt.Errorf("hello: handshake type %d, want client_hello (1)", typ)
	}
	bodyLen, err := c.u24("handshake length")
	if err != nil {
		return nil, err
	}
	if bodyLen != c.left() {
		return nil, fmt.Errorf("hello: handshake length %d, but the message has %d body bytes", bodyLen, c.left())
	}

	h := &ClientHello{Raw: msg}
	if h.LegacyVersion, err = c.u16("legacy_version"); err != nil {
		return nil, err
	}
	if h.Random, err = c.bytes(randomLen, "random"); err != nil {
		return nil, err
	}

	sidLen, err := c.u8("session_id length")
	if err != nil {
		return nil, err
	}
	if sidLen > maxSessionIDLen {
		return nil, fmt.Errorf("hello: session_id length %d exceeds %d", sidLen, maxSessionIDLen)
	}
	// The cursor runs over msg itself, so its offset is an offset in Raw.
	h.SessionIDOffset = c.off
	if h.SessionID, err = c.bytes(sidLen, "session_id"); err != nil {
		return nil, err
	}

	suites, err := c.vec16("cipher_suites")
	if err != nil {
		return nil, err
	}
	if len(suites) == 0 {
		return nil, errors.New("hello: empty cipher_suites")
	}
	if len(suites)%2 != 0 {
		return nil, fmt.Errorf("hello: cipher_suites length %d is odd", len(suites))
	}
	h.CipherSuites = make([]uint16, len(suites)/2)
	for i := range h.CipherSuites {
		h.CipherSuites[i] = binary.BigEndian.Uint16(suites[2*i:])
	}

	if h.CompressionMethods, err = c.vec8("compression_methods"); err != nil {
		return nil, err
	}
	if len(h.CompressionMethods) == 0 {
		return nil, errors.New("hello: empty compression_methods")
	}

	// Before TLS 1.3 the extensions block may be absent altogether
	// (RFC 5246, section 7.4.1.2), which is told by the body ending here.
	if c.left() == 0 {
		return h, nil
	}
	exts, err := c.vec16("extensions")
	if err != nil {
		return nil, err
	}
	if c.left() != 0 {
		return nil, fmt.Errorf("hello: %d trailing bytes after extensions", c.left())
	}
	if err := h.parseExtensions(exts); err != nil {
		return nil, err
	}
	return h, nil
}

// parseExtensions splits the extensions block and decodes the extensions
// the bridge looks at.
func (h *ClientHello) parseExtensions(block []byte) error {
	c := cursor{b: block}
	// Each extension takes at least 4 bytes; sizing for that avoids
	// regrowing without letting a hostile length allocate much.
	h.Extensions = make([]Extension, 0, len(block)/4)
	seen := make(map[uint16]bool)
	for c.left() > 0 {
		typ, err := c.u16("extension type")
		if err != nil {
			return err
		}
		data, err := c.vec16("extension data")
		if err != nil {
			return fmt.Errorf("%w (extension 0x%04x)", err, typ)
		}
		// RFC 8446, section 4.2: there MUST NOT be more than one extension
		// of the same type. Allowing it would also leave "which one did we
		// read" open between us and the server we may hand the bytes to.
		if seen[typ] {
			return fmt.Errorf("hello: duplicate extension 0x%04x", typ)
		}
		seen[typ] = true
		h.Extensions = append(h.Extensions, Extension{Type: typ, Data: data})

		switch typ {
		case extServerName:
			err = h.parseServerName(data)
		case extALPN:
			err = h.parseALPN(data)
		case extSupportedVersions:
			err = h.parseSupportedVersions(data)
		case extKeyShare:
			err = h.parseKeyShare(data)
		case extPreSharedKey:
			// RFC 8446, section 4.2.11: it MUST be the last extension;
			// a TLS server refuses a hello where it is not.
			if c.left() != 0 {
				return errors.New("hello: pre_shared_key is not the last extension")
			}
			err = h.parsePreSharedKey(data)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseServerName decodes server_name (RFC 6066, section 3).
func (h *ClientHello) parseServerName(data []byte) error {
	c := cursor{b: data}
	list, err := c.vec16("server_name list")
	if err != nil {
		return err
	}
	if c.left() != 0 {
		return fmt.Errorf("hello: %d trailing bytes in server_name", c.left())
	}
	if len(list) == 0 {
		return errors.New("hello: empty server_name list")
	}
	l := cursor{b: list}
	found := false
	for l.left() > 0 {
		nameType, err := l.u8("server_name type")
		if err != nil {
			return err
		}
		// Only host_name (0) is defined. Every other type has been given
		// the same opaque<1..2^16-1> shape in practice (crypto/tls and
		// BoringSSL read it so), which is what lets the list be walked.
		name, err := l.vec16("server_name")
		if err != nil {
			return err
		}
		if nameType != serverNameTypeHost {
			continue
		}
		// RFC 6066: the list MUST NOT contain more than one name of the
		// same name_type.
		if found {
			return errors.New("hello: more than one host_name in server_name")
		}
		found = true
		if err := checkHostName(name); err != nil {
			return err
		}
		h.ServerName = string(name)
	}
	if !found {
		return errors.New("hello: server_name has no host_name")
	}
	return nil
}

// checkHostName accepts a DNS name as RFC 6066 allows it in server_name:
// ASCII, no trailing dot, not an IP address literal. Labels may hold
// letters, digits, '-' and '_' (the last is not a hostname character but
// does occur in names people serve HTTPS under).
func checkHostName(name []byte) error {
	if len(name) == 0 || len(name) > maxHostNameLen {
		return fmt.Errorf("hello: host_name length %d not in 1..%d", len(name), maxHostNameLen)
	}
	label := 0
	for i, b := range name {
		switch {
		case b == '.':
			if label == 0 {
				return fmt.Errorf("hello: host_name %q has an empty label", name)
			}
			label = 0
			continue
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '-', b == '_':
		default:
			return fmt.Errorf("hello: host_name has byte 0x%02x at %d", b, i)
		}
		label++
		if label > maxHostNameLabelLen {
			return fmt.Errorf("hello: host_name %q has a label over %d bytes", name, maxHostNameLabelLen)
		}
	}
	if label == 0 { // trailing dot
		return fmt.Errorf("hello: host_name %q has an empty label", name)
	}
	// IPv6 literals already failed on ':'; an IPv4 one passes the
	// character check, so it is looked for separately.
	if _, err := netip.ParseAddr(string(name)); err == nil {
		return fmt.Errorf("hello: host_name %q is an IP address", name)
	}
	return nil
}

// parseALPN decodes application_layer_protocol_negotiation (RFC 7301,
// section 3.1): a non-empty list of non-empty protocol names.
func (h *ClientHello) parseALPN(data []byte) error {
	c := cursor{b: data}
	list, err := c.vec16("ALPN list")
	if err != nil {
		return err
	}
	if c.left() != 0 {
		return fmt.Errorf("hello: %d trailing bytes in ALPN", c.left())
	}
	if len(list) == 0 {
		return errors.New("hello: empty ALPN list")
	}
	l := cursor{b: list}
	for l.left() > 0 {
		name, err := l.vec8("ALPN protocol")
		if err != nil {
			return err
		}
		if len(name) == 0 {
			return errors.New("hello: empty ALPN protocol name")
		}
		h.ALPN = append(h.ALPN, string(name))
	}
	return nil
}

// parseSupportedVersions decodes supported_versions as a ClientHello
// carries it (RFC 8446, section 4.2.1): versions<2..254>.
func (h *ClientHello) parseSupportedVersions(data []byte) error {
	c := cursor{b: data}
	list, err := c.vec8("supported_versions list")
	if err != nil {
		return err
	}
	if c.left() != 0 {
		return fmt.Errorf("hello: %d trailing bytes in supported_versions", c.left())
	}
	if len(list) == 0 || len(list)%2 != 0 {
		return fmt.Errorf("hello: supported_versions length %d is not a positive even number", len(list))
	}
	h.SupportedVersions = make([]uint16, len(list)/2)
	for i := range h.SupportedVersions {
		h.SupportedVersions[i] = binary.BigEndian.Uint16(list[2*i:])
	}
	return nil
}

// parseKeyShare decodes key_share as a ClientHello carries it (RFC 8446,
// section 4.2.8). An empty list is legal: the client then asks for a
// HelloRetryRequest.
func (h *ClientHello) parseKeyShare(data []byte) error {
	c := cursor{b: data}
	list, err := c.vec16("key_share list")
	if err != nil {
		return err
	}
	if c.left() != 0 {
		return fmt.Errorf("hello: %d trailing bytes in key_share", c.left())
	}
	l := cursor{b: list}
	seen := make(map[uint16]bool)
	for l.left() > 0 {
		group, err := l.u16("key_share group")
		if err != nil {
			return err
		}
		key, err := l.vec16("key_exchange")
		if err != nil {
			return fmt.Errorf("%w (key_share 0x%04x)", err, group)
		}
		if len(key) == 0 {
			return fmt.Errorf("hello: empty key_share 0x%04x", group)
		}
		// RFC 8446: clients MUST NOT offer more than one share for a
		// group. KeyShare returns one share per group, so a second one
		// would be a share the bridge never looked at. (A map, not a scan
		// of KeyShares: a 64 KiB hello holds thousands of shares, and a
		// quadratic check would be a cheap way to burn the bridge's CPU.)
		if seen[group] {
			return fmt.Errorf("hello: duplicate key_share 0x%04x", group)
		}
		seen[group] = true
		h.KeyShares = append(h.KeyShares, KeyShare{Group: group, Data: key})
	}
	return nil
}

// parsePreSharedKey checks pre_shared_key as a ClientHello carries it
// (RFC 8446, section 4.2.11) and records where its binders begin. Its
// data is the tail of Raw (the caller checked that it is the last
// extension).
func (h *ClientHello) parsePreSharedKey(data []byte) error {
	c := cursor{b: data}
	ids, err := c.vec16("psk identities")
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return errors.New("hello: no psk identity")
	}
	for l := (cursor{b: ids}); l.left() > 0; {
		id, err := l.vec16("psk identity")
		if err != nil {
			return err
		}
		if len(id) == 0 {
			return errors.New("hello: empty psk identity")
		}
		if _, err := l.bytes(4, "obfuscated_ticket_age"); err != nil {
			return err
		}
	}
	bindersAt := c.off
	binders, err := c.vec16("psk binders")
	if err != nil {
		return err
	}
	if c.left() != 0 {
		return fmt.Errorf("hello: %d trailing bytes in pre_shared_key", c.left())
	}
	n := 0
	for l := (cursor{b: binders}); l.left() > 0; n++ {
		b, err := l.vec8("psk binder")
		if err != nil {
			return err
		}
		if len(b) < minBinderLen {
			return fmt.Errorf("hello: psk binder of %d bytes, shorter than %d", len(b), minBinderLen)
		}
	}
	if n == 0 {
		return errors.New("hello: no psk binder")
	}
	h.BindersOffset = len(h.Raw) - (len(data) - bindersAt)
	return nil
}

// KeyShare returns the data of the key share for group, and whether it is
// present. The data aliases Raw.
func (h *ClientHello) KeyShare(group uint16) ([]byte, bool) {
	for _, ks := range h.KeyShares {
		if ks.Group == group {
			return ks.Data, true
		}
	}
	return nil, false
}

// AuthData returns a copy of Raw with the session_id bytes set to zero
// and, when the hello offers a PSK, the binders too (from BindersOffset
// to the end): the associated data the authentication tag, which travels
// in the session_id, is sealed over. The binders are left out because
// they are a MAC over the hello with its session_id, so they can only be
// computed once the tag is in. Raw itself is left untouched.
func (h *ClientHello) AuthData() []byte {
	out := make([]byte, len(h.Raw))
	copy(out, h.Raw)
	clear(out[h.SessionIDOffset : h.SessionIDOffset+len(h.SessionID)])
	if h.BindersOffset > 0 {
		clear(out[h.BindersOffset:])
	}
	return out
}

// cursor reads big-endian fields off b. Every read checks the length first,
// which is what keeps Parse panic-free on hostile input; the what argument
// names the field in the error.
type cursor struct {
	b   []byte
	off int
}

// left returns the number of unread bytes.
func (c *cursor) left() int { return len(c.b) - c.off }

// bytes returns the next n bytes, aliasing b.
func (c *cursor) bytes(n int, what string) ([]byte, error) {
	if n < 0 || n > c.left() {
		return nil, fmt.Errorf("hello: %s: need %d bytes, %d left", what, n, c.left())
	}
	// The three-index slice caps the result so that an append by a caller
	// cannot overwrite the bytes that follow it in Raw.
	out := c.b[c.off : c.off+n : c.off+n]
	c.off += n
	return out, nil
}

// u8 reads a one-byte integer.
func (c *cursor) u8(what string) (int, error) {
	b, err := c.bytes(1, what)
	if err != nil {
		return 0, err
	}
	return int(b[0]), nil
}

// u16 reads a two-byte integer.
func (c *cursor) u16(what string) (uint16, error) {
	b, err := c.bytes(2, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint16(b), nil
}

// u24 reads a three-byte integer.
func (c *cursor) u24(what string) (int, error) {
	b, err := c.bytes(3, what)
	if err != nil {
		return 0, err
	}
	return int(b[0])<<16 | int(b[1])<<8 | int(b[2]), nil
}

// vec8 reads a vector with a one-byte length prefix.
func (c *cursor) vec8(what string) ([]byte, error) {
	n, err := c.u8(what + " length")
	if err != nil {
		return nil, err
	}
	return c.bytes(n, what)
}

// vec16 reads a vector with a two-byte length prefix.
func (c *cursor) vec16(what string) ([]byte, error) {
	n, err := c.u16(what + " length")
	if err != nil {
		return nil, err
	}
	return c.bytes(int(n), what)
}
