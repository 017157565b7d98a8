package pt

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	goptlib "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/mirage-pt/mirage/stats"
	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/keys"
	"github.com/mirage-pt/mirage/transport/link"
)

// BridgeLineFile is the file in TOR_PT_STATE_LOCATION where the bridge
// line for this bridge is written, for the operator to hand out.
const BridgeLineFile = "mirage_bridgeline.txt"

// orDialTimeout bounds the connection to tor's (Ext)ORPort.
const orDialTimeout = 15 * time.Second

// ConfigureFunc builds a server configuration for one bind address from
// the state directory and the transport's ServerTransportOptions. It
// returns the config (without Handler, which RunServer sets) and the
// parameters clients need (key, sni, id) for the bridge line. An error is
// reported to tor as SMETHOD-ERROR and says what to fix.
type ConfigureFunc func(stateDir string, options map[string][]string) (*transport.ServerConfig, link.Params, error)

// ServerOptions configure RunServer.
type ServerOptions struct {
	Version   string
	Logger    *slog.Logger
	Stdin     io.Reader
	Configure ConfigureFunc
	// Started, if set, is called with each bridge once it listens, so
	// that the caller can change it while it runs (SetShortIDs, as users
	// are added and revoked). It must not block.
	Started func(*transport.Server)
	// Stats, if set, counts sessions, streams and bytes per user (by
	// short id, never by address).
	Stats *stats.Counters
	// MaxConns bounds the client connections open at once, over all the
	// bind addresses tor asks for (mirage-server -max-conns): further
	// ones wait in the kernel's backlog. Zero means no limit.
	MaxConns int
}

// RunServer runs the server side of managed mode: one bridge per bind
// address tor asks for, each stream dialed to tor's ORPort through the
// ExtORPort when tor offers one, so tor learns the client's address and
// the transport name without Mirage ever logging them. Only the default
// target (tor) is served: the bridge is no open proxy in this mode. It
// returns when tor closes stdin or ctx ends (the caller ends ctx on
// SIGTERM and SIGINT: RunServer installs no signal handler).
func RunServer(ctx context.Context, opts ServerOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	info, err := goptlib.ServerSetup(nil)
	if err != nil {
		return fmt.Errorf("tor pluggable-transport setup: %w", err)
	}
	goptlib.ReportVersion("mirage-server", opts.Version)
	stateDir, err := goptlib.MakeStateDir()
	if err != nil {
		for _, b := range info.Bindaddrs {
			goptlib.SmethodError(b.MethodName, "cannot create the state directory: "+err.Error())
		}
		goptlib.SmethodsDone()
		return err
	}
	var slots chan struct{} // shared by every bind address
	if opts.MaxConns > 0 {
		slots = make(chan struct{}, opts.MaxConns)
	}
	var servers []*transport.Server
	for _, bind := range info.Bindaddrs {
		srv, err := startBridge(&info, bind, stateDir, &opts, slots, log)
		if err != nil {
			goptlib.SmethodError(bind.MethodName, err.Error())
			continue
		}
		servers = append(servers, srv)
	}
	goptlib.SmethodsDone()
	why := waitForExit(ctx, opts.Stdin)
	log.Info("exiting", "reason", why)
	for _, s := range servers {
		s.Close()
	}
	return nil
}

