// Command mirage-client connects to a Mirage bridge: as a local SOCKS5 and
// HTTP proxy for any app, or under tor as a managed pluggable transport.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mdp/qrterminal/v3"
	"golang.org/x/term"

	"github.com/mirage-pt/mirage/cores"
	"github.com/mirage-pt/mirage/localproxy"
	mpt "github.com/mirage-pt/mirage/pt"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

const usageText = `Usage:
  mirage-client [flags] LINK          run a local SOCKS5 + HTTP proxy through the bridge
  mirage-client check [flags] LINK    test a bridge and say what works or what is wrong

LINK is the mirage://KEY@HOST:PORT?sni=NAME&id=ID link the bridge printed;
instead of an argument it can come from -link-file or $MIRAGE_LINK.

The local proxy requires a user name and password, made on first run and
kept in -state: it prints them, a tg://socks link that sets up Telegram in
one tap, and what to type into a browser. (-auth none turns this off, and
lets any app on the machine find your bridge.)

Examples:
  # Point Telegram, a browser or any app at SOCKS5 (or HTTP proxy) 127.0.0.1:1080:
  mirage-client -listen 127.0.0.1:1080 'mirage://KEY@203.0.113.5:443?sni=www.example.com&id=0123456789abcdef'
  mirage-client -link-file ~/bridge.link
  # WhatsApp on the phones of a household (192.168.1.10: this computer on the Wi-Fi):
  mirage-client -whatsapp 192.168.1.10 -link-file ~/bridge.link
  mirage-client check -link-file ~/bridge.link

Under tor (ClientTransportPlugin mirage exec /usr/bin/mirage-client) the
bridge comes from the bridge line:
  Bridge mirage 203.0.113.5:443 FINGERPRINT key=KEY sni=www.example.com id=0123456789abcdef

Flags:
`

type config struct {
	listen        string
	whatsapp      string // IP to open the WhatsApp ports on; "": none
	waChatPort    int
	waMediaPort   int
	waHeader      bool
	link          *link.Link
	auth          string // "USER:PASS", "none", or "": credentials kept in stateDir
	stateDir      string
	target        string
	unsafeLogging bool
	strict        bool
	helloCapture  string
	logLevel      slog.Level
	logFile       string
	showVersion   bool
	check         bool
	procs         int
}

func parseFlags(args []string, stderr io.Writer, managed bool) (*config, error) {
	c := &config{}
	if len(args) > 0 && args[0] == "check" {
		c.check = true
		args = args[1:]
	}
	fs := flag.NewFlagSet("mirage-client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	var linkFile, level string
	fs.StringVar(&c.listen, "listen", "127.0.0.1:1080", "address of the local SOCKS5 + HTTP proxy")
	fs.StringVar(&linkFile, "link-file", "", "read the mirage:// link from this file")
	fs.StringVar(&c.helloCapture, "hello-capture", "", "send the browser ClientHello captured in this file, or directory of *.bin captures (see README, \"Fingerprints\"), for the link's fp= instead of the built-in one")
	fs.StringVar(&c.whatsapp, "whatsapp", "", "also serve WhatsApp's proxy setting on this IP (127.0.0.1 for this machine, or its LAN address for the phones of a household)")
	fs.IntVar(&c.waChatPort, "whatsapp-chat-port", localproxy.DefaultWhatsAppChatPort, "-whatsapp: the chat port (leads to g.whatsapp.net:5222)")
	fs.IntVar(&c.waMediaPort, "whatsapp-media-port", localproxy.DefaultWhatsAppMediaPort, "-whatsapp: the media port (leads to whatsapp.net:443)")
	fs.BoolVar(&c.waHeader, "whatsapp-proxy-header", false, "-whatsapp: start each chat connection with a PROXY protocol header naming no address")
	fs.StringVar(&c.auth, "auth", "", "USER:PASS local apps must give (SOCKS5 user/password, HTTP Proxy-Authorization); default: random ones made once and kept in -state; \"none\": no authentication (other apps can then find the proxy and your bridge)")
	fs.StringVar(&c.stateDir, "state", defaultStateDir(), "directory where the client keeps its local proxy credentials")
	fs.StringVar(&c.target, "target", "www.wikipedia.org:443", "check: the HOST:PORT to open a stream to")
	fs.BoolVar(&c.strict, "strict", false, "answer each app connection only after the bridge has (exact SOCKS/HTTP errors for refused destinations, one round trip slower); by default apps are answered at once and a refused connection is closed")
	fs.BoolVar(&c.unsafeLogging, "unsafe-logging", false, "log addresses (for debugging only)")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFile, "log", "", "write logs to this file instead of stderr (in managed mode: the only way to get logs)")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	fs.IntVar(&c.procs, "procs", 1, "CPU cores the client may use at once (0: all of them; $GOMAXPROCS, if set, decides instead); the local proxy first connects to the bridge on every core, and settles a second after. One core carries more than a link needs, and more would cost CPU (and battery) in idle cores' scheduler wake-ups; a client shared by many users may want more")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.procs < 0 {
		return nil, fmt.Errorf("-procs %d: give a number of cores, or 0 for all of them", c.procs)
	}
	if err := c.logLevel.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: use debug, info, warn or error", level)
	}
	if c.showVersion || managed {
		return c, nil
	}
	if c.whatsapp != "" {
		if _, err := netip.ParseAddr(c.whatsapp); err != nil {
			return nil, fmt.Errorf("-whatsapp %q: want an IP address to listen on, such as 127.0.0.1 or this computer's LAN address", c.whatsapp)
		}
		if !validPort(c.waChatPort) || !validPort(c.waMediaPort) || c.waChatPort == c.waMediaPort {
			return nil, errors.New("-whatsapp-chat-port and -whatsapp-media-port must be two different ports from 1 to 65535")
		}
	}
	if c.auth != "" && c.auth != "none" {
		if _, err := localproxy.ParseCredentials(c.auth); err != nil {
			return nil, fmt.Errorf("-auth: %w", err)
		}
	}
	var raw string
	switch {
	case fs.NArg() > 1:
		return nil, fmt.Errorf("expected one link, got %d arguments (quote the link: it contains & and ?)", fs.NArg())
	case fs.NArg() == 1:
		raw = fs.Arg(0)
	case linkFile != "":
		b, err := os.ReadFile(linkFile)
		if err != nil {
			return nil, fmt.Errorf("-link-file: %w", err)
		}
		raw = firstLine(string(b))
	case os.Getenv("MIRAGE_LINK") != "":
		raw = os.Getenv("MIRAGE_LINK")
	default:
		return nil, errors.New("no link: give the bridge's mirage:// link as an argument, with -link-file, or in $MIRAGE_LINK")
	}
	l, err := link.Parse(raw)
	if err != nil {
		return nil, err
	}
	c.link = l
	return c, nil
}

