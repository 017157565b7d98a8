package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirage-pt/mirage/transport"
	"github.com/mirage-pt/mirage/transport/link"
)

// leafOf parses the certificate a site face presents.
func leafOf(t *testing.T, f *face) *x509.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(f.site.TLSConfig.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// get answers GET path with h as a recorded response.
func get(h http.Handler, path string) *http.Response {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Result()
}

// TestDefaultBridgesDiffer: bridges with no face flags share nothing a
// censor could match on. Each bridge's self-signed certificate names its
// own address (CN and subjectAltName IP) and no "localhost"; across
// bridges at one and the same address the key type, validity, age,
// subject layout and serial length vary, validities run whole years and
// no certificate starts "an hour ago"; and there is no built-in page: "/"
// answers exactly as a Go server with no handler does (404 page not
// found). On the old code every bridge presented an ECDSA certificate for
// "localhost" from now−1h for exactly 365 days and served the same
// 278-byte page.
func TestDefaultBridgesDiffer(t *testing.T) {
	ip := net.ParseIP("192.0.2.44").To4()
	type shape struct{ key, subject, validity string }
	shapes := map[shape]bool{}
	keyTypes, validities, subjects, serialLens := map[string]bool{}, map[string]bool{}, map[string]bool{}, map[int]bool{}
	var starts []time.Time
	now := time.Now()
	for i := range 30 {
		f, err := buildFace(faceOptions{}, t.TempDir(), ip)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.names, []string{""}) {
			t.Fatalf("default face accepts server names %q, want only none", f.names)
		}
		leaf := leafOf(t, f)
		if bytes.Contains(bytes.ToLower(leaf.Raw), []byte("localhost")) {
			t.Fatalf("bridge %d: certificate carries \"localhost\"", i)
		}
		if leaf.Subject.CommonName != ip.String() || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(ip) || len(leaf.DNSNames) != 0 {
			t.Fatalf("bridge %d: certificate for CN %q, IPs %v, names %v; want the bridge's address %s",
				i, leaf.Subject.CommonName, leaf.IPAddresses, leaf.DNSNames, ip)
		}
		if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
			t.Fatalf("bridge %d: not self-signed: %v", i, err)
		}
		age := now.Sub(leaf.NotBefore)
		if age < 24*time.Hour || age > 3*366*24*time.Hour {
			t.Fatalf("bridge %d: certificate made %v ago, want days to years", i, age)
		}
		years := 0
		for y := 1; y <= 10; y++ {
			if leaf.NotBefore.AddDate(y, 0, 0).Equal(leaf.NotAfter) {
				years = y
			}
		}
		if years == 0 || leaf.NotAfter.Before(now.Add(29*24*time.Hour)) {
			t.Fatalf("bridge %d: valid %v to %v, want whole years (1 to 10) ending at least a month from now", i, leaf.NotBefore, leaf.NotAfter)
		}
		if leaf.IsCA && (len(leaf.SubjectKeyId) != 20 || !bytes.Equal(leaf.AuthorityKeyId, leaf.SubjectKeyId)) {
			t.Fatalf("bridge %d: openssl-style certificate with subject key id %x, authority key id %x; want the same SHA-1 in both",
				i, leaf.SubjectKeyId, leaf.AuthorityKeyId)
		}
		var key string
		switch k := leaf.PublicKey.(type) {
		case *rsa.PublicKey:
			key = fmt.Sprintf("RSA %d", k.N.BitLen())
		case *ecdsa.PublicKey:
			key = "ECDSA " + k.Curve.Params().Name
		}
		if key != "RSA 2048" && key != "ECDSA P-256" {
			t.Fatalf("bridge %d: key %s, want RSA 2048 or ECDSA P-256", i, key)
		}
		subject := leaf.Subject.String()
		if o := leaf.Subject.Organization; len(o) == 1 && strings.HasPrefix(o[0], "OpenWrt") {
			subject = strings.Replace(subject, o[0], "OpenWrt…", 1) // the random part is per bridge
		}
		s := shape{key, subject, fmt.Sprint(years)}
		shapes[s] = true
		keyTypes[key], subjects[subject], validities[s.validity] = true, true, true
		serialLens[(leaf.SerialNumber.BitLen()+7)/8] = true
		starts = append(starts, leaf.NotBefore)

		// No page of its own.
		for _, path := range []string{"/", "/index.html", "/favicon.ico"} {
			got, want := get(f.site.Handler, path), get(http.NewServeMux(), path)
			gotBody, _ := io.ReadAll(got.Body)
			wantBody, _ := io.ReadAll(want.Body)
			if got.StatusCode != want.StatusCode || !bytes.Equal(gotBody, wantBody) || !maps(got.Header, want.Header) {
				t.Fatalf("bridge %d: GET %s = %d %v %q, want what a Go server with no handler gives: %d %v %q",
					i, path, got.StatusCode, got.Header, gotBody, want.StatusCode, want.Header, wantBody)
			}
		}
	}
	if len(keyTypes) < 2 || len(validities) < 2 || len(subjects) < 2 || len(serialLens) < 2 || len(shapes) < 5 {
		t.Fatalf("30 bridges show too few shapes of certificate: keys %v, validities %v, subjects %v, serial lengths %v, %d shapes",
			keyTypes, validities, subjects, serialLens, len(shapes))
	}
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	if len(slices.Compact(starts)) != len(starts) {
		t.Fatal("two bridges' certificates start at the same second")
	}
}

