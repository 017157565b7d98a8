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
	"os"
	"os/signal"
	"strings"
	"syscall"

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

Examples:
  # Point Telegram, a browser or any app at SOCKS5 (or HTTP proxy) 127.0.0.1:1080:
  mirage-client -listen 127.0.0.1:1080 'mirage://KEY@203.0.113.5:443?sni=www.example.com&id=0123456789abcdef'
  mirage-client -link-file ~/bridge.link
  mirage-client check -link-file ~/bridge.link

Under tor (ClientTransportPlugin mirage exec /usr/bin/mirage-client) the
bridge comes from the bridge line:
  Bridge mirage 203.0.113.5:443 FINGERPRINT key=KEY sni=www.example.com id=0123456789abcdef

Flags:
`

type config struct {
	listen        string
	link          *link.Link
	auth          string
	target        string
	unsafeLogging bool
	logLevel      slog.Level
	logFile       string
	showVersion   bool
	check         bool
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
	fs.StringVar(&c.auth, "auth", "", "USER:PASS required of local apps (SOCKS5 user/password, HTTP Proxy-Authorization); empty: none")
	fs.StringVar(&c.target, "target", "www.wikipedia.org:443", "check: the HOST:PORT to open a stream to")
	fs.BoolVar(&c.unsafeLogging, "unsafe-logging", false, "log addresses (for debugging only)")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFile, "log", "", "write logs to this file instead of stderr (in managed mode: the only way to get logs)")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := c.logLevel.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: use debug, info, warn or error", level)
	}
	if c.showVersion || managed {
		return c, nil
	}
	if c.auth != "" {
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
	logger, closeLog, err := safelog.NewLogger(c.logFile, c.logLevel, c.unsafeLogging, managed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mirage-client:", err)
		os.Exit(1)
	}
	defer closeLog()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch {
	case managed:
		err = mpt.RunClient(ctx, mpt.ClientOptions{Version: version, Logger: logger, Stdin: os.Stdin, UnsafeLogging: c.unsafeLogging})
	case c.check:
		err = runCheck(ctx, c.link, c.target, os.Stdout)
	default:
		err = run(ctx, c, logger)
	}
	if err != nil {
		logger.Debug(err.Error())
		if !managed {
			fmt.Fprintln(os.Stderr, "mirage-client:", err)
		}
		os.Exit(1)
	}
}

// run serves the local proxy until ctx ends.
func run(ctx context.Context, c *config, log *slog.Logger) error {
	client, err := transport.NewClient(transport.ClientConfig{Address: c.link.Address, Params: c.link.Params, Logger: log})
	if err != nil {
		return err
	}
	defer client.Close()
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", c.listen, err)
	}
	creds, err := localproxy.ParseCredentials(c.auth)
	if err != nil {
		ln.Close()
		return err
	}
	p := localproxy.NewServer(localproxy.Config{Opener: client, Auth: creds, Logger: log})
	log.Info("local proxy ready: point apps at SOCKS5 or HTTP proxy "+ln.Addr().String(), "bridge", c.link.Label)
	// Dial now, so a wrong link shows at start and not at the first app
	// connection; the proxy runs either way, and retries.
	go func() {
		if _, err := client.Session(ctx); err != nil {
			log.Error("bridge not usable yet (mirage-client check LINK tells more)", "error", safelog.Error(err, c.unsafeLogging))
		} else {
			log.Info("connected to the bridge")
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- p.Serve(ln) }()
	select {
	case <-ctx.Done():
		client.Close() // first: it ends a dial in flight, which handlers may wait on
		p.Close()
		return nil
	case err := <-errc:
		return err
	}
}
