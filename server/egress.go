package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// Egress: where a standalone bridge sends its clients' streams. In proxy
// mode (no -forward) a stream goes where its request says, within the
// policy of allowedIP; in forward mode every stream goes to the one
// -forward target and nowhere else.

// Time limits and sizes of the egress.
const (
	// dialTimeout bounds resolving a destination and connecting to it.
	dialTimeout = 10 * time.Second
	// udpIdleTimeout ends a UDP relay that has carried nothing either
	// way for this long, as a NAT would forget the mapping.
	udpIdleTimeout = 2 * time.Minute
	// udpResolveTimeout bounds the lookup of one datagram's destination.
	udpResolveTimeout = 5 * time.Second
	// maxUDPPacket is the largest datagram read from the UDP socket.
	maxUDPPacket = 64 << 10
	// maxReplyPayload is the largest reply that fits in a frame with an
	// IPv6 source address (type, 16 bytes, port); larger ones, which
	// only jumbo-sized IPv6 datagrams can be, are dropped.
	maxReplyPayload = transport.MaxDatagramLen - (1 + 16 + 2)
	// udpMaxPeers bounds the destinations a UDP relay remembers (to let
	// their replies through), and udpMaxNames the host names it caches.
	udpMaxPeers = 4096
	udpMaxNames = 64
	// udpNameTTL is how long a cached host name lookup is used.
	udpNameTTL = time.Minute
)

// refusedPrefixes are the destinations the bridge does not connect to
// unless -allow-private is given: its own host, the networks it sits in,
// and addresses no public service uses. IPv4-mapped IPv6 addresses are
// unmapped before the check, so they are covered by the IPv4 rows.
var refusedPrefixes = []netip.Prefix{
	// IPv4
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network", includes unspecified (RFC 791)
	netip.MustParsePrefix("10.0.0.0/8"),      // private (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),     // loopback
	netip.MustParsePrefix("169.254.0.0/16"),  // link-local, includes cloud metadata 169.254.169.254
	netip.MustParsePrefix("172.16.0.0/12"),   // private (RFC 1918)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation TEST-NET-1 (RFC 5737)
	netip.MustParsePrefix("192.168.0.0/16"),  // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking (RFC 2544)
	netip.MustParsePrefix("198.51.100.0/24"), // documentation TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation TEST-NET-3
	netip.MustParsePrefix("224.0.0.0/4"),     // multicast
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, includes broadcast 255.255.255.255
	// IPv6
	netip.MustParsePrefix("::/96"),          // unspecified, loopback ::1, IPv4-compatible (deprecated)
	netip.MustParsePrefix("100::/64"),       // discard-only (RFC 6666)
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64 (RFC 8215)
	netip.MustParsePrefix("2001:db8::/32"),  // documentation (RFC 3849)
	netip.MustParsePrefix("3fff::/20"),      // documentation (RFC 9637)
	netip.MustParsePrefix("fc00::/7"),       // unique local (RFC 4193)
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("fec0::/10"),      // site-local (deprecated, RFC 3879)
	netip.MustParsePrefix("ff00::/8"),       // multicast
}

// Prefixes of IPv6 addresses that carry an IPv4 address, which must be
// allowed too: a NAT64 gateway (64:ff9b::/96, RFC 6052) or a 6to4 relay
// (2002::/16, RFC 3056) would otherwise take 64:ff9b::127.0.0.1 or
// 2002:7f00:1:: to a loopback or private IPv4 address on its side.
var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// allowedIP reports whether the bridge may connect to ip. With
// allowPrivate everything is allowed; otherwise loopback, private,
// link-local, multicast, unspecified, broadcast, CGNAT, benchmarking,
// documentation and reserved ranges are refused, in any form (IPv4,
// IPv4-mapped IPv6, NAT64 and 6to4 embeddings of them, with or without
// a zone).
func allowedIP(ip netip.Addr, allowPrivate bool) bool {
	if allowPrivate {
		return true
	}
	if !ip.IsValid() {
		return false
	}
	ip = ip.WithZone("").Unmap()
	for _, p := range refusedPrefixes {
		if p.Contains(ip) {
			return false
		}
	}
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64Prefix.Contains(ip):
			return allowedIP(netip.AddrFrom4([4]byte(b[12:16])), false)
		case sixToFour.Contains(ip):
			return allowedIP(netip.AddrFrom4([4]byte(b[2:6])), false)
		}
	}
	return true
}

