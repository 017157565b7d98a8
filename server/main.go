// Command mirage-server runs a Mirage bridge: on its own, as a proxy for
// mirage-client users, or under tor as a managed pluggable transport.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mdp/qrterminal/v3"
	goptlib "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
	"golang.org/x/term"

	"github.com/mirage-pt/mirage/cores"
	"github.com/mirage-pt/mirage/egress"
	mpt "github.com/mirage-pt/mirage/pt"
	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

// Files the bridge writes into its state directory for the operator.
const (
	linkFile       = "client.link"
	bridgeLineFile = "bridgeline.txt"
)

var discardLog = log.New(io.Discard, "", 0)

// config is everything the flags say.
type config struct {
	stateDir      string
	listen        string
	face          faceOptions
	forward       string
	allowPrivate  bool
	allowSMTP     bool
	linkHost      string
	label         string
	unsafeLogging bool
	logLevel      slog.Level
	logFile       string
	maxConns      int
	maxBufferMiB  int
	userStreams   int // streams per user (short id) at once, in proxy and forward mode
	userUDP       int // UDP relays per user at once
	maxHandshakes int
	handshakeWait time.Duration
	idleTimeout   time.Duration
	destStall     time.Duration
	sessionLinger time.Duration
	metrics       string // -metrics: "" is off
	metricsPublic bool
	showVersion   bool
	procs         int
}

const usageText = `Usage: mirage-server [flags]

Runs a Mirage bridge. To everyone who is not a Mirage client, the bridge is
an ordinary HTTPS website: its own (the default) or another one it borrows
(-cover). On first run it makes a key pair in -state, writes the client link
to DIR/client.link and the Tor bridge-line arguments to DIR/bridgeline.txt,
and prints the link (with a QR code on a terminal).

Manage users (a link each, revocable): mirage-server users add|list|revoke
(see mirage-server users -help); a running bridge takes the change within
seconds. What each user carried: mirage-server stats, or Prometheus text
with -metrics 127.0.0.1:PORT.

Examples:
  # Try it out: self-signed site on :8443, link printed.
  mirage-server
  # A real site with a free ACME certificate (needs ports 443, DNS pointing here):
  mirage-server -listen :443 -domain bridge.example.com -upstream http://127.0.0.1:8080
  # Borrow another site's face (no domain needed):
  mirage-server -listen :443 -cover www.example.com:443
  # Every client stream goes to one place (e.g. a local SOCKS server):
  mirage-server -forward 127.0.0.1:1080 -allow-private

Under tor (ServerTransportPlugin mirage exec /usr/bin/mirage-server), the
face is set with ServerTransportOptions: mirage cover=HOST:PORT, domain=NAME,
acme-directory=URL acme-root=FILE, cert=FILE key=FILE, sni=NAME, upstream=URL,
www=DIR; the bridge line is
written to TOR_PT_STATE_LOCATION/mirage_bridgeline.txt.

Flags:
`

