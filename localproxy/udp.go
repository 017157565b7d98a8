package localproxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// SOCKS5 UDP ASSOCIATE (RFC 1928 §7). The app sends datagrams to a UDP
// socket the proxy opens for it, each with a header:
//
//	RSV(2) = 0 | FRAG(1) | ATYP | DST.ADDR | DST.PORT | DATA
//
// and receives replies with the same header naming the source. One tunnel
// stream (transport.CmdUDP) carries all of an association's datagrams,
// framed by transport.WriteDatagram/ReadDatagram. Fragments (FRAG != 0)
// are dropped, as RFC 1928 allows for an implementation that does not
// reassemble.
//
// Only the app may use the socket: datagrams must come from the IP address
// of the TCP control connection, and the first such sender's port is
// locked in (or the port the app named in its request, if not zero).
// The association ends when the control connection closes, or the stream
// does (the bridge ends it after two minutes idle).

// udpHeaderMinLen is the shortest header: RSV, FRAG, ATYP, IPv4, port.
const udpHeaderMinLen = 2 + 1 + 1 + 4 + 2

// maxUDPPacket is the largest datagram read from the app's socket.
const maxUDPPacket = 65535

// parseUDPHeader splits a datagram from the app into its destination and
// payload (a slice of b). A fragment is an error.
func parseUDPHeader(b []byte) (transport.Addr, []byte, error) {
	if len(b) < udpHeaderMinLen {
		return transport.Addr{}, nil, fmt.Errorf("socks5: UDP datagram of %d bytes is too short", len(b))
	}
	if b[2] != 0 {
		return transport.Addr{}, nil, errors.New("socks5: UDP fragments are not supported")
	}
	r := &byteReader{b: b[3:]}
	addr, err := readSOCKSAddr(r)
	if err != nil {
		return transport.Addr{}, nil, err
	}
	return addr, r.b, nil
}

// appendUDPHeader appends the header of a datagram from src.
func appendUDPHeader(b []byte, src transport.Addr) ([]byte, error) {
	return src.AppendBinary(append(b, 0, 0, 0))
}

// byteReader reads from a byte slice and leaves the rest in b.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// serveUDPAssociate answers a UDP ASSOCIATE request and relays until the
// control connection c or the stream ends.
func (p *Server) serveUDPAssociate(c *bufferedConn, req socksRequest, log *slog.Logger) error {
	local, ok1 := c.LocalAddr().(*net.TCPAddr)
	remote, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		c.Write(socksReply(repGeneralFailure, netip.AddrPort{}))
		return errors.New("socks5: UDP ASSOCIATE needs a TCP control connection")
	}
	appIP, _ := netip.AddrFromSlice(remote.IP)
	st, err := p.openStream(transport.Request{Command: transport.CmdUDP}, log)
	// Opening may take longer than the handshake's write deadline.
	c.SetWriteDeadline(time.Now().Add(p.requestTimeout))
	if err != nil {
		c.Write(socksReply(socksReplyCode(err), netip.AddrPort{}))
		return err
	}
	// The socket listens on the IP the app reached us on, so the address
	// in the reply is one the app can send to.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.IP, Zone: local.Zone})
	if err != nil {
		st.Close()
		c.Write(socksReply(repGeneralFailure, netip.AddrPort{}))
		return fmt.Errorf("socks5: opening the UDP socket: %w", err)
	}
	if _, err := c.Write(socksReply(repSucceeded, pc.LocalAddr().(*net.UDPAddr).AddrPort())); err != nil {
		pc.Close()
		st.Close()
		return err
	}
	c.SetDeadline(time.Time{})
	a := &udpAssociation{
		ctrl:     c,
		pc:       pc,
		stream:   st,
		appIP:    appIP.Unmap().WithZone(""),
		wantPort: req.addr.Port,
		log:      log,
	}
	log.Debug("UDP association open")
	err = a.run()
	log.Debug("UDP association closed")
	return err
}

// udpAssociation relays one app's datagrams. Its goroutines are joined by
// run; app is the only state they share, under mu.
type udpAssociation struct {
	ctrl     net.Conn
	pc       *net.UDPConn
	stream   net.Conn
	appIP    netip.Addr // the control connection's peer: the only sender accepted
	wantPort uint16     // port the app announced, 0 if any
	log      *slog.Logger

	mu  sync.Mutex
	app netip.AddrPort // the app's UDP address, once known
}

// run relays until the control connection, the socket or the stream ends,
// then closes all three and returns the error that ended it (nil for an
// orderly close of the control connection or stream).
func (a *udpAssociation) run() error {
	errc := make(chan error, 3)
	closeAll := sync.OnceFunc(func() {
		a.ctrl.Close()
		a.pc.Close()
		a.stream.Close()
	})
	var wg sync.WaitGroup
	for _, f := range []func() error{a.appToStream, a.streamToApp, a.watchControl} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- f()
			closeAll()
		}()
	}
	wg.Wait()
	// The first error is the cause; the others are what closeAll did.
	err := <-errc
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// watchControl waits for the control connection to end. The app has
// nothing to send on it, so anything it sends is discarded.
func (a *udpAssociation) watchControl() error {
	_, err := io.Copy(io.Discard, a.ctrl)
	return err
}

// accept reports whether a datagram from addr comes from the app, and
// locks the app's port on the first one.
func (a *udpAssociation) accept(from netip.AddrPort) bool {
	if from.Addr().Unmap().WithZone("") != a.appIP {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.app.IsValid() {
		if a.wantPort != 0 && from.Port() != a.wantPort {
			return false
		}
		a.app = from
		return true
	}
	return from == a.app
}

// appAddr returns the app's UDP address, if it has sent anything yet.
func (a *udpAssociation) appAddr() (netip.AddrPort, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.app, a.app.IsValid()
}

// appToStream forwards the app's datagrams into the stream.
func (a *udpAssociation) appToStream() error {
	buf := make([]byte, maxUDPPacket)
	var frame []byte
	for {
		n, from, err := a.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		if !a.accept(from) {
			// Not the app: someone else found the port.
			a.log.Debug("dropped UDP datagram from a stranger")
			continue
		}
		addr, payload, err := parseUDPHeader(buf[:n])
		if err != nil {
			a.log.Debug("dropped UDP datagram", "error", err.Error())
			continue
		}
		// A datagram from IPv6 loopback may not fit in a frame once its
		// address is in the frame's form (a name that is an IPv6 literal
		// grows by 13 bytes): it is dropped, and the association goes on.
		frame, err = transport.AppendDatagram(frame[:0], addr, payload)
		if err != nil {
			a.log.Debug("dropped UDP datagram", "error", err.Error())
			continue
		}
		if _, err := a.stream.Write(frame); err != nil {
			return err
		}
	}
}

// streamToApp forwards the bridge's datagrams to the app.
func (a *udpAssociation) streamToApp() error {
	buf := make([]byte, 2+transport.MaxDatagramLen)
	out := make([]byte, 0, 3+transport.MaxAddrLen+transport.MaxDatagramLen)
	for {
		src, payload, err := transport.ReadDatagram(a.stream, buf)
		if err != nil {
			return err
		}
		app, ok := a.appAddr()
		if !ok {
			continue // the app has not sent anything: nowhere to deliver
		}
		out, err = appendUDPHeader(out[:0], src)
		if err != nil {
			continue
		}
		out = append(out, payload...)
		if _, err := a.pc.WriteToUDPAddrPort(out, app); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Too big for the app's socket and the like: drop it, as
			// a router would.
			a.log.Debug("cannot deliver UDP datagram to the app", "error", err.Error())
		}
	}
}