// allowed applies the policy: allowedIP, and, unless private
// destinations are allowed, none of this machine's own addresses either:
// its public address reaches every service bound to all interfaces (the
// site's upstream, an admin panel) over the loopback interface, past
// firewall rules written for the outside.
func (e *egress) allowed(ip netip.Addr) bool {
	if e.allowPrivate {
		return true
	}
	return allowedIP(ip, false) && !e.local.has(ip)
}

// localAddrs is the set of this machine's interface addresses, re-read
// at most every localAddrsTTL. Safe for concurrent use.
type localAddrs struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]struct{}
	expires time.Time
}

const localAddrsTTL = 30 * time.Second

func (l *localAddrs) has(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); now.After(l.expires) {
		l.addrs = make(map[netip.Addr]struct{})
		if as, err := net.InterfaceAddrs(); err == nil {
			for _, a := range as {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					l.addrs[p.Addr().WithZone("").Unmap()] = struct{}{}
				}
			}
		}
		l.expires = now.Add(localAddrsTTL)
	}
	_, ok := l.addrs[ip]
	return ok
}

// errNotAllowed is a destination refused by the policy.
var errNotAllowed = errors.New("destination not allowed by the bridge's policy")

// egress handles the streams of a standalone bridge. Its fields are set
// by newEgress and not changed after; handle is safe for concurrent use.
type egress struct {
	allowPrivate bool
	resolver     *net.Resolver
	dialer       *net.Dialer
	forward      string // "": proxy mode; else every stream goes here
	log          *slog.Logger
	local        localAddrs // this machine's own addresses
	// lookup resolves a host name; nil means resolver.LookupNetIP. Tests
	// set it to answer without DNS.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)

	// Time limits; newEgress sets the defaults, tests shorten them.
	dialTimeout time.Duration
	udpIdle     time.Duration
}

// newEgress returns the stream handler of a standalone bridge: a proxy
// to requested destinations (forward == "") within the policy of
// allowedIP, or a forwarder of every stream to forward (HOST:PORT, chosen
// by the operator and so not subject to the policy).
func newEgress(allowPrivate bool, forward string, log *slog.Logger) *egress {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &egress{
		allowPrivate: allowPrivate,
		resolver:     net.DefaultResolver,
		dialer:       &net.Dialer{},
		forward:      forward,
		log:          log,
		dialTimeout:  dialTimeout,
		udpIdle:      udpIdleTimeout,
	}
}

// describe says what the egress does, for the start-up log line.
func (e *egress) describe() string {
	switch {
	case e.forward != "":
		return "forward every stream to " + e.forward
	case e.allowPrivate:
		return "proxy (private and loopback destinations ALLOWED)"
	}
	return "proxy (public destinations only)"
}

// handle is the transport.ServerConfig.Handler for standalone mode.
func (e *egress) handle(st *transport.Stream) {
	log := e.log.With("session", st.Session, "stream", st.StreamID)
	var status transport.Status
	switch cmd := st.Request.Command; {
	case e.forward != "" && cmd == transport.CmdDefault:
		status = e.serveTCP(st, e.forward, log)
	case e.forward != "":
		// Forward mode serves the default target only: the bridge must
		// not become an open proxy because it has a forward target.
		status = transport.StatusNotAllowed
		st.Reply(status)
	case cmd == transport.CmdConnect:
		status = e.serveTCP(st, "", log)
	case cmd == transport.CmdUDP:
		status = e.serveUDP(st, log)
	default:
		status = transport.StatusCommandNotSupported
		st.Reply(status)
	}
	log.Debug("stream done", "command", st.Request.Command.String(), "status", status.String())
}

