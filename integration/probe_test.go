//go:build linux

package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/transporttest"
)

const faceName = "www.example.com"

// writeCert writes a self-signed certificate for faceName and returns the
// file paths (RSA, so that handshakes compare; see
// transporttest.RSACertificate).
func writeCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	cert := transporttest.RSACertificate(t, faceName)
	der, priv := cert.Certificate[0], cert.PrivateKey
	keyDER, _ := x509.MarshalPKCS8PrivateKey(priv)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

// startNginx runs a real nginx on loopback with TLS and HTTP/2, serving a
// small static site, as the site a cover-mode bridge borrows.
func startNginx(t *testing.T) string {
	t.Helper()
	bin := requirePeer(t, "nginx")
	certFile, keyFile := writeCert(t)
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("<html><body>nginx cover site</body></html>\n"), 0o644)
	port := freePort(t)
	conf := fmt.Sprintf(`
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server {
        listen 127.0.0.1:%[2]d ssl http2;
        server_name %[3]s;
        ssl_certificate %[4]s;
        ssl_certificate_key %[5]s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %[6]s;
    }
}
`, dir, port, faceName, certFile, keyFile, www)
	confFile := filepath.Join(dir, "nginx.conf")
	os.WriteFile(confFile, []byte(conf), 0o644)
	startProc(t, "nginx", bin, nil, "-p", dir, "-c", confFile, "-g", "daemon off;")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, addr, 10*time.Second)
	return addr
}

// tlsProbe is a TLS client visit; it reports what the visitor learns.
func tlsProbe(addr string, cfg *tls.Config, get bool) string {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return "handshake: " + err.Error()
	}
	st := tc.ConnectionState()
	sum := sha256.Sum256(st.PeerCertificates[0].Raw)
	desc := fmt.Sprintf("version %x alpn %q cipher %x cert %s", st.Version, st.NegotiatedProtocol, st.CipherSuite, hex.EncodeToString(sum[:8]))
	if !get {
		return desc
	}
	if st.NegotiatedProtocol == "h2" {
		tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/")
		if err != nil {
			return desc + " get: " + err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%s get %s %s server=%q body=%q", desc, resp.Proto, resp.Status, resp.Header.Get("Server"), body)
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", faceName)
	resp, _ := io.ReadAll(tc)
	return desc + " get " + stripDate(string(resp))
}

// stripDate removes the Date header, the one thing two answers a second
// apart may differ in.
func stripDate(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\r\n") {
		if !strings.HasPrefix(strings.ToLower(l), "date:") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\r\n")
}

// recordingProxy forwards one connection to target and keeps the first
// bytes the client sent (its ClientHello).
func recordingProxy(t *testing.T, target string) (addr string, hello func() []byte) {
	t.Helper()
	var mu sync.Mutex
	var first []byte
	addr = serveEach(t, func(c net.Conn) {
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		buf := make([]byte, 16384)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := c.Read(buf)
		c.SetReadDeadline(time.Time{})
		mu.Lock()
		if first == nil {
			first = bytes.Clone(buf[:n])
		}
		mu.Unlock()
		up.Write(buf[:n])
		transport.Relay(c, up)
	})
	return addr, func() []byte {
		mu.Lock()
		defer mu.Unlock()
		return first
	}
}

// genuineHello records a ClientHello that a real mirage-client sent and
// the bridge accepted, by putting a recording proxy in front of the bridge.
func genuineHello(t *testing.T, b *bridge) []byte {
	t.Helper()
	proxyAddr, hello := recordingProxy(t, b.addr)
	link := strings.Replace(b.link, "@"+b.addr, "@"+proxyAddr, 1)
	out, err := runCmd(t, 40*time.Second, clientBin, "check", "-target", "127.0.0.1:1", link)
	if err != nil {
		t.Fatalf("mirage-client check through the recorder: %v\n%s", err, out)
	}
	h := hello()
	if len(h) < 100 || h[0] != 0x16 {
		t.Fatalf("recorded %d bytes, not a ClientHello", len(h))
	}
	return h
}

// probeBattery sends every probe to the bridge and to the face alone, and
// fails on any difference in what comes back or how the connection ends.
func probeBattery(t *testing.T, b *bridge, direct string) {
	hello := genuineHello(t, b)
	flipped := bytes.Clone(hello)
	flipped[len(flipped)/2] ^= 0x01
	tlsCases := map[string]*tls.Config{
		"tls13":     {ServerName: faceName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		"tls12":     {ServerName: faceName, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12},
		"alpn-h2":   {ServerName: faceName, InsecureSkipVerify: true, NextProtos: []string{"h2"}},
		"other-sni": {ServerName: "other.example.net", InsecureSkipVerify: true},
	}
	for name, cfg := range tlsCases {
		t.Run(name, func(t *testing.T) {
			viaBridge, alone := tlsProbe(b.addr, cfg, false), tlsProbe(direct, cfg, false)
			if viaBridge != alone {
				t.Errorf("bridge: %s\nalone:  %s", viaBridge, alone)
			}
		})
	}
	for _, alpn := range []string{"h2", "http/1.1"} {
		t.Run("https-get-"+alpn, func(t *testing.T) {
			cfg := &tls.Config{ServerName: faceName, InsecureSkipVerify: true, NextProtos: []string{alpn}}
			viaBridge, alone := tlsProbe(b.addr, cfg, true), tlsProbe(direct, cfg, true)
			if viaBridge != alone {
				t.Errorf("bridge: %s\nalone:  %s", viaBridge, alone)
			}
		})
	}
	// A SYN that asks for Multipath TCP: Go's listeners accept it by
	// default (since Go 1.24) and answer MP_CAPABLE, which nginx, Apache
	// and most web servers never do, so one packet would tell them apart.
	// (Where the kernel has no MPTCP, both sides answer as plain TCP.)
	t.Run("mptcp-syn", func(t *testing.T) {
		viaBridge, alone := transporttest.AgreesToMultipath(t, b.addr), transporttest.AgreesToMultipath(t, direct)
		if viaBridge != alone {
			t.Errorf("a SYN asking for Multipath TCP: the bridge agreed %v, the face alone %v", viaBridge, alone)
		}
	})
	raw := map[string][]byte{
		"plain-http":         []byte("GET / HTTP/1.1\r\nHost: " + faceName + "\r\n\r\n"),
		"silence":            nil,
		"lone-record-header": {0x16, 0x03, 0x01, 0x02, 0x00},
		"bad-tls-version":    {0x16, 0x07, 0x07, 0x00, 0x04, 1, 0, 0, 0},
		"replayed-hello":     hello,
		"flipped-hello":      flipped,
		"truncated-hello":    hello[:len(hello)/2],
	}
	for _, n := range []int{1, 7, 100, 517, 2000, 10000} {
		p := make([]byte, n)
		rand.Read(p)
		raw[fmt.Sprintf("random-%d", n)] = p
	}
	for name, data := range raw {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var viaBridge, alone transporttest.ProbeResult
			var errB, errA error
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); viaBridge, errB = transporttest.Probe(b.addr, data, 3*time.Second) }()
			go func() { defer wg.Done(); alone, errA = transporttest.Probe(direct, data, 3*time.Second) }()
			wg.Wait()
			if errB != nil || errA != nil {
				t.Fatal(errB, errA)
			}
			if viaBridge.Shape() != alone.Shape() {
				t.Errorf("bridge answered\n  %s\nthe face alone answered\n  %s", viaBridge.Shape(), alone.Shape())
			}
		})
	}
}

