package pt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	goptlib "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/link"
	"github.com/mirage-pt/mirage/transport/safelog"
)

// MethodName is the transport's name in torrc lines and bridge lines.
const MethodName = "mirage"

// ClientOptions configure RunClient.
type ClientOptions struct {
	// Version is reported to tor.
	Version string
	// Logger receives events; never stdout. nil means none.
	Logger *slog.Logger
	// Stdin is watched for closing (TOR_PT_EXIT_ON_STDIN_CLOSE). nil means none.
	Stdin io.Reader
	// UnsafeLogging lets addresses into log lines.
	UnsafeLogging bool
}

// RunClient runs the client side of managed mode: it reads tor's
// environment, opens a SOCKS listener for the mirage method, and serves
// each SOCKS connection by opening a stream to the bridge named in the
// connection's target and bridge-line arguments. All connections to the
// same bridge with the same arguments share one session. It returns when
// tor closes stdin or ctx ends (the caller ends ctx on SIGTERM and
// SIGINT: RunClient installs no signal handler).
func RunClient(ctx context.Context, opts ClientOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	info, err := goptlib.ClientSetup(nil)
	if err != nil {
		return fmt.Errorf("tor pluggable-transport setup: %w", err)
	}
	var dial DialFunc
	if info.ProxyURL != nil {
		dial, err = ProxyDialer(info.ProxyURL)
		if err != nil {
			goptlib.ProxyError(err.Error())
			return err
		}
		goptlib.ProxyDone()
	}
	goptlib.ReportVersion("mirage-client", opts.Version)

	pool := &clientPool{clients: make(map[string]*transport.Client), dial: dial, log: log, unsafe: opts.UnsafeLogging}
	defer pool.close()
	var listeners []net.Listener
	for _, name := range info.MethodNames {
		if name != MethodName {
			goptlib.CmethodError(name, "no such method: this program only provides "+MethodName)
			continue
		}
		ln, err := goptlib.ListenSocks("tcp", "127.0.0.1:0")
		if err != nil {
			goptlib.CmethodError(name, err.Error())
			continue
		}
		listeners = append(listeners, ln)
		goptlib.Cmethod(name, ln.Version(), ln.Addr())
		go pool.acceptLoop(ln)
	}
	goptlib.CmethodsDone()
	why := waitForExit(ctx, opts.Stdin)
	log.Info("exiting", "reason", why)
	for _, ln := range listeners {
		ln.Close()
	}
	return nil
}

// clientPool keeps one transport.Client per bridge (address and arguments).
type clientPool struct {
	dial   DialFunc
	log    *slog.Logger
	unsafe bool

	mu      sync.Mutex
	clients map[string]*transport.Client
	wg      sync.WaitGroup
}

func (p *clientPool) acceptLoop(ln *goptlib.SocksListener) {
	var backoff time.Duration
	for {
		conn, err := ln.AcceptSocks()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if !errors.As(err, &ne) {
				return
			}
			// A malformed SOCKS request fails that one connection; out
			// of file descriptors, pause instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(conn)
		}()
	}
}

// client returns the shared client for a bridge, creating it on first use.
func (p *clientPool) client(target string, args map[string][]string) (*transport.Client, error) {
	params, err := link.ParseArgs(args)
	if err != nil {
		return nil, err
	}
	key := target + " " + params.Args()
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[key]; ok {
		return c, nil
	}
	cfg := transport.ClientConfig{Address: target, Params: params, Logger: p.log}
	if p.dial != nil {
		cfg.Dial = p.dial
	}
	c, err := transport.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	p.clients[key] = c
	return c, nil
}

func (p *clientPool) handle(conn *goptlib.SocksConn) {
	defer conn.Close()
	client, err := p.client(conn.Req.Target, conn.Req.Args)
	if err != nil {
		// The bridge line is wrong. Tor shows PT log lines to its user.
		msg := fmt.Sprintf("bridge line for %s: %v", safelog.Scrub(conn.Req.Target), err)
		if p.unsafe {
			msg = fmt.Sprintf("bridge line for %s: %v", conn.Req.Target, err)
		}
		goptlib.Log(goptlib.LogSeverityError, msg)
		p.log.Error("bad bridge line", "error", err.Error())
		conn.Reject()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), transport.DefaultHandshakeTimeout+transport.DefaultRequestTimeout)
	st, err := client.OpenStream(ctx, transport.Request{Command: transport.CmdDefault})
	cancel()
	if err != nil {
		var se *transport.StatusError
		reason := byte(goptlib.SocksRepGeneralFailure)
		if errors.As(err, &se) {
			reason = byte(se.Status)
		}
		if errors.Is(err, transport.ErrNotBridge) || errors.Is(err, transport.ErrCertificate) {
			goptlib.Log(goptlib.LogSeverityError, "mirage: "+err.Error())
		}
		p.log.Warn("cannot open stream to bridge", "error", safelog.Error(err, p.unsafe))
		conn.RejectReason(reason)
		return
	}
	defer st.Close()
	if err := conn.Grant(nil); err != nil {
		return
	}
	transport.Relay(conn.Conn, st)
}

func (p *clientPool) close() {
	p.mu.Lock()
	for _, c := range p.clients {
		c.Close()
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
}
