package pt

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
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
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("bad port in %q", address)
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
	req := []byte{5, 1, 0}
	if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
		req = append(append(req, 1), ip.To4()...)
	} else if ip != nil {
		req = append(append(req, 4), ip.To16()...)
	} else {
		if len(host) > 255 {
			return fail(errors.New("host name too long"))
		}
		req = append(append(req, 3, byte(len(host))), host...)
	}
	req = binary.BigEndian.AppendUint16(req, uint16(port))
	if _, err := c.Write(req); err != nil {
		return fail(err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fail(err)
	}
	if hdr[1] != 0 {
		return fail(fmt.Errorf("proxy answered code %d", hdr[1]))
	}
	skip := 0
	switch hdr[3] {
	case 1:
		skip = 4 + 2
	case 4:
		skip = 16 + 2
	case 3:
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return fail(err)
		}
		skip = int(n[0]) + 2
	default:
		return fail(fmt.Errorf("proxy answered address type %d", hdr[3]))
	}
	if _, err := io.CopyN(io.Discard, c, int64(skip)); err != nil {
		return fail(err)
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
