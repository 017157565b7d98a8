// Package hello reads and parses a TLS ClientHello the way a Mirage bridge
// needs to: without answering it, and without consuming a byte the real web
// server behind the bridge would not have consumed itself.
//
// ReadClientHello takes records off a connection up to the end of the first
// handshake message and returns every byte it read, so that a peer that is
// not a Mirage client can be handed, bytes and all, to another server.
// Parse decodes that message strictly and purely; it never panics, so it
// can be fed whatever an active prober sends.
//
// The limits follow transport/PROTOCOL.md, section 2.1.
package hello

import "errors"

const (
	// RecordHeaderLen is the length of a TLS record header: content type
	// (1), legacy record version (2) and payload length (2).
	RecordHeaderLen = 5

	// MaxRecordPayload is the largest plaintext record payload TLS allows
	// (RFC 8446, section 5.1). A longer record is refused rather than read,
	// so a prober cannot make the bridge buffer more than a real TLS server
	// would.
	MaxRecordPayload = 1 << 14

	// MaxHelloLen bounds the ClientHello handshake message (4-byte header
	// plus body) that ReadClientHello accepts. Real hellos, even with
	// post-quantum key shares, are a few kilobytes; the bound caps the
	// memory one unauthenticated connection can pin.
	MaxHelloLen = 1 << 16
)

// handshakeHeaderLen is the length of a handshake message header: type (1)
// and 24-bit body length (3).
const handshakeHeaderLen = 4

// Wire constants from RFC 8446.
const (
	recordTypeHandshake   = 0x16
	handshakeClientHello  = 0x01
	extServerName         = 0x0000
	extALPN               = 0x0010
	extSupportedVersions  = 0x002b
	extKeyShare           = 0x0033
	extPreSharedKey       = 0x0029
	minBinderLen          = 32 // RFC 8446, section 4.2.11: PskBinderEntry<32..255>
	serverNameTypeHost    = 0x00
	maxSessionIDLen       = 32
	randomLen             = 32
	maxHostNameLen        = 253 // longest DNS name in text form, without a trailing dot
	maxHostNameLabelLen   = 63
	recordVersionMajorTLS = 0x03
)

// ErrNotTLS is wrapped by ReadClientHello's error when the stream does not
// start with a TLS handshake record: the first byte is not 0x16, or the first
// record's version is not 3.x. It lets a caller tell a peer that does not
// speak TLS at all (an HTTP prober, a port scanner) from a malformed or
// foreign ClientHello.
var ErrNotTLS = errors.New("hello: not a TLS handshake record")