func defaultStateDir() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "mirage-server-state"
	}
	return filepath.Join(dir, "mirage-server")
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("mirage-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	var sni, level string
	fs.StringVar(&c.stateDir, "state", defaultStateDir(), "directory for the bridge's keys and certificates (kept across restarts)")
	fs.StringVar(&c.listen, "listen", ":8443", "TCP address to listen on")
	fs.StringVar(&c.face.domain, "domain", "", "site face with an ACME (Let's Encrypt) certificate for this domain name")
	fs.StringVar(&c.face.acmeDir, "acme-directory", "", "with -domain: the ACME directory URL to get the certificate from (default: Let's Encrypt)")
	fs.StringVar(&c.face.acmeRoot, "acme-root", "", "with -acme-directory: PEM file of the CA certificate(s) the ACME server's HTTPS chains to (a private ACME server)")
	fs.StringVar(&c.face.certFile, "cert", "", "site face with this certificate file (PEM, with -key)")
	fs.StringVar(&c.face.keyFile, "key", "", "private key file (PEM) for -cert")
	fs.StringVar(&c.face.cover, "cover", "", "cover face: pass strangers to this HOST:PORT of another HTTPS site")
	fs.StringVar(&sni, "sni", "", "comma-separated server names clients may send; the first goes into the link (default: the face's name)")
	fs.StringVar(&c.face.upstream, "upstream", "", "site content: reverse-proxy to this URL (e.g. http://127.0.0.1:8080)")
	fs.StringVar(&c.face.www, "www", "", "site content: serve files from this directory (directories need an index.html: no listings; dotfiles are hidden)")
	fs.StringVar(&c.forward, "forward", "", "send every client stream to this HOST:PORT instead of where the client asks")
	fs.BoolVar(&c.allowPrivate, "allow-private", false, "let clients reach loopback, private and link-local addresses (unsafe on a shared network)")
	fs.BoolVar(&c.allowSMTP, "allow-smtp", false, "let clients connect to port 25 (SMTP); off by default because open paths to port 25 are found and used for spam within hours")
	fs.StringVar(&c.linkHost, "link-host", "", "HOST[:PORT] to put in the link and bridge line (default: this machine's address and the listen port)")
	fs.StringVar(&c.label, "label", "mirage", "label shown for the link in client apps")
	fs.BoolVar(&c.unsafeLogging, "unsafe-logging", false, "log client IP addresses (never do this on a real bridge)")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFile, "log", "", "write logs to this file instead of stderr (in managed mode: the only way to get logs)")
	fs.IntVar(&c.maxConns, "max-conns", 4096, "maximum concurrent client connections")
	fs.IntVar(&c.maxBufferMiB, "max-buffer", transport.DefaultMaxBuffered>>20, "MiB the bridge may hold, all clients together, of what clients send faster than destinations take it; past it, the clients holding more than their share wait")
	fs.IntVar(&c.userStreams, "max-streams-per-user", egress.DefaultMaxStreamsPerUser, "maximum streams one user (short id, i.e. one link: everyone sharing a link shares this) may have open at once; more are refused, other users unaffected (-1: no limit)")
	fs.IntVar(&c.userUDP, "max-udp-per-user", egress.DefaultMaxUDPRelaysPerUser, "maximum UDP relays one user (short id) may have open at once (-1: no limit)")
	fs.IntVar(&c.maxHandshakes, "max-handshakes", transport.DefaultMaxPendingHandshakes, "maximum connections being identified at once")
	fs.DurationVar(&c.handshakeWait, "handshake-timeout", transport.DefaultHandshakeTimeout, "how long a connection may take to send its ClientHello and finish the TLS handshake")
	fs.DurationVar(&c.sessionLinger, "session-linger", transport.DefaultSessionLinger, "how long a client's session waits for it to come back after its connections are lost (a network change, an outage), holding its streams")
	fs.DurationVar(&c.destStall, "dest-stall-timeout", egress.DefaultWriteStallTimeout, "end a client's stream when its destination takes nothing of what the client sends for this long (a hung server, a tarpit): until then the bridge holds those bytes and the client counts them against its session; a slow destination that takes some bytes is kept")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 10*time.Minute, "close a client session with no open stream for this long (0: never); the client redials when it needs to")
	fs.StringVar(&c.metrics, "metrics", "", "serve per-user counters as Prometheus text at http://ADDR/metrics on this loopback address, e.g. 127.0.0.1:9100 (off by default)")
	fs.BoolVar(&c.metricsPublic, "metrics-public", false, "let -metrics listen on an address other than loopback (only behind a firewall: the metrics name every user)")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	fs.IntVar(&c.procs, "procs", 0, "CPU cores the bridge may use at once (0: as many as its load needs: one until that one is nearly full, every core as soon as it is, fewer again after 3 s of lower load; $GOMAXPROCS, if set, decides instead). A bridge busy on more cores than it needs spends more CPU per byte: a third more behind a 200 Mbit/s link, 10-25% more on loopback")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.procs < 0 {
		return nil, fmt.Errorf("-procs %d: give a number of cores, or 0 for as many as the load needs", c.procs)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (all options are flags; see -help)", fs.Arg(0))
	}
	if err := c.logLevel.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: use debug, info, warn or error", level)
	}
	if sni != "" {
		for _, n := range strings.Split(sni, ",") {
			if n = strings.TrimSpace(n); n != "" {
				c.face.sni = append(c.face.sni, n)
			}
		}
	}
	if c.forward != "" {
		if _, _, err := net.SplitHostPort(c.forward); err != nil {
			return nil, fmt.Errorf("-forward %q: want HOST:PORT", c.forward)
		}
	}
	if c.maxConns < 1 || c.maxHandshakes < 1 || c.maxBufferMiB < 1 {
		return nil, errors.New("-max-conns, -max-handshakes and -max-buffer must be at least 1")
	}
	if c.userStreams == 0 || c.userUDP == 0 {
		return nil, errors.New("-max-streams-per-user and -max-udp-per-user must be at least 1, or -1 for no limit")
	}
	if c.handshakeWait <= 0 || c.idleTimeout < 0 {
		return nil, errors.New("-handshake-timeout must be positive and -idle-timeout not negative")
	}
	if c.destStall <= 0 {
		return nil, errors.New("-dest-stall-timeout must be positive (e.g. 5m): a stream to a destination that never reads would otherwise hold its bytes forever")
	}
	if c.sessionLinger <= 0 {
		return nil, errors.New("-session-linger must be positive (e.g. 2m): a session needs some time to move to a new connection")
	}
	if c.metrics != "" {
		if err := checkMetricsAddr(c.metrics, c.metricsPublic); err != nil {
			return nil, err
		}
	} else if c.metricsPublic {
		return nil, errors.New("-metrics-public goes with -metrics ADDR")
	}
	return c, c.face.check()
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "users" || os.Args[1] == "stats") {
		run := runUsers
		if os.Args[1] == "stats" {
			run = runStats
		}
		err := run(os.Args[2:], os.Stdout, os.Stderr)
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "mirage-server:", err)
			os.Exit(2)
		}
		return
	}
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mirage-server:", err)
		os.Exit(2)
	}
	if c.showVersion {
		fmt.Println("mirage-server", version)
		return
	}
	if c.procs == 0 {
		defer cores.Adapt()()
	} else {
		cores.Use(c.procs)
	}
	managed := mpt.ManagedMode()
	logger, closeLog, err := safelog.NewLogger(c.logFile, c.logLevel, c.unsafeLogging, managed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mirage-server:", err)
		os.Exit(1)
	}
	defer closeLog()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if managed {
		counters := stats.New()
		// The operator's side starts with the first bridge tor asks
		// for: only then is the state directory known. tor asks for
		// them one after the other.
		var ops *operatorSide
		err = mpt.RunServer(ctx, mpt.ServerOptions{
			Version: version, Logger: logger, Stdin: os.Stdin, Stats: counters,
			MaxConns: c.maxConns, // the same limit as standalone
			Configure: func(stateDir string, options map[string][]string) (*transport.ServerConfig, link.Params, error) {
				cfg, params, err := managedConfig(c, stateDir, options, logger)
				if err != nil || ops != nil {
					return cfg, params, err
				}
				state, _, err := keys.LoadOrCreateState(stateDir, nil)
				if err == nil {
					ops, err = startOperatorSide(ctx, c, stateDir, state, counters, logger)
				}
				return cfg, params, err
			},
			Started: func(srv *transport.Server) {
				if ops != nil {
					ops.users.add(srv)
				}
			},
		})
		if ops != nil {
			ops.stop()
		}
	} else {
		err = run(ctx, c, os.Stdout, logger)
	}
	if err != nil {
		logger.Error(err.Error())
		if !managed {
			fmt.Fprintln(os.Stderr, "mirage-server:", err)
		}
		os.Exit(1)
	}
}

