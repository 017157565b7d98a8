package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Every smux stream starts with a request from the client and a reply from
// the server, before any data (PROTOCOL.md, "Streams"):
//
//	request = version(1) = 0x01 | command(1) | address (CONNECT only)
//	address = type(1) | addr | port(2, BE)
//	          type 0x01: IPv4, 4 bytes; 0x03: domain, len(1) + 1..255 bytes; 0x04: IPv6, 16 bytes
//	reply   = version(1) = 0x01 | status(1)
//
// The address encoding and the status codes are SOCKS5's (RFC 1928), so the
// client can pass a server's answer to a SOCKS application unchanged.

const requestVersion = 1

// Command says what a stream is for.
type Command byte

// Commands a client may request.
const (
	CmdConnect Command = 0x01 // a TCP connection to Request.Addr
	CmdDefault Command = 0x02 // the server's default target (tor's ORPort in PT mode, -forward)
	CmdUDP     Command = 0x03 // a UDP relay: datagrams framed by WriteDatagram/ReadDatagram
)

// String names the command, for logs.
func (c Command) String() string {
	switch c {
	case CmdConnect:
		return "connect"
	case CmdDefault:
		return "default"
	case CmdUDP:
		return "udp"
	}
	return fmt.Sprintf("command(%#x)", byte(c))
}

// Address types, as in SOCKS5 (RFC 1928 ATYP).
const (
	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// The address codec (Addr.AppendBinary, ReadAddr) is the one SOCKS5
// address encoding of the module: stream requests, UDP datagram frames,
// the local proxy's SOCKS5 requests and UDP headers, and the upstream
// SOCKS5 proxy dialer all use it, so a fix (such as decoding IPv4-mapped
// IPv6 as IPv4) lands everywhere at once.

// MaxAddrLen is the longest encoded address: type, length, 255-byte domain, port.
const MaxAddrLen = 1 + 1 + 255 + 2

// Addr is a destination: a domain name or an IP address, and a port.
type Addr struct {
	Host string // domain name, or an IP literal (without brackets)
	Port uint16
}

// ParseAddr parses "host:port".
func ParseAddr(hostport string) (Addr, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return Addr{}, fmt.Errorf("transport: address %q: %w", hostport, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("transport: address %q: bad port", hostport)
	}
	a := Addr{Host: host, Port: uint16(p)}
	if _, err := a.AppendBinary(nil); err != nil {
		return Addr{}, err
	}
	return a, nil
}

// String returns "host:port", with IPv6 literals in brackets.
func (a Addr) String() string {
	return net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port)))
}

