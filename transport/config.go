package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/ratelimit"
	"github.com/mirage-pt/mirage/transport/replay"
)

// Defaults for the optional time limits.
const (
	// DefaultHandshakeTimeout bounds a client's dial, TLS handshake and
	// server proof, and on the server the reading of a ClientHello and an
	// authenticated client's TLS handshake.
	DefaultHandshakeTimeout = 20 * time.Second
	// DefaultMaxClockSkew is how far a client's clock may be from the
	// bridge's. A tag is remembered by the replay filter for twice this.
	DefaultMaxClockSkew = 2 * time.Minute
	// DefaultRequestTimeout bounds how long the server waits for a stream's
	// request, and the client for the server's reply to it.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultMaxPendingHandshakes bounds connections whose ClientHello is
	// still being read (each holds up to 64 KiB); further connections
	// meet the face without being read.
	DefaultMaxPendingHandshakes = 512
	// DefaultMaxSessions bounds the sessions a bridge holds at once. Each
	// holds at most a few MiB of buffers, and only while its client is
	// sending or receiving.
	DefaultMaxSessions = 4096
)

// ClientConfig says how to reach and authenticate one bridge.
type ClientConfig struct {
	// Address is the bridge's "host:port".
	Address string
	// Params hold the bridge's public key, the SNI to send, the short id and
	// the browser fingerprint (see package link).
	link.Params
	// RootCAs are the roots a site face's certificate chain is checked
	// against for the link's server name (a private CA, a test CA). nil
	// means the system's roots. A certificate the link pins (Params.Pin)
	// or bound to the bridge's key (a cover face) needs no chain.
	RootCAs *x509.CertPool
	// Dial opens the TCP connection to the bridge. nil means net.Dialer.
	// Set it to go through an upstream proxy (TOR_PT_PROXY).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// HandshakeTimeout bounds dial, TLS handshake and server proof together.
	// Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// RequestTimeout bounds the wait for the bridge's answer to a stream
	// request. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// SessionLinger is how long a session waits for a new connection to
	// the bridge after losing its last one (a network change, an outage);
	// its streams then fail. Zero means DefaultSessionLinger.
	SessionLinger time.Duration
	// Now is the clock used for the tag's timestamp. nil means time.Now.
	Now func() time.Time
	// Logger receives debug events. It is never given an address. nil
	// means no logging.
	Logger *slog.Logger

	// singleCarrier keeps a session on its first connection (tests: the
	// control that shows what carriers are for).
	singleCarrier bool
	// padYoungOnly pads only the young phase's writes (benchmarks: the
	// baseline that shows what tail padding costs).
	padYoungOnly bool
	// noResumption makes every carrier a full TLS handshake (tests and
	// benchmarks: the baseline of resumption).
	noResumption bool
	// sendRate, when set, is the send rate in bytes a second that the
	// session's bounds follow instead of the one measured (tests that
	// count records per write: the measured rate is the machine's, and a
	// loaded test machine sends a record per write).
	sendRate float64
}

func (c *ClientConfig) check() error {
	if c.Address == "" {
		return errors.New("transport: ClientConfig.Address is empty")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("transport: bridge address %q: %w", c.Address, err)
	}
	if err := c.Params.Validate(); err != nil {
		return err
	}
	return nil
}

func (c *ClientConfig) handshakeTimeout() time.Duration {
	return orDefault(c.HandshakeTimeout, DefaultHandshakeTimeout)
}

func (c *ClientConfig) requestTimeout() time.Duration {
	return orDefault(c.RequestTimeout, DefaultRequestTimeout)
}

func (c *ClientConfig) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *ClientConfig) logger() *slog.Logger { return loggerOrDiscard(c.Logger) }

