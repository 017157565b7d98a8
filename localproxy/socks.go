package localproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// SOCKS5 (RFC 1928) with optional user/password authentication (RFC 1929):
//
//	greeting   app:   VER=5 | NMETHODS | METHODS...
//	           proxy: VER=5 | METHOD (0xFF: none acceptable, then close)
//	user/pass  app:   VER=1 | ULEN | UNAME | PLEN | PASSWD
//	           proxy: VER=1 | STATUS (0 = ok; otherwise close)
//	request    app:   VER=5 | CMD | RSV | ATYP | DST.ADDR | DST.PORT
//	reply      proxy: VER=5 | REP | RSV | ATYP | BND.ADDR | BND.PORT
//
// ATYP is 1 (IPv4, 4 bytes), 3 (domain: length byte, 1 to 255 bytes) or 4
// (IPv6, 16 bytes); the port is big-endian. These are the encodings and
// REP codes the tunnel's own stream requests use (transport/PROTOCOL.md
// §7), so a bridge's status reaches the app unchanged.

// SOCKS5 protocol constants.
const (
	socksVersion     = 0x05
	userPassVersion  = 0x01 // RFC 1929 subnegotiation version
	methodNoAuth     = 0x00
	methodUserPass   = 0x02
	methodNoneOK     = 0xFF
	userPassOK       = 0x00
	userPassRejected = 0x01

	socksCmdConnect = 0x01
	socksCmdBind    = 0x02
	socksCmdUDP     = 0x03

	socksAtypIPv4   = 0x01
	socksAtypDomain = 0x03
	socksAtypIPv6   = 0x04
)

// SOCKS5 reply codes we send of our own; the bridge's statuses are the
// same numbers (transport.Status).
const (
	repSucceeded           = byte(transport.StatusOK)
	repGeneralFailure      = byte(transport.StatusGeneralFailure)
	repCommandNotSupported = byte(transport.StatusCommandNotSupported)
	repAddrNotSupported    = byte(transport.StatusAddrTypeNotSupported)
)

// socksRequest is a parsed SOCKS5 request.
type socksRequest struct {
	cmd  byte
	addr transport.Addr
}

// socksError is a request the proxy answers with a failure reply (rep)
// before closing, rather than closing at once.
type socksError struct {
	rep byte
	msg string
}

func (e *socksError) Error() string { return "socks5: " + e.msg }

// readSOCKSRequest reads one SOCKS5 request from r, and no byte past it.
// A request the proxy should answer with a failure reply is a *socksError;
// any other error means the peer does not speak SOCKS5 and gets no reply.
func readSOCKSRequest(r io.Reader) (socksRequest, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return socksRequest{}, fmt.Errorf("socks5: reading request: %w", err)
	}
	if hdr[0] != socksVersion {
		return socksRequest{}, fmt.Errorf("socks5: request version %d", hdr[0])
	}
	// hdr[2] is RSV; RFC 1928 says 0, but nothing depends on it, so
	// other values are let through as most servers do.
	addr, err := readSOCKSAddr(r)
	if err != nil {
		return socksRequest{}, err
	}
	return socksRequest{cmd: hdr[1], addr: addr}, nil
}

// readSOCKSAddr reads ATYP | ADDR | PORT with the module's one address
// codec (transport.ReadAddr), so an IPv4-mapped IPv6 address is IPv4
// here as on the bridge. It reads at most transport.MaxAddrLen bytes. An
// address to answer with a failure reply is a *socksError.
func readSOCKSAddr(r io.Reader) (transport.Addr, error) {
	a, err := transport.ReadAddr(r)
	var se *transport.StatusError
	switch {
	case errors.As(err, &se):
		return transport.Addr{}, &socksError{rep: byte(se.Status), msg: se.Msg}
	case err != nil:
		return transport.Addr{}, fmt.Errorf("socks5: reading address: %w", err)
	}
	return a, nil
}

