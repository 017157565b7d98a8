package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/link"
)

// checkTimeout bounds each step of `mirage-client check`.
const checkTimeout = 20 * time.Second

// runCheck dials the bridge of l, verifies it, opens one stream to target
// and says what works, or exactly what does not. It returns an error when
// the bridge cannot be used.
func runCheck(ctx context.Context, l *link.Link, target string, out io.Writer) error {
	fmt.Fprintf(out, "bridge   %s (sni %s, fingerprint %s)\n", l.Address, l.ServerName, fpName(l.Fingerprint))
	cfg := &transport.ClientConfig{Address: l.Address, Params: l.Params, HandshakeTimeout: checkTimeout}
	start := time.Now()
	sess, err := transport.Dial(ctx, cfg)
	if err != nil {
		fmt.Fprintf(out, "FAILED   %v\n", err)
		if errors.Is(err, transport.ErrNotBridge) {
			if skew, ok := clockSkew(ctx, l); ok && (skew > transport.DefaultMaxClockSkew || skew < -transport.DefaultMaxClockSkew) {
				fmt.Fprintf(out, "hint     the server's clock differs from this computer's by %v: set this computer's clock right (bridges accept at most %v)\n",
					skew.Round(time.Second), transport.DefaultMaxClockSkew)
			} else {
				fmt.Fprintln(out, "hint     the server answered like an ordinary website: the key= (or id=) in the link is not this bridge's, or the address is the website's, not the bridge's")
			}
		}
		return err
	}
	defer sess.Close()
	if err := sess.WaitProven(ctx); err != nil {
		fmt.Fprintf(out, "FAILED   %v\n", err)
		return err
	}
	fmt.Fprintf(out, "ok       TLS 1.3 handshake and server proof in %v\n", time.Since(start).Round(time.Millisecond))

	addr, err := transport.ParseAddr(target)
	if err != nil {
		return err
	}
	start = time.Now()
	st, err := sess.OpenStream(ctx, transport.Request{Command: transport.CmdConnect, Addr: addr})
	var se *transport.StatusError
	switch {
	case err == nil:
		st.Close()
		fmt.Fprintf(out, "ok       stream to %s opened through the bridge in %v\n", target, time.Since(start).Round(time.Millisecond))
	case errors.As(err, &se):
		// The tunnel worked: the bridge answered.
		fmt.Fprintf(out, "ok       round trip through the tunnel in %v; the bridge could not open %s: %s\n",
			time.Since(start).Round(time.Millisecond), target, se.Status)
	default:
		fmt.Fprintf(out, "FAILED   opening a stream: %v\n", err)
		return err
	}
	fmt.Fprintln(out, "the bridge works")
	return nil
}

func fpName(fp string) string {
	if fp == "" {
		return "chrome"
	}
	return fp
}

// clockSkew asks the server's website for its Date header and returns how
// far it is from this computer's clock. It asks as the link's browser
// would (transport.BrowserRequest): a check must not show the bridge's
// address a hello no browser sends.
func clockSkew(ctx context.Context, l *link.Link) (time.Duration, bool) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	host := l.ServerName
	if host == "" {
		host, _, _ = net.SplitHostPort(l.Address)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/", nil)
	if err != nil {
		return 0, false
	}
	req.Host = host
	req.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36")
	resp, _, err := transport.BrowserRequest(ctx, nil, l.Address, l.Params, nil, req)
	if err != nil {
		return 0, false
	}
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return 0, false
	}
	return date.Sub(time.Now()), true
}