// TestProbesCoverNginx proves a cover-mode bridge in front of a real nginx
// answers every probe in the battery as nginx itself does.
func TestProbesCoverNginx(t *testing.T) {
	nginx := startNginx(t)
	b := startServer(t, "", "-cover", nginx, "-sni", faceName)
	probeBattery(t, b, nginx)
}

// TestProbesSiteUpstream proves a site-mode bridge (certificate files and
// -upstream) answers every probe as a plain Go HTTPS server with the same
// certificate, settings and upstream does.
func TestProbesSiteUpstream(t *testing.T) {
	upstream := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT")
		fmt.Fprintf(w, "upstream site: %s %s\n", r.Method, r.URL.Path)
	})}
	uln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go upstream.Serve(uln)
	t.Cleanup(func() { upstream.Close() })
	upURL := "http://" + uln.Addr().String()
	certFile, keyFile := writeCert(t)
	b := startServer(t, "", "-cert", certFile, "-key", keyFile, "-upstream", upURL)

	// The face alone: a plain Go HTTPS server, same certificate, settings
	// and upstream.
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(upURL)
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host }}
	plain := transport.NewSiteServer(proxy, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	// On a plain TCP listener, as a web server's (not Go's default,
	// which agrees to Multipath TCP): the mptcp-syn probe compares the
	// bridge with what a website answers.
	pln, err := transport.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go plain.ServeTLS(pln, "", "")
	t.Cleanup(func() { plain.Close() })
	probeBattery(t, b, pln.Addr().String())
}
