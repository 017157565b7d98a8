package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"
)

// chainCertificate returns a leaf and its CA's certificate (coverChain),
// as a site with a CA's certificate sends them.
func chainCertificate(t testing.TB) tls.Certificate {
	certFile, keyFile := coverChain(t, t.TempDir())
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// coverChain writes a chain like a CA-issued site's: an RSA-2048 leaf for
// testSNI with names and extensions, issued by an ECDSA P-384
// intermediate, issued by a root that is not sent. It returns the PEM
// files nginx takes (leaf and intermediate in one file).
func coverChain(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"Test CA"}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
	}
	root, inter := ca(1, "Test Root"), ca(2, "Test Intermediate")
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(rootDER)
	interDER, err := x509.CreateCertificate(rand.Reader, inter, root, &interKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ = x509.ParseCertificate(interDER)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: testSNI},
		DNSNames:  []string{testSNI, "example.com", "static.example.com"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		OCSPServer: []string{"http://ocsp.example.net"}, IssuingCertificateURL: []string{"http://ca.example.net/inter.crt"},
		CRLDistributionPoints: []string{"http://ca.example.net/inter.crl"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, inter, &leafKey.PublicKey, interKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(leafKey)
	certFile, keyFile = filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: interDER})...)
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// startNginx runs nginx on loopback with TLS 1.3 and HTTP/2, with extra
// directives in its server block, and returns its address. The test is
// skipped where nginx is not installed.
func startNginx(t *testing.T, extra string) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		t.Skip("nginx is not installed")
	}
	dir := t.TempDir()
	certFile, keyFile := coverChain(t, dir)
	www := filepath.Join(dir, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("<html><body>nginx cover site</body></html>\n"), 0o644)
	// A port from the kernel, released for nginx: another process may
	// take it in between, and then nginx fails to start and we say so.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := fmt.Sprintf(`
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server {
        listen %[2]s ssl http2;
        server_name %[3]s;
        ssl_certificate %[4]s;
        ssl_certificate_key %[5]s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %[6]s;
        %[7]s
    }
}
`, dir, addr, testSNI, certFile, keyFile, www, extra)
	confFile := filepath.Join(dir, "nginx.conf")
	os.WriteFile(confFile, []byte(conf), 0o644)
	cmd := exec.Command(bin, "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", confFile, "-g", "daemon off; master_process off;")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %s\n%s", out.String(), log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("nginx did not start listening")
		}
	}
}

// wireRecord is one TLS record seen on the wire.
type wireRecord struct {
	fromServer bool
	typ        byte
	len        int
	head       []byte // the body's first bytes
}

func (r wireRecord) String() string {
	dir := "C"
	if r.fromServer {
		dir = "S"
	}
	return fmt.Sprintf("%s%d:%d", dir, r.typ, r.len)
}

// wireTap records the TLS records a client's connection carries, both
// ways.
type wireTap struct {
	net.Conn
	mu      sync.Mutex
	in, out recordParser
	records []wireRecord
}

type recordParser struct {
	hdr  []byte
	body []byte
	left int
}

func (p *recordParser) feed(b []byte, fromServer bool, emit func(wireRecord)) {
	for len(b) > 0 {
		if p.left > 0 {
			k := min(p.left, len(b))
			if len(p.body) < 256 {
				p.body = append(p.body, b[:min(k, 256-len(p.body))]...)
			}
			p.left -= k
			b = b[k:]
			if p.left == 0 {
				emit(wireRecord{fromServer, p.hdr[0], int(binary.BigEndian.Uint16(p.hdr[3:])), p.body})
				p.hdr, p.body = nil, nil
			}
			continue
		}
		k := min(5-len(p.hdr), len(b))
		p.hdr = append(p.hdr, b[:k]...)
		b = b[k:]
		if len(p.hdr) == 5 {
			p.left = int(binary.BigEndian.Uint16(p.hdr[3:]))
		}
	}
}

func (w *wireTap) Read(b []byte) (int, error) {
	n, err := w.Conn.Read(b)
	w.mu.Lock()
	w.in.feed(b[:n], true, func(r wireRecord) { w.records = append(w.records, r) })
	w.mu.Unlock()
	return n, err
}

func (w *wireTap) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.out.feed(b, false, func(r wireRecord) { w.records = append(w.records, r) })
	w.mu.Unlock()
	return w.Conn.Write(b)
}

func (w *wireTap) snapshot() []wireRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]wireRecord(nil), w.records...)
}

// splitHandshake returns the server's records up to its Finished (the
// fourth encrypted one), the client's before it, and the lengths of the
// encrypted records that follow, each direction apart.
func splitHandshake(recs []wireRecord) (hs, clientHS []wireRecord, afterS, afterC []int) {
	enc := 0
	done := false
	for _, r := range recs {
		switch {
		case r.fromServer && !done:
			hs = append(hs, r)
			if r.typ == 23 {
				if enc++; enc == handshakeRecords {
					done = true
				}
			}
		case r.fromServer:
			afterS = append(afterS, r.len)
		case done:
			afterC = append(afterC, r.len)
		default:
			clientHS = append(clientHS, r)
		}
	}
	return hs, clientHS, afterS, afterC
}

// serverHello reads a ServerHello handshake message (type 2, its 4-byte
// header included), or its first bytes: whether it is a
// HelloRetryRequest, its suite, and its extensions by type, each cut to
// what b holds. ok is false when b is no ServerHello.
func serverHello(b []byte) (hrr bool, suite uint16, exts map[uint16][]byte, ok bool) {
	// handshake header 4, version 2, random 32, session_id, suite 2,
	// compression 1, extensions length 2, extensions
	if len(b) < 4+2+32+1 || b[0] != 2 {
		return false, 0, nil, false
	}
	hrr = [32]byte(b[6:38]) == helloRetryRandom
	p := 38 + 1 + int(b[38])
	if len(b) < p+2 {
		return hrr, 0, nil, false
	}
	suite = binary.BigEndian.Uint16(b[p:])
	p += 2 + 1 + 2
	exts = map[uint16][]byte{}
	for p+4 <= len(b) {
		typ, n := binary.BigEndian.Uint16(b[p:]), int(binary.BigEndian.Uint16(b[p+2:]))
		exts[typ] = b[p+4 : min(p+4+n, len(b))]
		p += 4 + n
	}
	return hrr, suite, exts, true
}

// keyShareGroup returns the group of a ServerHello's key_share, 0 if it
// has none.
func keyShareGroup(exts map[uint16][]byte) uint16 {
	if ks := exts[0x0033]; len(ks) >= 2 {
		return binary.BigEndian.Uint16(ks)
	}
	return 0
}

// serverHelloFacts reads a ServerHello record's random (HRR or not),
// suite and key_share group.
func serverHelloFacts(r wireRecord) (hrr bool, suite, group uint16) {
	hrr, suite, exts, _ := serverHello(r.head)
	return hrr, suite, keyShareGroup(exts)
}

// handshakeFacts describes the server's handshake records.
func handshakeFacts(hs []wireRecord) string {
	var parts []string
	for _, r := range hs {
		s := r.String()
		if r.typ == 22 {
			hrr, suite, group := serverHelloFacts(r)
			s += fmt.Sprintf("(hrr=%v suite=%#04x group=%#04x)", hrr, suite, group)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// TestCoverHandshakeShapes puts a cover-mode bridge in front of nginx
// configured three ways and checks that a genuine client's handshake
// (everything the server sends up to its Finished: HelloRetryRequest,
// ServerHello with suite and group, the four encrypted records) has the
// sizes of a Chrome visit to nginx itself. It logs, and does not check,
// the records after the handshake (the openings, faceshape.go's) and the
// client's, which are the client's side's to match.
func TestCoverHandshakeShapes(t *testing.T) {
	for _, tc := range []struct{ name, conf string }{
		{"default", ""},
		// OpenSSL's own TLS 1.3 order puts AES-256-GCM first.
		{"server-ciphers", "ssl_prefer_server_ciphers on; ssl_ciphers ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256;"},
		{"secp384r1", "ssl_ecdh_curve secp384r1;"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cover := startNginx(t, tc.conf)
			b := startBridge(t, &CoverFace{Address: cover}, echoHandler, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			// A real visit: Chrome's hello, its HTTP/2 opening, the
			// front page.
			wantHS, wantCH, wantS, wantC := splitHandshake(chromeVisit(ctx, t, cover))

			// Wait until the bridge has learned the cover (both
			// probes), then open a tunnel.
			for b.server.coverTLS.Load() == nil || b.server.shape.Load() == nil {
				select {
				case <-ctx.Done():
					t.Fatal("the bridge never learned its cover")
				case <-time.After(20 * time.Millisecond):
				}
			}
			_, tunnel := dialTapped(ctx, t, b.clientConfig())
			// The openings follow the handshake at once; wait for as
			// many as the visit had (they are logged, not checked).
			gotHS, gotCH, gotS, gotC := splitHandshake(tunnel.snapshot())
			for wait := time.Now().Add(2 * time.Second); len(gotS) < len(wantS) && time.Now().Before(wait); {
				time.Sleep(10 * time.Millisecond)
				gotHS, gotCH, gotS, gotC = splitHandshake(tunnel.snapshot())
			}

			want, got := handshakeFacts(wantHS), handshakeFacts(gotHS)
			t.Logf("nginx:  %s", want)
			t.Logf("tunnel: %s", got)
			if got != want {
				t.Errorf("the tunnel's handshake differs from nginx's")
			}
			t.Logf("client's handshake records: nginx visit %v, tunnel %v", wantCH, gotCH)
			t.Logf("after the handshake, server: nginx %v, tunnel %v", wantS, gotS)
			t.Logf("after the handshake, client: nginx %v, tunnel %v", wantC, gotC)
		})
	}
}

// chromeVisit visits addr as Chromium does (the bridge's own visits:
// learnShape) and returns the records the visit carried, both ways.
func chromeVisit(ctx context.Context, t *testing.T, addr string) []wireRecord {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	visit := &wireTap{Conn: c}
	if _, err := learnShape(ctx, visit, testSNI, testSNI, 0); err != nil {
		t.Fatal(err)
	}
	return visit.snapshot()
}

// dialTapped opens a session with cfg and returns it with the record log
// of its first carrier. The session closes with the test.
func dialTapped(ctx context.Context, t *testing.T, cfg *ClientConfig) (*Session, *wireTap) {
	t.Helper()
	var tunnel *wireTap
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tunnel == nil {
			tunnel = &wireTap{Conn: c}
			return tunnel, nil
		}
		return c, nil
	}
	sess, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess, tunnel
}

// countingCover passes connections on to target and counts them: what the
// cover sees of the bridge.
func countingCover(t *testing.T, target string) (addr string, count func() int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				Relay(c, up)
			}()
		}
	}()
	return ln.Addr().String(), n.Load
}

// TestGenuineClientsOpenNoCoverConnection proves that a genuine client's
// connection to a cover-mode bridge makes the bridge open no connection
// to the cover (which the cover would see as an empty visit, one per
// tunnel), while a stranger's is passed to the cover as before.
func TestGenuineClientsOpenNoCoverConnection(t *testing.T) {
	t.Parallel()
	cover, count := countingCover(t, startPlainSite(t))
	// A delay no loaded test machine outlasts between a client's
	// connect and the last byte of its hello.
	b := startBridge(t, &CoverFace{Address: cover, DialDelay: 5 * time.Second}, echoHandler, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for b.server.coverTLS.Load() == nil || b.server.shape.Load() == nil {
		select {
		case <-ctx.Done():
			t.Fatal("the bridge never learned its cover")
		case <-time.After(20 * time.Millisecond):
		}
	}
	before := count() // the bridge's own visits to learn the cover
	for range 3 {
		sess, err := Dial(ctx, b.clientConfig())
		if err != nil {
			t.Fatal(err)
		}
		sess.Close()
	}
	// A stranger's visit, whose cover connection is accepted after any
	// the genuine clients' connections made (they came first).
	c, err := tls.Dial("tcp", b.addr, &tls.Config{ServerName: testSNI, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("a stranger's visit: %v", err)
	}
	c.Close()
	if got := count() - before; got != 1 {
		t.Fatalf("the cover saw %d connections for three genuine clients and one stranger; want 1 (the stranger's)", got)
	}
}

// TestTunnelLeafPaddedToEveryLength proves that the filler brings a
// tunnel's Certificate record to any length the cover's may have from a
// little above our bare leaf's on, across the lengths where the filler's
// DER lengths take another byte (128 and 256 bytes), and that the leaf
// stays bound to the key. (Not from our bare leaf's length itself: a
// P-256 leaf's tbsCertificate passes 255 bytes of content a few bytes
// above it, and DER has no encoding of the length in between; a CA's
// leaf, with names, policies and SCTs, is far longer.)
func TestTunnelLeafPaddedToEveryLength(t *testing.T) {
	t.Parallel()
	inter := make([]byte, 1000)
	var key [32]byte
	key[0] = 7
	pub, err := tunnelKey(keySpec{x509.ECDSA, 256})
	if err != nil {
		t.Fatal(err)
	}
	leaf1, err := boundLeaf(key, pub.Public(), 1, defaultSerialLen)
	if err != nil {
		t.Fatal(err)
	}
	minPadded := go13CertificateRecord([]int{len(leaf1), len(inter)})
	for want := 1300; want <= 2200; want += 3 {
		ct := &coverTLS{key: keySpec{x509.ECDSA, 256}, flight: []int{36, want, 100, 53}, chain: [][]byte{nil, inter}}
		if err := ct.prepare(); err != nil {
			t.Fatal(err)
		}
		if want < minPadded+40 {
			continue // only a few bytes over our bare leaf: no room for a filler
		}
		if !ct.padded {
			t.Fatalf("cannot pad to a %d-byte Certificate record", want)
		}
		cert, err := ct.certificate(key)
		if err != nil {
			t.Fatal(err)
		}
		if got := go13CertificateRecord([]int{len(cert.Certificate[0]), len(cert.Certificate[1])}); got != want {
			t.Fatalf("padded to a %d-byte record, want %d", got, want)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if (certCheck{key: &key}).verify(utls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}) != nil {
			t.Fatal("the padded leaf is not bound to the key")
		}
	}
}