// socksReply returns a reply with code rep and the bound address bnd (the
// zero AddrPort means 0.0.0.0:0, which is what CONNECT replies carry:
// apps do not use it, and the bridge's side of the connection is not
// ours to tell).
func socksReply(rep byte, bnd netip.AddrPort) []byte {
	b := []byte{socksVersion, rep, 0}
	ip := bnd.Addr().Unmap()
	switch {
	case ip.Is4():
		v4 := ip.As4()
		b = append(append(b, socksAtypIPv4), v4[:]...)
	case ip.Is6():
		v6 := ip.As16()
		b = append(append(b, socksAtypIPv6), v6[:]...)
	default:
		b = append(b, socksAtypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, bnd.Port())
}

// socksReplyCode is the REP for a failed OpenStream. The bridge's own
// answer passes through unchanged. Anything else means the tunnel itself
// failed (the bridge is unreachable, the session died, our time limit ran
// out): that is 0x01 general failure, not 0x04 host unreachable, so that
// the app (and its user) blames the proxy and not the destination.
func socksReplyCode(err error) byte {
	var se *transport.StatusError
	if errors.As(err, &se) {
		return byte(se.Status)
	}
	return repGeneralFailure
}

// serveSOCKS runs one SOCKS5 connection, whose first byte is 0x05.
func (p *Server) serveSOCKS(c *bufferedConn, log *slog.Logger) error {
	// The greeting, authentication and request share one read deadline
	// (set by serveConn); each reply gets a write deadline of its own, so
	// a stuck app cannot hold a slot with unread replies.
	c.SetWriteDeadline(time.Now().Add(p.requestTimeout))
	if err := p.socksNegotiate(c); err != nil {
		return err
	}
	req, err := readSOCKSRequest(c)
	if err != nil {
		var se *socksError
		if errors.As(err, &se) {
			c.Write(socksReply(se.rep, netip.AddrPort{}))
		}
		return err
	}
	switch req.cmd {
	case socksCmdConnect:
		return p.socksConnect(c, req, log)
	case socksCmdUDP:
		return p.serveUDPAssociate(c, req, log)
	case socksCmdBind:
		// An inbound connection would need the bridge to listen for
		// us, which the tunnel does not offer.
		c.Write(socksReply(repCommandNotSupported, netip.AddrPort{}))
		return errors.New("socks5: BIND is not supported")
	}
	c.Write(socksReply(repCommandNotSupported, netip.AddrPort{}))
	return fmt.Errorf("socks5: unknown command %#x", req.cmd)
}

// socksNegotiate reads the greeting, picks the method and, for
// user/password, checks the credentials. An error means the connection
// must be closed; a refusal has already been answered.
func (p *Server) socksNegotiate(c net.Conn) error {
	var buf [2 + 255]byte
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return fmt.Errorf("socks5: reading greeting: %w", err)
	}
	if buf[0] != socksVersion {
		return fmt.Errorf("socks5: greeting version %d", buf[0])
	}
	n := int(buf[1])
	methods := buf[2 : 2+n]
	if _, err := io.ReadFull(c, methods); err != nil {
		return fmt.Errorf("socks5: reading greeting: %w", err)
	}
	want := byte(methodNoAuth)
	if p.auth != nil {
		// With credentials configured, an app that offers only
		// "no authentication" is refused, not let in.
		want = methodUserPass
	}
	chosen := byte(methodNoneOK)
	for _, m := range methods {
		if m == want {
			chosen = want
		}
	}
	if _, err := c.Write([]byte{socksVersion, chosen}); err != nil {
		return err
	}
	switch chosen {
	case methodNoneOK:
		return errors.New("socks5: no acceptable authentication method offered")
	case methodUserPass:
		return p.socksUserPass(c)
	}
	return nil
}

// socksUserPass runs the RFC 1929 subnegotiation.
func (p *Server) socksUserPass(c net.Conn) error {
	var buf [255]byte
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return fmt.Errorf("socks5: reading user/password: %w", err)
	}
	if buf[0] != userPassVersion {
		return fmt.Errorf("socks5: user/password version %d", buf[0])
	}
	user := buf[:buf[1]]
	if _, err := io.ReadFull(c, user); err != nil {
		return fmt.Errorf("socks5: reading user/password: %w", err)
	}
	u := string(user)
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return fmt.Errorf("socks5: reading user/password: %w", err)
	}
	pass := buf[:buf[0]]
	if _, err := io.ReadFull(c, pass); err != nil {
		return fmt.Errorf("socks5: reading user/password: %w", err)
	}
	if !p.auth.ok(u, string(pass)) {
		c.Write([]byte{userPassVersion, userPassRejected})
		return errors.New("socks5: wrong user name or password")
	}
	_, err := c.Write([]byte{userPassVersion, userPassOK})
	return err
}

// socksConnect opens a stream to the requested destination, replies with
// the bridge's status and relays.
func (p *Server) socksConnect(c *bufferedConn, req socksRequest, log *slog.Logger) error {
	st, err := p.openStreamFast(transport.Request{Command: transport.CmdConnect, Addr: req.addr}, log)
	// Opening may take longer than the handshake's write deadline.
	c.SetWriteDeadline(time.Now().Add(p.requestTimeout))
	if err != nil {
		c.Write(socksReply(socksReplyCode(err), netip.AddrPort{}))
		return err
	}
	if _, err := c.Write(socksReply(repSucceeded, netip.AddrPort{})); err != nil {
		st.Close()
		return err
	}
	c.SetDeadline(time.Time{})
	return relayFast(c, st, log)
}