// serveTCP connects to forward, or to the requested destination if
// forward is "", replies, and relays. It returns the status it replied.
func (e *egress) serveTCP(st *transport.Stream, forward string, log *slog.Logger) transport.Status {
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	var conn net.Conn
	var err error
	if forward != "" {
		conn, err = e.dialer.DialContext(ctx, "tcp", forward)
	} else {
		conn, err = e.dialAllowed(ctx, st.Request.Addr)
	}
	cancel()
	if err != nil {
		status := statusFor(err)
		st.Reply(status)
		if forward != "" {
			// The operator's own target, not a user's destination.
			log.Warn("cannot reach the -forward target", "error", err.Error())
		}
		// A user's destination is not logged: the error names it, and
		// safelog scrubs IP addresses but not host names. The status
		// (logged by handle) says what went wrong.
		return status
	}
	defer conn.Close()
	if err := st.Reply(transport.StatusOK); err != nil {
		return transport.StatusOK
	}
	if err := transport.Relay(st, conn); err != nil {
		log.Debug("relay ended", "error", err.Error())
	}
	return transport.StatusOK
}

// resolveAllowed returns the addresses of host, all allowed by the
// policy, or errNotAllowed if any is not: a name that resolves to one
// public and one private address is refused as a whole, so a DNS answer
// cannot smuggle a private address past the check.
func (e *egress) resolveAllowed(ctx context.Context, host string) ([]netip.Addr, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		if e.lookup != nil {
			ips, err = e.lookup(ctx, host)
		} else {
			ips, err = e.resolver.LookupNetIP(ctx, "ip", host)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	for i, ip := range ips {
		if !e.allowed(ip) {
			return nil, errNotAllowed
		}
		// Resolvers may answer IPv4 in the IPv4-mapped form; dial the
		// plain one.
		ips[i] = ip.Unmap()
	}
	return ips, nil
}

// dialAllowed resolves a, checks the policy, and connects to the
// resolved addresses in turn (never to the name, so that what was
// checked is what is dialled), each try getting a fair share of the time
// left. It returns the last error if none answers.
func (e *egress) dialAllowed(ctx context.Context, a transport.Addr) (net.Conn, error) {
	ips, err := e.resolveAllowed(ctx, a.Host)
	if err != nil {
		return nil, err
	}
	for i, ip := range ips {
		tctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < len(ips)-1 {
			share := time.Until(dl) / time.Duration(len(ips)-i)
			tctx, cancel = context.WithTimeout(ctx, max(share, 2*time.Second))
		}
		var c net.Conn
		c, err = e.dialer.DialContext(tctx, "tcp", netip.AddrPortFrom(ip, a.Port).String())
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// statusFor maps a resolve or dial error to the status the client's app
// sees (a SOCKS5 reply code).
func statusFor(err error) transport.Status {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, errNotAllowed):
		return transport.StatusNotAllowed
	case errors.As(err, &dnsErr):
		if dnsErr.IsTimeout {
			return transport.StatusTimeout
		}
		// Not found, or the name servers failing: either way, no host.
		return transport.StatusHostUnreachable
	case errors.Is(err, syscall.ECONNREFUSED):
		return transport.StatusConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return transport.StatusNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return transport.StatusHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return transport.StatusTimeout
	}
	return transport.StatusGeneralFailure
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serveUDP relays the datagrams of one UDP stream through one unconnected
// UDP socket. It returns the status it replied.
//
// Replies are let through only from addresses the client has sent to
// (like a NAT with endpoint-dependent filtering), so a stranger who finds
// the socket's port cannot push datagrams into the tunnel.
func (e *egress) serveUDP(st *transport.Stream, log *slog.Logger) transport.Status {
	pc, err := net.ListenUDP("udp", nil)
	if err != nil {
		log.Warn("cannot open a UDP socket", "error", err.Error())
		st.Reply(transport.StatusGeneralFailure)
		return transport.StatusGeneralFailure
	}
	if err := st.Reply(transport.StatusOK); err != nil {
		pc.Close()
		return transport.StatusOK
	}
	r := &udpRelay{
		e:     e,
		st:    st,
		pc:    pc,
		log:   log,
		peers: make(map[netip.AddrPort]time.Time),
		names: make(map[string]cachedName),
	}
	if err := r.run(); err != nil {
		log.Debug("UDP relay ended", "error", err.Error())
	}
	return transport.StatusOK
}

// udpRelay is one UDP stream's relay. Its two goroutines, joined by run,
// share peers under mu; names belongs to the stream reader alone.
type udpRelay struct {
	e   *egress
	st  *transport.Stream
	pc  *net.UDPConn
	log *slog.Logger

	last atomic.Int64 // unix nanoseconds of the last datagram either way

	mu    sync.Mutex
	peers map[netip.AddrPort]time.Time // destinations sent to, and when

	names map[string]cachedName
}

type cachedName struct {
	ip      netip.Addr
	expires time.Time
}

// run relays until the stream ends, the socket fails or nothing moves for
// udpIdle, then closes the socket and the stream and returns the error
// that ended it (nil for idleness or an orderly end of the stream).
func (r *udpRelay) run() error {
	r.last.Store(time.Now().UnixNano())
	errc := make(chan error, 2)
	done := make(chan struct{})
	var closeOnce sync.Once
	stop := func() {
		closeOnce.Do(func() {
			close(done)
			r.pc.Close()
			r.st.Close()
		})
	}
	var wg sync.WaitGroup
	for _, f := range []func() error{r.clientToNet, r.netToClient} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- f()
			stop()
		}()
	}
	// The idle timer: wait for the remaining idle time, then look again.
	timer := time.NewTimer(r.e.udpIdle)
	defer timer.Stop()
	for idle := false; !idle; {
		select {
		case <-done:
			idle = true
		case <-timer.C:
			left := r.e.udpIdle - time.Since(time.Unix(0, r.last.Load()))
			if left <= 0 {
				r.log.Debug("UDP relay idle")
				stop()
				idle = true
			} else {
				timer.Reset(left)
			}
		}
	}
	wg.Wait()
	err := <-errc
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
		err = nil
	}
	return err
}