// run serves a standalone bridge until ctx ends.
func run(ctx context.Context, c *config, stdout io.Writer, log *slog.Logger) error {
	state, created, err := keys.LoadOrCreateState(c.stateDir, nil)
	if err != nil {
		return err
	}
	if created {
		log.Info("made a new bridge identity", "state", c.stateDir)
	}
	counters := stats.New()
	ops, err := startOperatorSide(ctx, c, c.stateDir, state, counters, log)
	if err != nil {
		return err
	}
	defer ops.stop()
	if err := c.face.check(); err != nil {
		return err
	}
	// Listening comes first: the link's address, which a self-signed
	// certificate names, depends on the port actually bound.
	ln, err := transport.Listen(ctx, c.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", c.listen, err)
	}
	addr := linkAddress(c.linkHost, c.face.domain, ln.Addr().(*net.TCPAddr))
	f, err := buildFace(c.face, c.stateDir, hostIP(addr))
	if err != nil {
		ln.Close()
		return err
	}
	for _, w := range f.warnings {
		log.Warn(w)
	}
	params := link.Params{PublicKey: state.PrivateKey.Public(), ServerName: f.names[0], Pin: f.pin}
	if len(state.ShortIDs) > 0 {
		params.ShortID = state.ShortIDs[0]
	}
	l := &link.Link{Params: params, Address: addr, Label: c.label}
	if err := writeClientFiles(c.stateDir, l); err != nil {
		ln.Close()
		return err
	}
	printLink(stdout, l)

	eg := egress.New(egress.Config{
		AllowPrivate:  c.allowPrivate,
		AllowSMTP:     c.allowSMTP,
		Forward:       c.forward,
		Logger:        log,
		UnsafeLogging: c.unsafeLogging,
		Stats:         counters,
		// Past these a stream is refused: one user cannot take the
		// memory and sockets the others need.
		MaxStreamsPerUser:   c.userStreams,
		MaxUDPRelaysPerUser: c.userUDP,
		WriteStallTimeout:   c.destStall,
	})
	srv, err := transport.NewServer(transport.ServerConfig{
		PrivateKey:           state.PrivateKey,
		ShortIDs:             ops.users.accepted(),
		OnSession:            counters.OnSession,
		ServerNames:          f.names,
		Site:                 f.site,
		Cover:                f.cover,
		Handler:              eg.Handle,
		MaxPendingHandshakes: c.maxHandshakes,
		HandshakeTimeout:     c.handshakeWait,
		IdleTimeout:          c.idleTimeout,
		SessionLinger:        c.sessionLinger,
		MaxBuffered:          c.maxBufferMiB << 20,
		Logger:               log,
	})
	if err != nil {
		ln.Close()
		return err
	}
	ops.users.add(srv)
	log.Info("bridge running", "listen", ln.Addr().String(), "face", f.describe(), "mode", eg.Describe())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(mpt.LimitListener(ln, c.maxConns)) }()
	// Once the port serves, so the CA's TLS-ALPN-01 check can reach it.
	go f.obtainCertificate(log)
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		srv.Close()
		return nil
	case err := <-errc:
		srv.Close()
		return err
	}
}

