package transporttest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport/link"
)

// StartTCPEcho runs a TCP echo server on 127.0.0.1 that half-closes after
// echoing everything, each connection bounded by timeout, and returns its
// address. It stops, and waits for its goroutines, when the test ends.
func StartTCPEcho(t testing.TB, timeout time.Duration) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(timeout))
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

// RSACertificate returns a self-signed RSA-2048 certificate for names.
// Tests that compare two servers' handshakes use RSA because RSA-PSS
// signatures have a fixed length (ECDSA's vary by a byte), so the two give
// records of the same sizes.
func RSACertificate(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// Pin returns the pin (link.Params.Pin) of cert's leaf: what a bridge
// with this self-signed certificate puts in its links, and what a client
// of a test site face needs to accept it.
func Pin(t testing.TB, cert tls.Certificate) link.Pin {
	t.Helper()
	if len(cert.Certificate) == 0 {
		t.Fatal("transporttest.Pin: certificate has no DER")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return link.SPKIPin(leaf.RawSubjectPublicKeyInfo)
}