func (r *udpRelay) touch() { r.last.Store(time.Now().UnixNano()) }

// clientToNet sends the client's datagrams to their destinations,
// dropping refused and unresolvable ones silently.
func (r *udpRelay) clientToNet() error {
	buf := make([]byte, 2+transport.MaxDatagramLen)
	for {
		addr, payload, err := transport.ReadDatagram(r.st, buf)
		if err != nil {
			return err
		}
		r.touch()
		ip, ok := r.destination(addr.Host)
		if !ok {
			continue
		}
		to := netip.AddrPortFrom(ip, addr.Port)
		if !r.remember(to) {
			continue
		}
		if _, err := r.pc.WriteToUDPAddrPort(payload, to); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Unreachable, too big: dropped, as a router would.
			continue
		}
	}
}

// destination resolves host and applies the policy.
func (r *udpRelay) destination(host string) (netip.Addr, bool) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap(), r.e.allowed(ip)
	}
	now := time.Now()
	if c, ok := r.names[host]; ok && now.Before(c.expires) {
		return c.ip, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), udpResolveTimeout)
	ips, err := r.e.resolveAllowed(ctx, host)
	cancel()
	if err != nil {
		return netip.Addr{}, false
	}
	if len(r.names) >= udpMaxNames {
		clear(r.names)
	}
	ip := ips[0].Unmap()
	r.names[host] = cachedName{ip: ip, expires: now.Add(udpNameTTL)}
	return ip, true
}

// remember notes that the client sent to addr, so its replies may pass.
// When the table is full, entries idle for longer than udpIdle go; if it
// is still full, the datagram is dropped.
func (r *udpRelay) remember(addr netip.AddrPort) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.peers[addr]; !ok && len(r.peers) >= udpMaxPeers {
		for a, t := range r.peers {
			if now.Sub(t) > r.e.udpIdle {
				delete(r.peers, a)
			}
		}
		if len(r.peers) >= udpMaxPeers {
			return false
		}
	}
	r.peers[addr] = now
	return true
}

// known reports whether the client has sent to addr.
func (r *udpRelay) known(addr netip.AddrPort) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.peers[addr]
	return ok
}

// netToClient passes replies from known peers into the stream, with the
// source as the address.
func (r *udpRelay) netToClient() error {
	buf := make([]byte, maxUDPPacket)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return err
		}
		// The socket is dual-stack: IPv4 peers come as ::ffff:a.b.c.d.
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if !r.known(from) || n > maxReplyPayload {
			continue
		}
		r.touch()
		src := transport.Addr{Host: from.Addr().String(), Port: from.Port()}
		if err := transport.WriteDatagram(r.st, src, buf[:n]); err != nil {
			return fmt.Errorf("writing datagram to the stream: %w", err)
		}
	}
}