// AppendBinary appends the SOCKS5 encoding of a (ATYP | ADDR | PORT) to
// b: an IP literal as IPv4 or IPv6 (an IPv4-mapped IPv6 address as IPv4),
// anything else as a domain name of 1 to 255 bytes. An IP literal with a
// zone is encoded as a name, since the wire has no room for a zone.
func (a Addr) AppendBinary(b []byte) ([]byte, error) {
	if ip, err := netip.ParseAddr(a.Host); err == nil && ip.Zone() == "" {
		if ip.Is4() || ip.Is4In6() {
			v4 := ip.Unmap().As4()
			b = append(append(b, atypIPv4), v4[:]...)
		} else {
			v6 := ip.As16()
			b = append(append(b, atypIPv6), v6[:]...)
		}
	} else {
		if len(a.Host) == 0 || len(a.Host) > 255 {
			return nil, fmt.Errorf("transport: host name of %d bytes (must be 1 to 255)", len(a.Host))
		}
		b = append(append(b, atypDomain, byte(len(a.Host))), a.Host...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// ReadAddr reads one SOCKS5-encoded address (ATYP | ADDR | PORT) from r.
// It reads no more than the address, and at most MaxAddrLen bytes. An
// IPv4-mapped IPv6 address comes back as IPv4, and an IP literal sent as
// a name as that IP, so that each destination has one spelling. An
// unknown address type or an empty host name is a *StatusError carrying
// the status to answer with (SOCKS5 and stream replies use the same
// codes); any other error is the reader's.
func ReadAddr(r io.Reader) (Addr, error) {
	var buf [MaxAddrLen]byte
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return Addr{}, err
	}
	var host string
	switch buf[0] {
	case atypIPv4:
		if _, err := io.ReadFull(r, buf[:4+2]); err != nil {
			return Addr{}, err
		}
		host = netip.AddrFrom4([4]byte(buf[:4])).String()
		return Addr{Host: host, Port: binary.BigEndian.Uint16(buf[4:])}, nil
	case atypIPv6:
		if _, err := io.ReadFull(r, buf[:16+2]); err != nil {
			return Addr{}, err
		}
		// An IPv4-mapped address is an IPv4 address: decode it as one,
		// so policy checks see one form only (found by FuzzReadRequest).
		host = netip.AddrFrom16([16]byte(buf[:16])).Unmap().String()
		return Addr{Host: host, Port: binary.BigEndian.Uint16(buf[16:])}, nil
	case atypDomain:
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			return Addr{}, err
		}
		n := int(buf[0])
		if n == 0 {
			return Addr{}, &StatusError{Status: StatusGeneralFailure, Msg: "empty host name"}
		}
		if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
			return Addr{}, err
		}
		host = string(buf[:n])
		// An IP literal sent as a name is that IP: decode it in the one
		// spelling the other types give ("0::" is "::", a mapped IPv4
		// address is IPv4), as AppendBinary encodes it as an IP (found
		// by FuzzReadDatagram). With a zone it stays a name.
		if ip, err := netip.ParseAddr(host); err == nil && ip.Zone() == "" {
			host = ip.Unmap().String()
		}
		return Addr{Host: host, Port: binary.BigEndian.Uint16(buf[n:])}, nil
	}
	return Addr{}, &StatusError{Status: StatusAddrTypeNotSupported, Msg: fmt.Sprintf("address type %#x", buf[0])}
}

// Request is what a client asks of a stream.
type Request struct {
	Command Command
	Addr    Addr // for CmdConnect; empty otherwise
}

// String describes the request, for debugging. It names the destination:
// do not log it where destinations must stay private.
func (r Request) String() string {
	if r.Command == CmdConnect {
		return "connect " + r.Addr.String()
	}
	return r.Command.String()
}

// MarshalBinary returns the wire encoding of r.
func (r Request) MarshalBinary() ([]byte, error) {
	b := []byte{requestVersion, byte(r.Command)}
	switch r.Command {
	case CmdConnect:
		return r.Addr.AppendBinary(b)
	case CmdDefault, CmdUDP:
		return b, nil
	}
	return nil, fmt.Errorf("transport: unknown command %#x", byte(r.Command))
}

// ReadRequest reads one request from r, reading no byte past it. An
// unsupported version, command or address type is a *StatusError carrying
// the status to reply with.
func ReadRequest(r io.Reader) (Request, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("transport: reading request: %w", err)
	}
	if hdr[0] != requestVersion {
		return Request{}, &StatusError{Status: StatusGeneralFailure, Msg: fmt.Sprintf("request version %d", hdr[0])}
	}
	req := Request{Command: Command(hdr[1])}
	switch req.Command {
	case CmdConnect:
		a, err := ReadAddr(r)
		if err != nil {
			return Request{}, fmt.Errorf("transport: reading request address: %w", err)
		}
		req.Addr = a
	case CmdDefault, CmdUDP:
	default:
		return Request{}, &StatusError{Status: StatusCommandNotSupported, Msg: req.Command.String()}
	}
	return req, nil
}

// Status is the server's answer to a request. The values are SOCKS5 reply codes.
type Status byte

// Statuses a server may reply with.
const (
	StatusOK                   Status = 0x00
	StatusGeneralFailure       Status = 0x01
	StatusNotAllowed           Status = 0x02 // refused by the server's egress policy
	StatusNetworkUnreachable   Status = 0x03
	StatusHostUnreachable      Status = 0x04 // includes "no such host"
	StatusConnectionRefused    Status = 0x05
	StatusTimeout              Status = 0x06 // SOCKS5 calls it "TTL expired"
	StatusCommandNotSupported  Status = 0x07
	StatusAddrTypeNotSupported Status = 0x08
)