func startBridge(info *goptlib.ServerInfo, bind goptlib.Bindaddr, stateDir string, opts *ServerOptions, slots chan struct{}, log *slog.Logger) (*transport.Server, error) {
	if bind.MethodName != MethodName {
		return nil, fmt.Errorf("no such method: this program only provides %s", MethodName)
	}
	cfg, params, err := opts.Configure(stateDir, bind.Options)
	if err != nil {
		return nil, err
	}
	counters := opts.Stats
	cfg.Handler = func(st *transport.Stream) { serveTor(info, st, counters, log) }
	if counters != nil && cfg.OnSession == nil {
		cfg.OnSession = counters.OnSession
	}
	if cfg.Logger == nil {
		cfg.Logger = log
	}
	srv, err := transport.NewServer(*cfg)
	if err != nil {
		return nil, err
	}
	ln, err := transport.Listen(context.Background(), bind.Addr.String())
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("cannot listen on %s: %w", bind.Addr, err)
	}
	if slots != nil {
		go srv.Serve(newLimitListener(ln, slots))
	} else {
		go srv.Serve(ln)
	}
	if opts.Started != nil {
		opts.Started(srv)
	}
	args := goptlib.Args{}
	args.Add("key", params.PublicKey.String())
	if params.ServerName != "" {
		// A bridge without a name has its clients send none, as a
		// browser does for an address: no empty sni= either.
		args.Add("sni", params.ServerName)
	}
	if !params.ShortID.IsZero() {
		args.Add("id", params.ShortID.String())
	}
	if params.Fingerprint != "" && params.Fingerprint != "chrome" {
		args.Add("fp", params.Fingerprint)
	}
	if !params.Pin.IsZero() {
		// A certificate no browser would trust: clients accept it by
		// its key, and nothing else (an interceptor's certificate).
		args.Add("pin", params.Pin.String())
	}
	// tor publishes these in the bridge's extra-info descriptor, which is
	// how BridgeDB-style distribution learns the bridge line.
	goptlib.SmethodArgs(bind.MethodName, ln.Addr(), args)
	port := ln.Addr().(*net.TCPAddr).Port
	if err := writeBridgeLine(stateDir, port, params); err != nil {
		log.Warn("cannot write the bridge line file", "error", err.Error())
	}
	return srv, nil
}

// writeBridgeLine writes the bridge line in the shape obfs4 uses, with
// placeholders for what only the operator knows.
func writeBridgeLine(stateDir string, port int, params link.Params) error {
	var b strings.Builder
	b.WriteString("# mirage torrc client bridge line\n#\n")
	b.WriteString("# This file is an automatically generated bridge line based on\n")
	b.WriteString("# the current mirage-server configuration. EDITING IT WILL HAVE NO EFFECT.\n#\n")
	b.WriteString("# Before distributing this Bridge, edit the placeholder fields\n")
	b.WriteString("# to contain the actual values:\n")
	b.WriteString("#  <IP ADDRESS>  - The public IP address of your mirage bridge.\n")
	b.WriteString("#  <FINGERPRINT> - The bridge's fingerprint.\n\n")
	b.WriteString(link.BridgeLine(fmt.Sprintf("<IP ADDRESS>:%d", port), "<FINGERPRINT>", params))
	b.WriteString("\n")
	return keys.WriteFileAtomic(filepath.Join(stateDir, BridgeLineFile), []byte(b.String()), 0o600)
}

// serveTor connects one stream to tor, counting it for its user.
func serveTor(info *goptlib.ServerInfo, st *transport.Stream, counters *stats.Counters, log *slog.Logger) {
	u := counters.For(st.ShortID)
	u.StreamStarted()
	defer u.StreamEnded()
	if st.Request.Command != transport.CmdDefault {
		st.Reply(transport.StatusNotAllowed)
		return
	}
	// The client's address goes to tor through USERADDR and nowhere else.
	// A stream whose session cannot name one (it spans carriers, and
	// none may be up) gets no USERADDR rather than a crash of the bridge.
	var userAddr string
	if a := st.RemoteAddr(); a != nil {
		userAddr = a.String()
	}
	or, err := goptlib.DialOrWithDialer(&net.Dialer{Timeout: orDialTimeout}, info, userAddr, MethodName)
	if err != nil {
		log.Warn("cannot reach tor's ORPort", "session", st.Session, "error", err.Error())
		st.Reply(transport.StatusGeneralFailure)
		return
	}
	defer or.Close()
	if err := st.Reply(transport.StatusOK); err != nil {
		return
	}
	transport.Relay(st, u.Conn(or))
}
