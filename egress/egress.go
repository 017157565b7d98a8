// Package egress is where a bridge sends its clients' streams, and the
// policy that keeps it from being an open proxy into its own network: the
// stream handler of a standalone mirage-server, importable so that any
// program embedding a bridge gets the same rules.
//
// In proxy mode (Config.Forward empty) a CONNECT stream goes where its
// request says and a UDP stream relays datagrams, both within the policy
// of AllowedIP; in forward mode every stream goes to the one Forward
// target and nowhere else. The policy, in proxy mode:
//
//   - Cloud metadata and control endpoints (169.254.169.254, Azure's
//     WireServer 168.63.129.16, Alibaba's 100.100.100.200, AWS's
//     fd00:ec2::254, … : see controlPrefixes) are refused always: they
//     hand out the machine's credentials to whoever asks from inside it.
//   - Loopback, private, link-local, CGNAT, multicast, documentation and
//     reserved ranges, and this machine's own addresses, are refused
//     unless Config.AllowPrivate.
//   - TCP port 25 (SMTP) is refused unless Config.AllowSMTP: every open
//     path to port 25 is found and used for spam within hours, and gets
//     the bridge's address on block lists.
//
// The handler logs no client address, and no destination address unless
// Config.UnsafeLogging: errors are scrubbed (safelog) before they reach
// the logger, whatever handler the embedder gives it.
package egress

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

	"github.com/mirage-pt/mirage/sockcopy"
	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// Time limits and sizes of the egress.