// defaultStateDir is the per-user configuration directory
// (~/.config/mirage-client on Linux, %AppData%\mirage-client on Windows,
// ~/Library/Application Support/mirage-client on macOS).
func defaultStateDir() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "mirage-client-state"
	}
	return filepath.Join(dir, "mirage-client")
}

func validPort(p int) bool { return p > 0 && p < 65536 }

// firstLine returns the first line of s that is not empty or a comment.
func firstLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			return line
		}
	}
	return ""
}

func main() {
	managed := mpt.ManagedMode()
	c, err := parseFlags(os.Args[1:], os.Stderr, managed)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mirage-client:", err)
		os.Exit(2)
	}
	if c.showVersion {
		fmt.Println("mirage-client", version)
		return
	}
	logger, ownLog, closeLog, err := newLoggers(c, managed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mirage-client:", err)
		os.Exit(1)
	}
	defer closeLog()
	switch {
	case managed:
		cores.Use(c.procs)
		ctx, stop := stopSignals()
		defer stop()
		err = mpt.RunClient(ctx, mpt.ClientOptions{Version: version, Logger: logger, Stdin: os.Stdin, UnsafeLogging: c.unsafeLogging})
	case c.check:
		cores.Use(c.procs)
		ctx, stop := stopSignals()
		defer stop()
		err = runCheck(ctx, c.link, c.target, os.Stdout)
	default:
		// run settles on -procs cores itself, once it has started.
		err = run(c, logger, ownLog, os.Stdout)
	}
	if err != nil {
		logger.Debug(err.Error())
		if !managed {
			fmt.Fprintln(os.Stderr, "mirage-client:", err)
		}
		os.Exit(1)
	}
}

// stopSignals returns a context that SIGTERM or SIGINT (Ctrl-C) ends.
func stopSignals() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// coresSettleDelay is how long after its first session is up (or its
// first dial failed) the local proxy settles on -procs cores. Until then
// it runs on every core: the bridge's handshake (key generation for the
// hello, the key agreement of its authentication) then runs beside the
// proxy's own start, and an app that connects at once waits less for
// it. Settling stops every goroutine for a moment (0.2-0.3 ms when
// measured), which the first app's first stream should not wait for.
const coresSettleDelay = time.Second