// String says what the status means, in words a user can act on.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusGeneralFailure:
		return "general failure"
	case StatusNotAllowed:
		return "not allowed by the bridge's policy"
	case StatusNetworkUnreachable:
		return "network unreachable"
	case StatusHostUnreachable:
		return "host unreachable"
	case StatusConnectionRefused:
		return "connection refused"
	case StatusTimeout:
		return "timed out"
	case StatusCommandNotSupported:
		return "command not supported"
	case StatusAddrTypeNotSupported:
		return "address type not supported"
	}
	return fmt.Sprintf("status(%#x)", byte(s))
}

// StatusError is a request the server did not carry out, with the reason.
type StatusError struct {
	Status Status
	Msg    string // detail, may be empty
}

// Error says what the bridge answered.
func (e *StatusError) Error() string {
	if e.Msg == "" {
		return "transport: bridge answered: " + e.Status.String()
	}
	return "transport: bridge answered: " + e.Status.String() + " (" + e.Msg + ")"
}

func marshalReply(s Status) []byte { return []byte{requestVersion, byte(s)} }

// readReply reads the server's reply; a status other than OK is a *StatusError.
func readReply(r io.Reader) error {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("transport: reading the bridge's reply: %w", err)
	}
	if b[0] != requestVersion {
		return fmt.Errorf("transport: reply version %d from bridge, want %d", b[0], requestVersion)
	}
	if s := Status(b[1]); s != StatusOK {
		return &StatusError{Status: s}
	}
	return nil
}

// UDP relay streams carry datagrams, each framed as
//
//	length(2, BE) | address | payload
//
// where length counts address and payload. Client to server, the address is
// the destination; server to client, it is the source.

// MaxDatagramLen bounds the framed length of a datagram (address + payload).
const MaxDatagramLen = 65535

// WriteDatagram writes one framed datagram to w in a single Write.
func WriteDatagram(w io.Writer, addr Addr, payload []byte) error {
	b, err := AppendDatagram(make([]byte, 0, 2+MaxAddrLen+len(payload)), addr, payload)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// AppendDatagram appends one framed datagram to b. It fails, appending
// nothing, when the address cannot be encoded or the frame would be
// longer than MaxDatagramLen: a datagram can be, as the address takes its
// binary form here (an IPv6 literal that came as a name grows by 13
// bytes), and a sender drops such a datagram, as a router drops what it
// cannot forward.
func AppendDatagram(b []byte, addr Addr, payload []byte) ([]byte, error) {
	start := len(b)
	out, err := addr.AppendBinary(append(b, 0, 0))
	if err != nil {
		return b, err
	}
	out = append(out, payload...)
	if n := len(out) - start - 2; n > MaxDatagramLen {
		return b, fmt.Errorf("transport: a datagram of %d bytes is %d bytes framed, more than a frame holds (%d)", len(payload), n, MaxDatagramLen)
	}
	binary.BigEndian.PutUint16(out[start:], uint16(len(out)-start-2))
	return out, nil
}

// ReadDatagram reads one framed datagram from r into buf, which should be at
// least MaxDatagramLen+2 bytes; it returns the address and the payload (a
// slice of buf).
func ReadDatagram(r io.Reader, buf []byte) (Addr, []byte, error) {
	if len(buf) < 2+MaxDatagramLen {
		return Addr{}, nil, errors.New("transport: datagram buffer too small")
	}
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return Addr{}, nil, err
	}
	n := int(binary.BigEndian.Uint16(buf))
	frame := buf[2 : 2+n]
	if _, err := io.ReadFull(r, frame); err != nil {
		return Addr{}, nil, fmt.Errorf("transport: truncated datagram: %w", err)
	}
	fr := &sliceReader{b: frame}
	addr, err := ReadAddr(fr)
	if err != nil {
		return Addr{}, nil, fmt.Errorf("transport: datagram address: %w", err)
	}
	return addr, fr.b, nil
}

// sliceReader reads from a byte slice and leaves the rest in b.
type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}