const (
	// DefaultDialTimeout bounds resolving a destination and connecting
	// to it.
	DefaultDialTimeout = 10 * time.Second
	// DefaultUDPIdleTimeout ends a UDP relay that has carried nothing
	// either way for this long, as a NAT would forget the mapping.
	DefaultUDPIdleTimeout = 2 * time.Minute
	// DefaultWriteStallTimeout ends a TCP stream whose destination took
	// nothing the client sent for this long: a hung server, a tarpit.
	// Until the stream ends, the bridge holds what the client sent
	// towards it, and the client counts that against its session's room
	// (the transport's window bounds), so a destination that never reads
	// would cost both for as long as it kept the connection open. It is
	// the transport's own bound the other way, on a client that stops
	// reading.
	DefaultWriteStallTimeout = 5 * time.Minute
	// smtpPort is refused unless Config.AllowSMTP.
	smtpPort = 25
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

// Default limits on what the bridge's users may hold open at once (see
// Config). The transport caps streams per session (1,024) and sessions in
// all; these cap each user across all its sessions, and the bridge as a
// whole, so that one link holder cannot take the memory and the file
// descriptors every other user needs. Measured (TestIdleStreamsCost): an
// idle stream or UDP relay costs about 20 KiB of heap and stacks (client
// side included), so the global defaults hold all slots taken at once
// near 400 MiB, and a user's near 80 MiB.
const (
	// DefaultMaxStreamsPerUser bounds one user's streams of every kind:
	// a browser's worth of connections on each of a few devices.
	DefaultMaxStreamsPerUser = 4096
	// DefaultMaxStreams bounds the streams of all users together.
	DefaultMaxStreams = 16384
	// DefaultMaxUDPRelaysPerUser bounds one user's UDP relays (each a
	// UDP socket on the bridge): apps open a few, for calls and DNS.
	DefaultMaxUDPRelaysPerUser = 256
	// DefaultMaxUDPRelays bounds the UDP relays of all users together.
	DefaultMaxUDPRelays = 4096
)

// controlPrefixes are cloud metadata and control endpoints, refused even
// with AllowPrivate: from inside a cloud VM they answer with the
// machine's credentials, user data and management channels, and nothing
// a bridge's user needs lives there. Most clouds use 169.254.169.254;
// the rest are the well-known exceptions.
var controlPrefixes = []netip.Prefix{
	netip.MustParsePrefix("169.254.169.254/32"), // instance metadata: AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Hetzner, Oracle, Huawei …
	netip.MustParsePrefix("169.254.170.2/32"),   // AWS ECS task metadata and credentials
	netip.MustParsePrefix("169.254.170.23/32"),  // AWS EKS Pod Identity agent
	netip.MustParsePrefix("169.254.0.23/32"),    // Tencent Cloud metadata
	netip.MustParsePrefix("168.63.129.16/32"),   // Azure WireServer: a public address with host powers
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud metadata
	netip.MustParsePrefix("192.0.0.192/32"),     // Oracle Cloud (OCI) legacy metadata
	netip.MustParsePrefix("fd00:ec2::/32"),      // AWS over IPv6: metadata fd00:ec2::254, DNS, NTP, EKS fd00:ec2::23
	netip.MustParsePrefix("fd20:ce::254/128"),   // Google Cloud metadata over IPv6
}

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

// AllowedIP reports whether the bridge may connect to ip. Cloud metadata
// and control endpoints (controlPrefixes) are refused always; with
// allowPrivate everything else is allowed; otherwise loopback, private,
// link-local, multicast, unspecified, broadcast, CGNAT, benchmarking,
// documentation and reserved ranges are refused too. Every form of an
// address is judged as the address it reaches: IPv4-mapped IPv6, the
// NAT64 and 6to4 embeddings of an IPv4 address, with or without a zone.
// An invalid address is refused. AllowedIP does not know this machine's
// own addresses; the stream handler refuses those as well.
func AllowedIP(ip netip.Addr, allowPrivate bool) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.WithZone("").Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64Prefix.Contains(ip):
			return AllowedIP(netip.AddrFrom4([4]byte(b[12:16])), allowPrivate)
		case sixToFour.Contains(ip):
			return AllowedIP(netip.AddrFrom4([4]byte(b[2:6])), allowPrivate)
		}
	}
	for _, p := range controlPrefixes {
		if p.Contains(ip) {
			return false
		}
	}
	if allowPrivate {
		return true
	}
	for _, p := range refusedPrefixes {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// allowed applies the policy: AllowedIP, and, unless private
// destinations are allowed, none of this machine's own addresses either:
// its public address reaches every service bound to all interfaces (the
// site's upstream, an admin panel) over the loopback interface, past
// firewall rules written for the outside.
func (e *Handler) allowed(ip netip.Addr) bool {
	if !AllowedIP(ip, e.allowPrivate) {
		return false
	}
	return e.allowPrivate || !e.local.has(ip)
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

// Config configures a Handler. The zero value is a proxy to public
// destinations with the default time limits.
type Config struct {
	// AllowPrivate lets clients reach loopback, private, link-local and
	// the other non-public ranges, and this machine's own addresses
	// (mirage-server -allow-private). Cloud metadata and control
	// endpoints stay refused.
	AllowPrivate bool
	// AllowSMTP lets clients connect to TCP port 25 (mirage-server
	// -allow-smtp).
	AllowSMTP bool
	// Forward, if not empty, is the HOST:PORT every stream goes to
	// (mirage-server -forward): only default-target streams are served,
	// and the target, chosen by the operator, is not subject to the
	// policy.
	Forward string
	// Logger gets events; nil means none.
	Logger *slog.Logger
	// UnsafeLogging lets destination addresses into log lines.
	UnsafeLogging bool
	// DialTimeout bounds resolving and connecting to a destination
	// (DefaultDialTimeout if zero).
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP relay idle for this long
	// (DefaultUDPIdleTimeout if zero).
	UDPIdleTimeout time.Duration
	// WriteStallTimeout ends a TCP stream whose destination takes
	// nothing of what the client sends for this long
	// (DefaultWriteStallTimeout if zero).
	WriteStallTimeout time.Duration
	// Lookup resolves a host name; nil means the system resolver. Tests
	// set it to answer without DNS.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// Stats, if set, counts each stream and the bytes relayed either way
	// for the user of the stream's short id (never per address).
	Stats *stats.Counters
	// MaxStreamsPerUser and MaxStreams bound the streams (of every
	// command) open at once for one user (short id; clients without one
	// count as one user) and for all together; MaxUDPRelaysPerUser and
	// MaxUDPRelays bound UDP relays the same way. Zero means the
	// Default… value, a negative value no limit. A stream past a limit
	// is refused with StatusGeneralFailure (SOCKS5's "general failure":
	// try again later) and costs nothing else; the session and the
	// user's other streams carry on.
	//
	// A user is a short id, that is a link: everyone given the same link
	// shares its limits. An operator who hands one link to many people
	// raises the per-user limits or gives each their own link
	// (mirage-server users add).
	MaxStreamsPerUser   int
	MaxStreams          int
	MaxUDPRelaysPerUser int
	MaxUDPRelays        int
}

// Handler handles the streams of a standalone bridge: its Handle method
// is a transport.ServerConfig.Handler. Its fields are set by New and not
// changed after; Handle is safe for concurrent use.
type Handler struct {
	allowPrivate bool
	allowSMTP    bool
	unsafe       bool
	resolver     *net.Resolver
	dialer       *net.Dialer
	forward      string // "": proxy mode; else every stream goes here
	log          *slog.Logger
	local        localAddrs // this machine's own addresses
	lookup       func(ctx context.Context, host string) ([]netip.Addr, error)
	dialTimeout  time.Duration
	udpIdle      time.Duration
	writeStall   time.Duration
	stats        *stats.Counters // nil: no counting
	streams      *limiter        // every stream
	udpRelays    *limiter        // UDP relays
}

// New returns the stream handler of a standalone bridge: a proxy to
// requested destinations within the policy (see the package doc), or a
// forwarder of every stream to cfg.Forward.
func New(cfg Config) *Handler {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		allowPrivate: cfg.AllowPrivate,
		allowSMTP:    cfg.AllowSMTP,
		unsafe:       cfg.UnsafeLogging,
		resolver:     net.DefaultResolver,
		dialer:       &net.Dialer{},
		forward:      cfg.Forward,
		log:          log,
		lookup:       cfg.Lookup,
		dialTimeout:  cfg.DialTimeout,
		udpIdle:      cfg.UDPIdleTimeout,
		writeStall:   cfg.WriteStallTimeout,
		stats:        cfg.Stats,
	}
	if h.dialTimeout <= 0 {
		h.dialTimeout = DefaultDialTimeout
	}
	if h.udpIdle <= 0 {
		h.udpIdle = DefaultUDPIdleTimeout
	}
	if h.writeStall <= 0 {
		h.writeStall = DefaultWriteStallTimeout
	}
	h.streams = newLimiter(cfg.MaxStreamsPerUser, DefaultMaxStreamsPerUser, cfg.MaxStreams, DefaultMaxStreams)
	h.udpRelays = newLimiter(cfg.MaxUDPRelaysPerUser, DefaultMaxUDPRelaysPerUser, cfg.MaxUDPRelays, DefaultMaxUDPRelays)
	return h
}

// Describe says what the handler does, for a start-up log line.
func (e *Handler) Describe() string {
	switch {
	case e.forward != "":
		return "forward every stream to " + e.forward
	case e.allowPrivate && e.allowSMTP:
		return "proxy (private and loopback destinations and SMTP port 25 ALLOWED)"
	case e.allowPrivate:
		return "proxy (private and loopback destinations ALLOWED)"
	case e.allowSMTP:
		return "proxy (public destinations only; SMTP port 25 ALLOWED)"
	}
	return "proxy (public destinations only)"
}

// Handle serves one stream; it is the transport.ServerConfig.Handler of a
// standalone bridge.
func (e *Handler) Handle(st *transport.Stream) {
	log := e.log.With("session", st.Session, "stream", st.StreamID)
	// One lookup per stream; the relays then count with atomic adds.
	u := e.stats.For(st.ShortID)
	u.StreamStarted()
	defer u.StreamEnded()
	if !e.streams.take(st.ShortID) {
		// The limit is the user's or the bridge's, not the session's:
		// refuse this stream and keep the rest going.
		st.Reply(transport.StatusGeneralFailure)
		log.Debug("stream refused: too many streams for this user or in all")
		return
	}
	// A UDP relay takes a slot of its own too, before anything is
	// answered: a refusal must hold no slot when the client reads it, or
	// a client that goes on at once finds its own refused stream still
	// counted against it.
	udp := e.forward == "" && st.Request.Command == transport.CmdUDP
	if udp && !e.udpRelays.take(st.ShortID) {
		e.streams.release(st.ShortID)
		st.Reply(transport.StatusGeneralFailure)
		log.Debug("UDP relay refused: too many for this user or in all")
		return
	}
	defer e.streams.release(st.ShortID)
	if udp {
		defer e.udpRelays.release(st.ShortID)
	}
	var status transport.Status
	switch cmd := st.Request.Command; {
	case e.forward != "" && cmd == transport.CmdDefault:
		status = e.serveTCP(st, e.forward, u, log)
	case e.forward != "":
		// Forward mode serves the default target only: the bridge must
		// not become an open proxy because it has a forward target.
		status = transport.StatusNotAllowed
		st.Reply(status)
	case cmd == transport.CmdConnect:
		status = e.serveTCP(st, "", u, log)
	case cmd == transport.CmdUDP:
		status = e.serveUDP(st, u, log)
	default:
		status = transport.StatusCommandNotSupported
		st.Reply(status)
	}
	log.Debug("stream done", "command", st.Request.Command.String(), "status", status.String())
}

// serveTCP connects to forward, or to the requested destination if
// forward is "", replies, and relays, counting the bytes for u. It
// returns the status it replied.
func (e *Handler) serveTCP(st *transport.Stream, forward string, u *stats.User, log *slog.Logger) transport.Status {
	ctx, cancel := context.WithTimeout(context.Background(), e.dialTimeout)
	var conn net.Conn
	var err error
	switch {
	case forward != "":
		conn, err = e.dialer.DialContext(ctx, "tcp", forward)
	case st.Request.Addr.Port == smtpPort && !e.allowSMTP:
		err = errNotAllowed
	default:
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
	// The destination side is wrapped for counting, not the stream:
	// relay needs the stream's own methods (SessionDone, WriteTo).
	if err := relay(st, u.Conn(conn), conn, u.AddDown, e.writeStall); err != nil {
		log.Debug("relay ended", "error", safelog.Error(err, e.unsafe))
	}
	return transport.StatusOK
}

// resolveAllowed returns the addresses of host, all allowed by the
// policy, or errNotAllowed if any is not: a name that resolves to one
// public and one private address is refused as a whole, so a DNS answer
// cannot smuggle a private address past the check.
func (e *Handler) resolveAllowed(ctx context.Context, host string) ([]netip.Addr, error) {
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
func (e *Handler) dialAllowed(ctx context.Context, a transport.Addr) (net.Conn, error) {
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
// UDP socket, counting the payload bytes for u (Handle took its relay
// slot). It returns the status it replied.
//
// Replies are let through only from addresses the client has sent to
// (like a NAT with endpoint-dependent filtering), so a stranger who finds
// the socket's port cannot push datagrams into the tunnel.
func (e *Handler) serveUDP(st *transport.Stream, u *stats.User, log *slog.Logger) transport.Status {
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
		user:  u,
		peers: make(map[netip.AddrPort]time.Time),
		names: make(map[string]cachedName),
	}
	if err := r.run(); err != nil {
		log.Debug("UDP relay ended", "error", safelog.Error(err, e.unsafe))
	}
	return transport.StatusOK
}

// udpRelay is one UDP stream's relay. Its two goroutines, joined by run,
// share peers under mu; names belongs to the stream reader alone.
type udpRelay struct {
	e    *Handler
	st   *transport.Stream
	pc   *net.UDPConn
	log  *slog.Logger
	user *stats.User // nil: no counting

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
	// While idle the relay waits for a datagram's 2-byte length with no
	// buffer of its own; a pooled one is taken for each datagram only.
	head := &headReader{r: r.st}
	for {
		if _, err := io.ReadFull(r.st, head.b[:]); err != nil {
			return err
		}
		head.n = 0
		if err := r.sendOne(head); err != nil {
			return err
		}
	}
}

// sendOne reads the rest of one datagram from head (its length already
// read) into a pooled buffer and sends it.
func (r *udpRelay) sendOne(head *headReader) error {
	buf := getBuffer()
	defer putBuffer(buf)
	addr, payload, err := transport.ReadDatagram(head, (*buf)[:2+transport.MaxDatagramLen])
	if err != nil {
		return err
	}
	r.touch()
	ip, ok := r.destination(addr.Host)
	if !ok {
		return nil
	}
	to := netip.AddrPortFrom(ip, addr.Port)
	if !r.remember(to) {
		return nil
	}
	if _, err := r.pc.WriteToUDPAddrPort(payload, to); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return err
		}
		// Unreachable, too big: dropped, as a router would.
		return nil
	}
	r.user.AddUp(len(payload))
	return nil
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
	for {
		// Wait with no buffer: an idle relay holds none (see sockcopy.WaitReadable).
		if err := sockcopy.WaitReadable(r.pc); err != nil {
			return err
		}
		if err := r.receiveOne(); err != nil {
			return err
		}
	}
}

// receiveOne reads one datagram into a pooled buffer and passes it on if
// it comes from a known peer.
func (r *udpRelay) receiveOne() error {
	buf := getBuffer()
	defer putBuffer(buf)
	n, from, err := r.pc.ReadFromUDPAddrPort((*buf)[:maxUDPPacket])
	if err != nil {
		return err
	}
	// The socket is dual-stack: IPv4 peers come as ::ffff:a.b.c.d.
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if !r.known(from) || n > maxReplyPayload {
		return nil
	}
	r.touch()
	src := transport.Addr{Host: from.Addr().String(), Port: from.Port()}
	// Framed in a pooled buffer too (maxReplyPayload keeps the frame
	// within bufferSize): not an allocation per datagram.
	frame := getBuffer()
	defer putBuffer(frame)
	f, err := transport.AppendDatagram((*frame)[:0], src, (*buf)[:n])
	if err == nil {
		_, err = r.st.Write(f)
	}
	if err != nil {
		return fmt.Errorf("writing datagram to the stream: %w", err)
	}
	r.user.AddDown(n)
	return nil
}

// bufferSize fits the largest datagram either way: a framed one from the
// stream (2-byte length and MaxDatagramLen) and one read from the socket.
const bufferSize = max(2+transport.MaxDatagramLen, maxUDPPacket)

// buffers pools the relays' datagram buffers: each relay needs one only
// while it moves a datagram, so idle relays, however many, hold none.
// Pointers to slices, so that Put does not allocate.
var buffers = sync.Pool{New: func() any {
	b := make([]byte, bufferSize)
	return &b
}}

func getBuffer() *[]byte  { return buffers.Get().(*[]byte) }
func putBuffer(b *[]byte) { buffers.Put(b) }

// headReader gives back a datagram's 2-byte length, already read, before
// the rest of the stream.
type headReader struct {
	b [2]byte
	n int // bytes of b given back
	r io.Reader
}

func (h *headReader) Read(p []byte) (int, error) {
	if h.n < len(h.b) {
		k := copy(p, h.b[h.n:])
		h.n += k
		return k, nil
	}
	return h.r.Read(p)
}

// limiter counts what each user and all users hold, up to a limit each.
// A nil *limiter, or a negative limit, allows everything.
type limiter struct {
	perUser, total int // < 0: no limit

	mu     sync.Mutex
	n      int
	byUser map[keys.ShortID]int
}

func newLimiter(perUser, defPerUser, total, defTotal int) *limiter {
	if perUser == 0 {
		perUser = defPerUser
	}
	if total == 0 {
		total = defTotal
	}
	return &limiter{perUser: perUser, total: total, byUser: make(map[keys.ShortID]int)}
}

// take counts one more for id, or reports false if id or everyone is at
// the limit.
func (l *limiter) take(id keys.ShortID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= 0 && l.n >= l.total || l.perUser >= 0 && l.byUser[id] >= l.perUser {
		return false
	}
	l.n++
	l.byUser[id]++
	return true
}

func (l *limiter) release(id keys.ShortID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.byUser[id]--; l.byUser[id] <= 0 {
		delete(l.byUser, id) // the map holds only users with something open
	}
}