func (f *face) describe() string {
	if f.cover != nil {
		return "cover " + f.cover.Address
	}
	var names []string
	for _, n := range f.names {
		if n == "" {
			n = "(no server name)"
		}
		names = append(names, n)
	}
	return "site " + strings.Join(names, ",")
}

// managedConfig builds one bridge's config under tor: the flags give
// defaults, ServerTransportOptions override them.
func managedConfig(c *config, stateDir string, options map[string][]string, log *slog.Logger) (*transport.ServerConfig, link.Params, error) {
	o := c.face
	for k, vs := range options {
		if len(vs) != 1 {
			return nil, link.Params{}, fmt.Errorf("ServerTransportOptions: %s given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "cover":
			o.cover = v
		case "domain":
			o.domain = v
		case "acme-directory":
			o.acmeDir = v
		case "acme-root":
			o.acmeRoot = v
		case "cert":
			o.certFile = v
		case "key":
			o.keyFile = v
		case "sni":
			o.sni = strings.Split(v, ",")
		case "upstream":
			o.upstream = v
		case "www":
			o.www = v
		default:
			return nil, link.Params{}, fmt.Errorf("ServerTransportOptions: unknown option %q (known: cover, domain, acme-directory, acme-root, cert, key, sni, upstream, www)", k)
		}
	}
	state, _, err := keys.LoadOrCreateState(stateDir, nil)
	if err != nil {
		return nil, link.Params{}, err
	}
	users, err := loadUsers(stateDir)
	if err != nil {
		return nil, link.Params{}, err
	}
	// tor gives no address to name: the machine's own, as the link of
	// a standalone bridge listening on all addresses would.
	ip := hostIP(linkAddress("", "", &net.TCPAddr{IP: net.IPv4zero, Port: 443}))
	if ip != nil && ip.IsLoopback() {
		ip = nil // no address of its own but loopback: name none
	}
	f, err := buildFace(o, stateDir, ip)
	if err != nil {
		return nil, link.Params{}, err
	}
	for _, w := range f.warnings {
		log.Warn(w)
		// The operator of a bridge under tor reads tor's log, not ours
		// (which goes nowhere without -log).
		goptlib.Log(goptlib.LogSeverityWarning, "mirage: "+w)
	}
	params := link.Params{PublicKey: state.PrivateKey.Public(), ServerName: f.names[0], Pin: f.pin}
	if len(state.ShortIDs) > 0 {
		params.ShortID = state.ShortIDs[0]
	}
	return &transport.ServerConfig{
		PrivateKey:           state.PrivateKey,
		ShortIDs:             acceptedShortIDs(state, users),
		ServerNames:          f.names,
		Site:                 f.site,
		Cover:                f.cover,
		MaxPendingHandshakes: c.maxHandshakes,
		HandshakeTimeout:     c.handshakeWait,
		IdleTimeout:          c.idleTimeout,
		SessionLinger:        c.sessionLinger,
		MaxBuffered:          c.maxBufferMiB << 20,
	}, params, nil
}

// linkAddress is the address clients dial: -link-host, or else the
// -domain name (so that a client, like a browser, reaches the bridge by
// looking the name up, and the address follows DNS), or else the listen
// address, with the first non-loopback address of this machine in place of
// an unspecified one. The port is the listen port unless -link-host has one.
func linkAddress(linkHost, domain string, listen *net.TCPAddr) string {
	port := strconv.Itoa(listen.Port)
	if linkHost != "" {
		if _, _, err := net.SplitHostPort(linkHost); err == nil {
			return linkHost
		}
		return net.JoinHostPort(strings.Trim(linkHost, "[]"), port)
	}
	if domain != "" {
		return net.JoinHostPort(strings.ToLower(domain), port)
	}
	if !listen.IP.IsUnspecified() {
		return net.JoinHostPort(listen.IP.String(), port)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() && ipn.IP.To4() != nil {
			return net.JoinHostPort(ipn.IP.String(), port)
		}
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// hostIP returns the IP address in addr ("host:port"), or nil when the host
// is a name or the address is unspecified.
func hostIP(addr string) net.IP {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return nil
	}
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip
}

// writeClientFiles writes DIR/client.link and DIR/bridgeline.txt.
func writeClientFiles(dir string, l *link.Link) error {
	if err := keys.WriteFileAtomic(filepath.Join(dir, linkFile), []byte(l.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", linkFile, err)
	}
	line := "# Arguments of a Tor bridge line for this bridge. With tor's fingerprint of the\n" +
		"# bridge relay, a user writes:\n" +
		"#   " + link.BridgeLine(l.Address, "<FINGERPRINT>", l.Params) + "\n" +
		l.Params.Args() + "\n"
	if err := keys.WriteFileAtomic(filepath.Join(dir, bridgeLineFile), []byte(line), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", bridgeLineFile, err)
	}
	return nil
}

// printLink shows the link, and a QR code of it when stdout is a terminal.
func printLink(w io.Writer, l *link.Link) {
	s := l.String()
	fmt.Fprintf(w, "Mirage bridge link (give it to users of mirage-client):\n\n  %s\n\n", s)
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		qrterminal.GenerateHalfBlock(s, qrterminal.L, w)
	}
}
