//go:build linux

package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strconv"
	"time"
)

// The baselines run in child processes (this binary re-executed with
// -role), so that their CPU time and RSS are measured from /proc exactly as
// for Mirage's and shadowsocks's binaries, apart from the load generator.

// runRole runs a child role until killed, listening on listen (a free
// loopback port when empty). It prints its listen address as the first line
// on stdout. The tls-server role presents the certificate in the PEM files
// certFile and keyFile, or a P-256 one of its own when they are empty.
func runRole(role, upstream, listen, certFile, keyFile string) error {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	var handle func(net.Conn)
	switch role {
	case "direct":
		// A SOCKS5 relay that dials the requested address (or upstream,
		// the delay line in front of the target, when given).
		handle = func(c net.Conn) {
			target, err := socksAccept(c)
			if err != nil {
				c.Close()
				return
			}
			if upstream != "" {
				target = upstream
			}
			relay(c, target, nil, "")
		}
	case "tls-front":
		// SOCKS5 front: one TLS connection to the TLS server per stream,
		// carrying the target as a length-prefixed string.
		cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "bench.invalid"} // a loopback benchmark, not a security test
		handle = func(c net.Conn) {
			target, err := socksAccept(c)
			if err != nil {
				c.Close()
				return
			}
			relay(c, upstream, cfg, target)
		}
	case "tls-server":
		cert, err := roleCertificate(certFile, keyFile)
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
		handle = func(c net.Conn) {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var n [1]byte
			if _, err := io.ReadFull(c, n[:]); err != nil {
				c.Close()
				return
			}
			addr := make([]byte, n[0])
			if _, err := io.ReadFull(c, addr); err != nil {
				c.Close()
				return
			}
			c.SetReadDeadline(time.Time{})
			relay(c, string(addr), nil, "")
		}
	default:
		return fmt.Errorf("unknown -role %q", role)
	}
	fmt.Println(ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go handle(c)
	}
}

// relay dials target (over TLS when cfg is set, then sends inner as the
// destination) and copies both ways.
func relay(c net.Conn, target string, cfg *tls.Config, inner string) {
	defer c.Close()
	d := net.Dialer{Timeout: 10 * time.Second}
	u, err := d.Dial("tcp", target)
	if err != nil {
		return
	}
	if cfg != nil {
		tc := tls.Client(u, cfg)
		if _, err := tc.Write(append([]byte{byte(len(inner))}, inner...)); err != nil {
			tc.Close()
			return
		}
		u = tc
	}
	defer u.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		closeWrite(u)
		close(done)
	}()
	io.Copy(c, u)
	closeWrite(c)
	<-done
}

func closeWrite(c net.Conn) {
	switch c := c.(type) {
	case *net.TCPConn:
		c.CloseWrite()
	case *tls.Conn:
		c.CloseWrite()
	}
}

// roleCertificate loads the certificate and key in the PEM files, or makes
// a self-signed P-256 one when no files are given.
func roleCertificate(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" && keyFile == "" {
		return selfSigned()
	}
	return tls.LoadX509KeyPair(certFile, keyFile)
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		DNSNames:     []string{"bench.invalid"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// socksAccept does the server side of a SOCKS5 CONNECT without
// authentication and answers success at once (the relay then dials; a
// failure closes the connection, as Mirage's fast-open does).
func socksAccept(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	r := bufio.NewReader(c) // the client waits for each answer, so nothing is buffered past the request
	h := make([]byte, 2)
	if _, err := io.ReadFull(r, h); err != nil || h[0] != 5 {
		return "", errors.New("not SOCKS5")
	}
	if _, err := io.ReadFull(r, make([]byte, h[1])); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte{5, 0}); err != nil {
		return "", err
	}
	req := make([]byte, 4)
	if _, err := io.ReadFull(r, req); err != nil || req[1] != 1 {
		return "", errors.New("not CONNECT")
	}
	var host string
	switch req[3] {
	case 1:
		a := make([]byte, 4)
		if _, err := io.ReadFull(r, a); err != nil {
			return "", err
		}
		host = net.IP(a).String()
	case 3:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return "", err
		}
		a := make([]byte, n[0])
		if _, err := io.ReadFull(r, a); err != nil {
			return "", err
		}
		host = string(a)
	default:
		return "", errors.New("address type not supported")
	}
	var p [2]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return "", err
	}
	if _, err := c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(p[:])))), nil
}

// socksAuth is an RFC 1929 user name and password for the SOCKS5 handshake.
type socksAuth struct{ user, pass string }

// socksConnect does the client side of a SOCKS5 CONNECT to target on c,
// waiting for each answer as ordinary applications do. With auth set it
// offers only user/password authentication (the way a pluggable transport's
// per-connection arguments are passed).
func socksConnect(c net.Conn, target string, auth *socksAuth) error {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host).To4()
	if ip == nil {
		return fmt.Errorf("SOCKS5 target %q: want an IPv4 address", target)
	}
	pn, _ := strconv.Atoi(port)
	method := byte(0)
	if auth != nil {
		method = 2
	}
	if _, err := c.Write([]byte{5, 1, method}); err != nil {
		return err
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil || m[1] != method {
		return fmt.Errorf("SOCKS5 method answer: %v %v", m, err)
	}
	if auth != nil {
		if len(auth.user) > 255 || len(auth.pass) > 255 {
			return errors.New("SOCKS5 user name or password longer than 255 bytes")
		}
		req := append([]byte{1, byte(len(auth.user))}, auth.user...)
		req = append(append(req, byte(len(auth.pass))), auth.pass...)
		if _, err := c.Write(req); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, m[:]); err != nil || m[1] != 0 {
			return fmt.Errorf("SOCKS5 user/password refused: %v %v", m, err)
		}
	}
	req := append([]byte{5, 1, 0, 1}, ip...)
	req = binary.BigEndian.AppendUint16(req, uint16(pn))
	if _, err := c.Write(req); err != nil {
		return err
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:4]); err != nil || rep[1] != 0 {
		return fmt.Errorf("SOCKS5 CONNECT: reply %d %v", rep[1], err)
	}
	n := 6
	switch rep[3] {
	case 4:
		n = 18
	case 3:
		var l [1]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return err
		}
		n = int(l[0]) + 2
	}
	_, err = io.ReadFull(c, make([]byte, n))
	return err
}