// newLoggers returns the logger for everything (scrubbed unless
// -unsafe-logging; to -log, stderr, or nowhere in managed mode) and one
// to the same place that does not scrub, for the lines that name this
// machine's own listening addresses: those are the user's, not a
// client's, and a log that says "[scrubbed]" where the proxy listens
// helps nobody. The returned function closes the log file.
func newLoggers(c *config, managed bool) (log, own *slog.Logger, closeFn func(), err error) {
	var w io.Writer = os.Stderr
	closeFn = func() {}
	switch {
	case c.logFile != "":
		f, err := os.OpenFile(c.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("opening the log file: %w", err)
		}
		w, closeFn = f, func() { f.Close() }
	case managed:
		w = io.Discard
	}
	log = slog.New(safelog.NewHandler(w, c.logLevel, c.unsafeLogging))
	own = slog.New(safelog.NewHandler(w, c.logLevel, true))
	return log, own, closeFn, nil
}

// proxyCredentials returns what local apps must authenticate with: -auth
// USER:PASS, nothing for -auth none, or else the credentials kept in the
// state directory (made on first use).
func proxyCredentials(c *config, log *slog.Logger) (*localproxy.Credentials, error) {
	switch c.auth {
	case "none":
		log.Warn("the local proxy has no password (-auth none): any app on this computer, and anyone who can reach its port, can use your bridge and learn its address")
		return nil, nil
	case "":
		creds, created, err := localproxy.LoadOrCreateCredentials(c.stateDir)
		if err != nil {
			return nil, fmt.Errorf("%w (or choose them with -auth USER:PASS)", err)
		}
		if created {
			log.Info("made new local proxy credentials", "file", filepath.Join(c.stateDir, localproxy.CredentialsFile))
		}
		return creds, nil
	}
	return localproxy.ParseCredentials(c.auth)
}

// run serves the local proxy (and the WhatsApp endpoint, if asked for)
// until SIGTERM or SIGINT. What to type into apps goes to stdout; own logs the
// lines that name the proxy's own addresses.
func run(c *config, log, own *slog.Logger, stdout io.Writer) error {
	if c.helloCapture != "" {
		h, err := transport.LoadCapturedHello(c.helloCapture)
		if err != nil {
			return fmt.Errorf("-hello-capture: %w", err)
		}
		fp := c.link.Fingerprint
		if fp == "" {
			fp = link.DefaultFingerprint
		}
		if err := transport.UseCapturedHello(fp, h); err != nil {
			return fmt.Errorf("-hello-capture: %w", err)
		}
	}
	client, err := transport.NewClient(transport.ClientConfig{Address: c.link.Address, Params: c.link.Params, Logger: log})
	if err != nil {
		return err
	}
	defer client.Close()
	// Dial first, before the rest starts (signals, the proxy's port): the
	// handshakes then run while the rest starts up, and an app's first
	// connection finds the session (nearly) ready. It also shows a wrong
	// link at start, not at the first app connection. The proxy runs
	// either way, and retries. Stopping (client.Close) ends the dial.
	go func() {
		_, err := client.Session(context.Background())
		time.AfterFunc(coresSettleDelay, func() { cores.Use(c.procs) })
		switch {
		case errors.Is(err, transport.ErrClosed):
			// The proxy did not start (its port was taken, say), or is
			// stopping: run says why.
		case err != nil:
			log.Error("bridge not usable yet (mirage-client check LINK tells more)", "error", safelog.Error(err, c.unsafeLogging))
		default:
			log.Info("connected to the bridge")
		}
	}()
	ctx, stop := stopSignals()
	defer stop()
	creds, err := proxyCredentials(c, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", c.listen, err)
	}
	var wa *localproxy.WhatsApp
	var chatLn, mediaLn net.Listener
	if c.whatsapp != "" {
		chatLn, mediaLn, err = listenWhatsApp(c)
		if err != nil {
			ln.Close()
			return err
		}
		wa = localproxy.NewWhatsApp(localproxy.WhatsAppConfig{Opener: client, ProxyHeader: c.waHeader, Logger: log})
	}
	p := localproxy.NewServer(localproxy.Config{Opener: client, Auth: creds, Strict: c.strict, Logger: log})
	own.Info("local proxy ready: point apps at SOCKS5 or HTTP proxy "+ln.Addr().String(), "auth", creds != nil, "bridge", c.link.Label)
	printProxyHelp(stdout, ln.Addr().(*net.TCPAddr).AddrPort(), creds)
	if wa != nil {
		own.Info("WhatsApp endpoint ready", "chat", chatLn.Addr().String(), "media", mediaLn.Addr().String())
		fmt.Fprintf(stdout, "WhatsApp:\n%s\n", whatsAppHelp(c.whatsapp, c.waChatPort, c.waMediaPort))
	}
	errc := make(chan error, 2)
	go func() { errc <- p.Serve(ln) }()
	if wa != nil {
		go func() { errc <- wa.Serve(chatLn, mediaLn) }()
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	client.Close() // first: it ends a dial in flight, which handlers may wait on
	p.Close()
	if wa != nil {
		wa.Close()
	}
	return err
}

// printProxyHelp says how to point Telegram, a browser and other apps at
// the proxy at addr: a tg://socks link (and its QR code on a terminal)
// and the settings to type in.
func printProxyHelp(w io.Writer, addr netip.AddrPort, creds *localproxy.Credentials) {
	host := addr.Addr().String()
	if addr.Addr().IsUnspecified() {
		if lan := lanAddresses(); len(lan) > 0 {
			host = lan[0]
		} else {
			host = "127.0.0.1"
		}
	}
	port := int(addr.Port())
	tg := localproxy.TelegramLink(host, port, creds)
	fmt.Fprintf(w, "Local proxy: %s port %d, SOCKS5 and HTTP on the same port.\n", host, port)
	if creds != nil {
		fmt.Fprintf(w, "  User name: %s\n  Password:  %s\n", creds.User, creds.Pass)
	} else {
		fmt.Fprintf(w, "  No user name or password (-auth none).\n")
	}
	fmt.Fprintf(w, "\nTelegram: open this link on the device Telegram runs on (or scan the QR code), and tap Connect:\n\n  %s\n\n", tg)
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		qrterminal.GenerateHalfBlock(tg, qrterminal.L, w)
		if addr.Addr().IsLoopback() {
			fmt.Fprintf(w, "(%s is this computer: the QR code works for a phone only with -listen on this computer's LAN address.)\n", host)
		}
	}
	fmt.Fprintf(w, "Browser: set the HTTP proxy (and the HTTPS proxy, if asked) to %s port %d;", host, port)
	if creds != nil {
		fmt.Fprintf(w, " the browser asks for the user name and password once.\n")
	} else {
		fmt.Fprintf(w, "\n")
	}
	fmt.Fprintf(w, "Other apps: SOCKS5 proxy %s port %d", host, port)
	if creds != nil {
		fmt.Fprintf(w, " with the user name and password above")
	}
	fmt.Fprintf(w, ".\n\n")
}

