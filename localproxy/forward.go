package localproxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// A forwarder carries every connection accepted on its port to one fixed
// destination through the tunnel, bytes unchanged in both directions: a
// plain TCP passthrough, for apps that take a proxy host and port but
// speak no proxy protocol. WhatsApp is one: its proxy setting takes a
// host, a chat port and a media port, and expects each to lead straight
// to its servers.

// proxyHeaderUnknown is a PROXY protocol v1 header (HAProxy's
// proxy-protocol.txt §2.1) that names no addresses: the form a proxy
// sends when it will not or cannot tell the client's address, which is
// ours to keep.
const proxyHeaderUnknown = "PROXY UNKNOWN\r\n"

// ForwardConfig configures a forwarder (NewForwarder). Zero limits mean
// the defaults of Config.
type ForwardConfig struct {
	// Opener opens the tunnel streams; required.
	Opener StreamOpener
	// Destination is where every connection goes; required.
	Destination transport.Addr
	// ProxyHeader sends a PROXY protocol v1 header naming no address
	// ("PROXY UNKNOWN") on each stream before the app's bytes, for
	// destinations that expect one.
	ProxyHeader bool
	// Logger gets events, never an app's or a destination's address;
	// nil means none.
	Logger *slog.Logger
	// MaxConns bounds the connections served at once (DefaultMaxConns).
	MaxConns int
	// OpenTimeout bounds the opening of one stream (DefaultOpenTimeout).
	OpenTimeout time.Duration
}

// NewForwarder returns a Server that carries every connection it accepts
// to cfg.Destination through the tunnel. There is no authentication: the
// app cannot give any, and the port leads to one destination only.
func NewForwarder(cfg ForwardConfig) *Server {
	p := NewServer(Config{Opener: cfg.Opener, Logger: cfg.Logger, MaxConns: cfg.MaxConns, OpenTimeout: cfg.OpenTimeout})
	dst := cfg.Destination
	p.forward = &dst
	p.proxyHeader = cfg.ProxyHeader
	return p
}

// serveForward carries one app connection to p.forward. The caller
// closes c. If the stream cannot be opened, the app sees its connection
// close, as it would with a proxy whose upstream is down, and retries.
func (p *Server) serveForward(c net.Conn) {
	log := p.log.With("conn", p.connIDs.Add(1))
	st, err := p.openStream(transport.Request{Command: transport.CmdConnect, Addr: *p.forward}, log)
	if err != nil {
		return
	}
	if p.proxyHeader {
		st.SetWriteDeadline(time.Now().Add(p.requestTimeout))
		if _, err := io.WriteString(st, proxyHeaderUnknown); err != nil {
			st.Close()
			return
		}
		st.SetWriteDeadline(time.Time{})
	}
	if err := relay(c, st); err != nil && !isClosedConnError(err) {
		log.Debug("forwarded connection ended", "error", err.Error())
	}
}

// WhatsApp's servers, as its proxy expects to reach them (the
// WhatsApp/proxy repository's HAProxy configuration): chat on
// g.whatsapp.net:5222, media on whatsapp.net:443.
var (
	WhatsAppChat  = transport.Addr{Host: "g.whatsapp.net", Port: 5222}
	WhatsAppMedia = transport.Addr{Host: "whatsapp.net", Port: 443}
)

// The ports the WhatsApp endpoint listens on by default: ones WhatsApp's
// proxy setting accepts for plain (non-TLS, no PROXY header) chat and
// media, and that need no privileges to open.
const (
	DefaultWhatsAppChatPort  = 5222
	DefaultWhatsAppMediaPort = 7777
)

// WhatsAppConfig configures a WhatsApp endpoint.
type WhatsAppConfig struct {
	// Opener opens the tunnel streams; required.
	Opener StreamOpener
	// Chat and Media are where the chat and media ports lead; zero
	// means WhatsAppChat and WhatsAppMedia. (Tests point them at a
	// fake server.)
	Chat, Media transport.Addr
	// ProxyHeader sends "PROXY UNKNOWN" on each chat stream first, as
	// WhatsApp's own proxy configuration does towards its chat servers.
	// Off by default.
	ProxyHeader bool
	// Logger gets events; nil means none.
	Logger *slog.Logger
}

// WhatsApp is the endpoint WhatsApp's proxy setting points at: a chat
// port and a media port, each forwarding through the tunnel. Close ends
// both.
type WhatsApp struct {
	Chat, Media *Server
}

// NewWhatsApp returns a WhatsApp endpoint; serve it with Serve.
func NewWhatsApp(cfg WhatsAppConfig) *WhatsApp {
	chat, media := cfg.Chat, cfg.Media
	if chat == (transport.Addr{}) {
		chat = WhatsAppChat
	}
	if media == (transport.Addr{}) {
		media = WhatsAppMedia
	}
	return &WhatsApp{
		Chat:  NewForwarder(ForwardConfig{Opener: cfg.Opener, Destination: chat, ProxyHeader: cfg.ProxyHeader, Logger: cfg.Logger}),
		Media: NewForwarder(ForwardConfig{Opener: cfg.Opener, Destination: media, Logger: cfg.Logger}),
	}
}

// Serve serves the chat and media listeners until one fails or the
// endpoint is closed (then it returns ErrServerClosed).
func (w *WhatsApp) Serve(chat, media net.Listener) error {
	errc := make(chan error, 2)
	go func() { errc <- w.Chat.Serve(chat) }()
	go func() { errc <- w.Media.Serve(media) }()
	err := <-errc
	w.Close()
	if err2 := <-errc; errors.Is(err, ErrServerClosed) {
		err = err2
	}
	return err
}

// Close closes both ports and every connection on them.
func (w *WhatsApp) Close() error {
	w.Chat.Close()
	w.Media.Close()
	return nil
}

// WhatsAppSettings says what to type into WhatsApp's proxy settings to
// use an endpoint at host with the given ports.
func WhatsAppSettings(host string, chatPort, mediaPort int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "In WhatsApp: Settings → Storage and data → Proxy → Use proxy → Set proxy:\n")
	fmt.Fprintf(&b, "  Proxy address:  %s\n", host)
	fmt.Fprintf(&b, "  Chat port:      %s\n", strconv.Itoa(chatPort))
	fmt.Fprintf(&b, "  Media port:     %s\n", strconv.Itoa(mediaPort))
	fmt.Fprintf(&b, "Tap Save. A green check mark means WhatsApp is connected through Mirage.\n")
	return b.String()
}