// ServerConfig says how a bridge authenticates clients and what everyone
// else meets. Exactly one of Site and Cover must be set.
type ServerConfig struct {
	// PrivateKey is the bridge's static X25519 key.
	PrivateKey keys.PrivateKey
	// ShortIDs are the short ids the bridge accepts. Empty means any.
	ShortIDs []keys.ShortID
	// ServerNames are the SNI values the bridge accepts from clients.
	// Empty means any; "" in it matches a hello without server_name (a
	// bridge without a name, whose clients send none).
	ServerNames []string

	// Site makes the bridge a website of its own (the recommended face).
	Site *SiteFace
	// Cover makes the bridge pass strangers to another website.
	Cover *CoverFace

	// Handler is called, each time in a new goroutine, with every stream an
	// authenticated client opens. It must call Stream.Reply before any
	// data flows; the stream is closed when it returns. Required.
	Handler func(*Stream)

	// HandshakeTimeout bounds the reading of a ClientHello and an
	// authenticated client's TLS handshake. Zero means
	// DefaultHandshakeTimeout. A peer too slow for it meets the face.
	HandshakeTimeout time.Duration
	// RequestTimeout bounds the wait for a stream's request. Zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// IdleTimeout closes a session that has had no stream open for this
	// long; its client dials a new one when it next needs it. Zero means
	// sessions are kept until the client or the network ends them.
	IdleTimeout time.Duration
	// SessionLinger is how long a session whose connections all ended
	// waits for its client to come back on a new one, holding its
	// streams. Zero means DefaultSessionLinger.
	SessionLinger time.Duration
	// MaxBuffered bounds the bytes the bridge holds for its streams, all
	// sessions together: what clients sent faster than destinations
	// take. Past it, a session holding more than its share is not read
	// until its destinations catch up (bridgebuf.go). Zero means
	// DefaultMaxBuffered.
	MaxBuffered int
	// MaxSessions bounds the sessions the bridge holds at once; a client
	// past it is refused (it retries). Zero means DefaultMaxSessions.
	MaxSessions int
	// MaxClockSkew is the largest accepted difference between a client's
	// timestamp and Now. Zero means DefaultMaxClockSkew.
	MaxClockSkew time.Duration
	// MaxPendingHandshakes bounds connections being classified at once;
	// past it, new connections meet the face unread. Zero means
	// DefaultMaxPendingHandshakes.
	MaxPendingHandshakes int
	// ReplayFilter remembers accepted tags. nil means a new filter that
	// remembers each tag for twice MaxClockSkew, sized for the handshake
	// rate a bridge can sustain (replay.SizeFor).
	ReplayFilter *replay.Filter
	// RateLimiter bounds authenticated handshakes per short id, so one
	// link holder cannot flood the replay filter. nil means
	// ratelimit.DefaultRate and DefaultBurst per short id.
	RateLimiter *ratelimit.Limiter
	// OnSession, if set, is called when a session opens (open true) and
	// when it ends, with the short id it authenticated with: for counting
	// sessions per user. It must not block.
	OnSession func(shortID keys.ShortID, open bool)
	// Now is the server's clock. nil means time.Now.
	Now func() time.Time
	// Logger receives events, named by session number, never by address.
	// nil means no logging.
	Logger *slog.Logger

	// Limits tests shorten for one server (zero: the defaults), so that
	// they need not change package variables under parallel tests.
	maxStreamsPerSession int
	writeStallTimeout    time.Duration
	// padYoungOnly pads only the young phase's writes (benchmarks: the
	// baseline that shows what tail padding costs).
	padYoungOnly bool
	// siteUnbound: tunnels present the site's own certificate, as
	// bridges before bound site certificates did (tests of a client's
	// pin and chain checks against such a bridge).
	siteUnbound bool
}

func (c *ServerConfig) check() error {
	if (c.Site == nil) == (c.Cover == nil) {
		return errors.New("transport: ServerConfig needs exactly one face: Site or Cover")
	}
	if c.Handler == nil {
		return errors.New("transport: ServerConfig.Handler is nil")
	}
	if c.Site != nil {
		if c.Site.TLSConfig == nil {
			return errors.New("transport: SiteFace.TLSConfig is nil")
		}
		tc := c.Site.TLSConfig
		if len(tc.Certificates) == 0 && tc.GetCertificate == nil && tc.GetConfigForClient == nil {
			return errors.New("transport: SiteFace.TLSConfig has no certificate (set Certificates or GetCertificate)")
		}
		if tc.MaxVersion != 0 && tc.MaxVersion < tls.VersionTLS13 {
			return errors.New("transport: SiteFace.TLSConfig must allow TLS 1.3")
		}
		if c.Site.Handler == nil {
			return errors.New("transport: SiteFace.Handler is nil")
		}
	}
	if c.Cover != nil && c.Cover.Address == "" {
		return errors.New("transport: CoverFace.Address is empty")
	}
	return nil
}

func (c *ServerConfig) handshakeTimeout() time.Duration {
	return orDefault(c.HandshakeTimeout, DefaultHandshakeTimeout)
}

func (c *ServerConfig) requestTimeout() time.Duration {
	return orDefault(c.RequestTimeout, DefaultRequestTimeout)
}

func (c *ServerConfig) maxClockSkew() time.Duration {
	return orDefault(c.MaxClockSkew, DefaultMaxClockSkew)
}

func (c *ServerConfig) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func loggerOrDiscard(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
}