func maps(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// TestSelfSignedKept: the certificate stays the same across restarts (a
// device's does), is made anew when the bridge's address changes, and
// names no address when none is known. A bridge whose state holds the
// "localhost" certificate of older versions replaces it, and keeps
// accepting clients that send "localhost" (their links say so) while
// telling the operator to hand out the new link.
func TestSelfSignedKept(t *testing.T) {
	dir := t.TempDir()
	ip := net.ParseIP("198.51.100.9").To4()
	first, err := buildFace(faceOptions{}, dir, ip)
	if err != nil {
		t.Fatal(err)
	}
	again, err := buildFace(faceOptions{}, dir, ip)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(leafOf(t, first).Raw, leafOf(t, again).Raw) {
		t.Fatal("the self-signed certificate changed at a restart")
	}
	moved, err := buildFace(faceOptions{}, dir, net.ParseIP("198.51.100.10"))
	if err != nil {
		t.Fatal(err)
	}
	if l := leafOf(t, moved); l.Subject.CommonName != "198.51.100.10" || !l.IPAddresses[0].Equal(net.ParseIP("198.51.100.10")) {
		t.Fatalf("after the address changed the certificate names %q %v", l.Subject.CommonName, l.IPAddresses)
	}
	unknown, err := buildFace(faceOptions{}, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := leafOf(t, unknown); len(l.IPAddresses) != 0 || l.Subject.CommonName == "" || strings.Contains(l.Subject.CommonName, "localhost") {
		t.Fatalf("with no address known the certificate names %q %v", l.Subject.CommonName, l.IPAddresses)
	}

	// An older bridge's state: its localhost certificate.
	old := t.TempDir()
	cert, err := transport.SelfSignedCertificate([]string{"localhost"}, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	os.WriteFile(filepath.Join(old, selfSignedKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.WriteFile(filepath.Join(old, selfSignedCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644)
	for range 2 { // and again after a restart
		f, err := buildFace(faceOptions{}, old, ip)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.names, []string{"", "localhost"}) {
			t.Fatalf("upgraded bridge accepts %q, want no name (new links) and localhost (old ones)", f.names)
		}
		if bytes.Contains(leafOf(t, f).Raw, []byte("localhost")) {
			t.Fatal("upgraded bridge still presents the localhost certificate")
		}
		if !slices.ContainsFunc(f.warnings, func(w string) bool { return strings.Contains(w, "new link") }) {
			t.Fatalf("no warning about old links: %q", f.warnings)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runBridge runs a standalone bridge with args (a fresh -state and
// -listen 127.0.0.1:0 come first) until the test ends, and returns its
// state directory, its log and what it printed, once it serves.
func runBridge(t *testing.T, args ...string) (dir string, logBuf, out *syncBuffer) {
	t.Helper()
	dir = t.TempDir()
	c, err := parseFlags(append([]string{"-state", dir, "-listen", "127.0.0.1:0"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logBuf, out = &syncBuffer{}, &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, out, slog.New(slog.NewTextHandler(logBuf, nil))) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("bridge still running 10 s after its context ended")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logBuf.String(), "bridge running") {
		if time.Now().After(deadline) {
			t.Fatalf("bridge did not start:\n%s", logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return dir, logBuf, out
}

// TestDefaultBridgeNoLocalhost runs a standalone bridge with no face flags
// and reads what it hands out: the link and bridge line carry no sni and
// no "localhost", the link's address is the listen address, the
// certificate a visitor sees names that address, and the log says in one
// line what a strong face needs. On the old code the link said
// sni=localhost and the certificate was for localhost.
func TestDefaultBridgeNoLocalhost(t *testing.T) {
	dir, logBuf, out := runBridge(t)
	linkText, _ := os.ReadFile(filepath.Join(dir, linkFile))
	bridgeLine, _ := os.ReadFile(filepath.Join(dir, bridgeLineFile))
	for name, text := range map[string]string{"link": string(linkText), "bridge line": string(bridgeLine), "output": out.String()} {
		if strings.Contains(text, "localhost") || strings.Contains(text, "sni=") {
			t.Errorf("%s names a server name:\n%s", name, text)
		}
	}
	l, err := link.Parse(string(linkText))
	if err != nil || l.ServerName != "" || !strings.HasPrefix(l.Address, "127.0.0.1:") {
		t.Fatalf("link %q: %+v, %v; want the listen address and no sni", linkText, l, err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Address, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if leaf.Subject.CommonName != "127.0.0.1" || len(leaf.IPAddresses) != 1 || bytes.Contains(leaf.Raw, []byte("localhost")) {
		t.Fatalf("visitor sees a certificate for %q %v %v", leaf.Subject.CommonName, leaf.IPAddresses, leaf.DNSNames)
	}
	// The certificate is self-signed: the link and the bridge line pin
	// it, so that clients accept it and no other.
	if pin := link.SPKIPin(leaf.RawSubjectPublicKeyInfo); l.Pin != pin || !strings.Contains(string(bridgeLine), "pin="+pin.String()) {
		t.Fatalf("link pin %s, bridge line %q; want the served certificate's pin %s in both", l.Pin, bridgeLine, pin)
	}
	var advice []string
	for _, line := range strings.Split(logBuf.String(), "\n") {
		if strings.Contains(line, "-domain NAME") {
			advice = append(advice, line)
		}
	}
	if len(advice) != 1 {
		t.Fatalf("the log has %d lines telling the operator about -domain, want 1:\n%s", len(advice), logBuf.String())
	}
}

// TestDomainLink: with -domain the link's host is the domain name, not the
// machine's address, so that a client reaches the bridge by looking the
// name up, as a browser does (and follows the name when the address
// changes); -link-host still wins. The bridge is run for real, with an
// ACME directory on loopback that refuses (the certificate is not what
// this test is about). On the old code the link named the listen address.
func TestDomainLink(t *testing.T) {
	dir, logBuf, out := runBridge(t, "-domain", "Bridge.Example.com", "-acme-directory", "https://127.0.0.1:1/directory")
	// The bridge asks for its certificate as it starts, writing to its
	// state directory: wait until that has failed, so that nothing
	// writes there as the test ends.
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logBuf.String(), "could not get a certificate"); {
		if time.Now().After(deadline) {
			t.Fatalf("the certificate request did not fail within 20 s:\n%s", logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	linkText, _ := os.ReadFile(filepath.Join(dir, linkFile))
	l, err := link.Parse(string(linkText))
	if err != nil {
		t.Fatal(err)
	}
	if host, _, _ := net.SplitHostPort(l.Address); host != "bridge.example.com" || l.ServerName != "bridge.example.com" {
		t.Fatalf("-domain bridge's link %s: host %s, sni %q; want the domain for both", linkText, l.Address, l.ServerName)
	}
	if !l.Pin.IsZero() {
		t.Fatalf("-domain bridge's link %s has a pin: its ACME certificate is renewed with new keys", linkText)
	}
	if !strings.Contains(out.String(), l.String()) {
		t.Fatalf("printed link is not the file's:\n%s", out.String())
	}
	listen := &net.TCPAddr{IP: net.IPv4zero, Port: 443}
	if got := linkAddress("192.0.2.1", "bridge.example.com", listen); got != "192.0.2.1:443" {
		t.Errorf("-link-host with -domain: link address %s, want 192.0.2.1:443", got)
	}
	if got := linkAddress("", "", listen); hostIP(got) == nil {
		t.Errorf("no -domain, no -link-host: link address %s, want this machine's IP", got)
	}
}

// TestOperatorCertificatePin: an operator's certificate (-cert) that no
// system root vouches for (self-signed here) is pinned in the links, as
// the bridge's own self-signed one is; a cover face has no pin (its
// tunnel's certificate is bound to each client's key).
func TestOperatorCertificatePin(t *testing.T) {
	dir := t.TempDir()
	cert, err := transport.SelfSignedCertificate([]string{"bridge.example.net"}, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644)
	f, err := buildFace(faceOptions{certFile: certPath, keyFile: keyPath}, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	if want := link.SPKIPin(leaf.RawSubjectPublicKeyInfo); f.pin != want {
		t.Fatalf("-cert with a self-signed certificate: pin %s, want %s", f.pin, want)
	}
	cover, err := buildFace(faceOptions{cover: "www.example.org:443"}, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cover.pin.IsZero() {
		t.Fatalf("cover face has pin %s, want none", cover.pin)
	}
}