// listenWhatsApp opens the WhatsApp chat and media ports.
func listenWhatsApp(c *config) (chat, media net.Listener, err error) {
	ip := netip.MustParseAddr(c.whatsapp)
	chat, err = net.Listen("tcp", netip.AddrPortFrom(ip, uint16(c.waChatPort)).String())
	if err != nil {
		return nil, nil, fmt.Errorf("-whatsapp: cannot open the chat port: %w (choose another with -whatsapp-chat-port)", err)
	}
	media, err = net.Listen("tcp", netip.AddrPortFrom(ip, uint16(c.waMediaPort)).String())
	if err != nil {
		chat.Close()
		return nil, nil, fmt.Errorf("-whatsapp: cannot open the media port: %w (choose another with -whatsapp-media-port)", err)
	}
	return chat, media, nil
}

// whatsAppHelp says what to type into WhatsApp. For an unspecified
// address (0.0.0.0, ::) it names this machine's LAN addresses, which is
// what the phones must use.
func whatsAppHelp(listen string, chatPort, mediaPort int) string {
	ip := netip.MustParseAddr(listen)
	hosts := []string{ip.String()}
	if ip.IsUnspecified() {
		hosts = lanAddresses()
	}
	var b strings.Builder
	switch {
	case len(hosts) == 1:
		b.WriteString(localproxy.WhatsAppSettings(hosts[0], chatPort, mediaPort))
	case len(hosts) == 0:
		b.WriteString(localproxy.WhatsAppSettings("(this computer's LAN address)", chatPort, mediaPort))
	default:
		b.WriteString(localproxy.WhatsAppSettings(hosts[0], chatPort, mediaPort))
		fmt.Fprintf(&b, "(Proxy address: whichever of %s the phone's network reaches.)\n", strings.Join(hosts, ", "))
	}
	if ip.IsLoopback() {
		b.WriteString("Only apps on this computer can reach 127.0.0.1; for phones on your Wi-Fi, use -whatsapp with this computer's LAN address.\n")
	} else {
		b.WriteString("Phones on your network can use it: it leads only to WhatsApp's servers. Your firewall must let them reach these two ports.\n")
	}
	return b.String()
}

// lanAddresses returns this machine's private IPv4 addresses.
func lanAddresses() []string {
	var out []string
	as, _ := net.InterfaceAddrs()
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && p.Addr().IsPrivate() {
			out = append(out, p.Addr().String())
		}
	}
	return out
}
