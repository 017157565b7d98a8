package pt

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/mirage-pt/mirage/transport"
)

// DialFunc opens a connection, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ProxyDialer returns a DialFunc that reaches addresses through the upstream
// proxy tor gives in TOR_PT_PROXY: socks5://[user:pass@]host:port or
// http://[user:pass@]host:port (HTTP CONNECT). Other schemes are an error
// to report with pt.ProxyError.
func ProxyDialer(u *url.URL) (DialFunc, error) {
	if u.Host == "" {
		return nil, errors.New("proxy URL has no host")
	}
	switch u.Scheme {
	case "socks5":
		return func(ctx context.Context, network, address string) (net.Conn, error) {
			return dialSOCKS5(ctx, u, address)
		}, nil
	case "http":
		return func(ctx context.Context, network, address string) (net.Conn, error) {
			return dialHTTPConnect(ctx, u, address)
		}, nil
	}
	return nil, fmt.Errorf("proxy scheme %q is not supported (use socks5 or http)", u.Scheme)
}

// proxyConn dials the proxy itself and bounds the proxy handshake by ctx.
func proxyConn(ctx context.Context, u *url.URL) (net.Conn, func(), error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream proxy: %w", err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	c.SetDeadline(dl)
	return c, func() { c.SetDeadline(time.Time{}) }, nil
}

func dialSOCKS5(ctx context.Context, u *url.URL, address string) (net.Conn, error) {
	dst, err := transport.ParseAddr(address)
	if err != nil {
		return nil, err
	}
	c, clear, err := proxyConn(ctx, u)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Conn, error) {
		c.Close()
		return nil, fmt.Errorf("upstream SOCKS5 proxy: %w", err)
	}
	user := u.User.Username()
	pass, _ := u.User.Password()
	methods := []byte{5, 1, 0}
	if user != "" {
		methods = []byte{5, 1, 2}
	}
	if _, err := c.Write(methods); err != nil {
		return fail(err)
	}
	var resp [2]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return fail(err)
	}
	if resp[0] != 5 || resp[1] != methods[2] {
		return fail(errors.New("proxy refused our authentication method"))
	}
	if resp[1] == 2 {
		if len(user) > 255 || len(pass) > 255 {
			return fail(errors.New("user name or password longer than 255 bytes"))
		}
		b := append([]byte{1, byte(len(user))}, user...)
		b = append(append(b, byte(len(pass))), pass...)
		if _, err := c.Write(b); err != nil {
			return fail(err)
		}
		if _, err := io.ReadFull(c, resp[:]); err != nil {
			return fail(err)
		}
		if resp[1] != 0 {
			return fail(errors.New("proxy refused the user name and password"))
		}
	}
	// The module's one SOCKS5 address codec encodes the destination
	// and reads the proxy's bound address.
	req, err := dst.AppendBinary([]byte{5, 1, 0})
	if err != nil {
		return fail(err)
	}
	if _, err := c.Write(req); err != nil {
		return fail(err)
	}
	var hdr [3]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fail(err)
	}
	if hdr[1] != 0 {
		return fail(fmt.Errorf("proxy answered code %d", hdr[1]))
	}
	if _, err := transport.ReadAddr(c); err != nil {
		return fail(fmt.Errorf("reading the bound address: %w", err))
	}
	clear()
	return c, nil
}

func dialHTTPConnect(ctx context.Context, u *url.URL, address string) (net.Conn, error) {
	c, clear, err := proxyConn(ctx, u)
	if err != nil {
		return nil, err
	}
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: address},
		Host:   address,
		Header: make(http.Header),
	}
	if user := u.User.Username(); user != "" {
		pass, _ := u.User.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	}
	if err := req.Write(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("upstream HTTP proxy: %w", err)
	}
	// Read the response byte by byte-bounded through a small reader; any
	// bytes after the header belong to the tunnel, and a CONNECT response
	// has no body, so a bufio.Reader must not swallow them: check.
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("upstream HTTP proxy: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("upstream HTTP proxy answered %s", resp.Status)
	}
	if br.Buffered() > 0 {
		c.Close()
		return nil, errors.New("upstream HTTP proxy sent data before the tunnel was open")
	}
	clear()
	return c, nil
}
