//go:build linux

package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// acmeDomain is the bridge's name in the ACME test. .test is reserved
// (RFC 6761): no real resolver answers for it, only the test's own.
const acmeDomain = "bridge.mirage.test"

// acmeCertLifetime is how long pebble's certificates last in the test.
// autocert renews a certificate when a third of its life is left, so a new
// one is due about 27 s after the first.
const acmeCertLifetime = 40

// validatedLog is what pebble 2.4 logs when a challenge passes.
const validatedLog = "set VALID by completed challenge"

// newAuthzLog is what pebble 2.4 logs when an order makes its n-th
// authorization.
func newAuthzLog(n int) string {
	return fmt.Sprintf("There are now %d authorizations in the db", n)
}

// TestACMESiteFace runs the face the README recommends, -domain, for the
// first time end to end (issue 11): pebble, an ACME test server, issues the
// bridge a certificate after checking TLS-ALPN-01 on the very port the
// bridge serves (pebble's tlsPort is the bridge's port, and the test's DNS
// server sends pebble there); an HTTPS client that trusts only pebble's
// root sees the site with that certificate; a Mirage client tunnels
// through the same port; and when the short-lived certificate is renewed
// (by TLS-ALPN-01 again, unless pebble reuses the authorization, which
// it does one time in a hundred), the bridge keeps
// serving both, and then serves the new certificate.
func TestACMESiteFace(t *testing.T) {
	curl := requirePeer(t, "curl")
	bridgeAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pb := startPebble(t, bridgeAddr)
	pebble, acmeRoot := pb.proc, pb.rootFile

	// The bridge asks for its certificate as soon as it listens.
	state := t.TempDir()
	bridge := startProc(t, "mirage-server", serverBin, nil,
		"-state", state, "-listen", bridgeAddr, "-log-level", "debug",
		"-domain", acmeDomain,
		"-acme-directory", pb.directory, "-acme-root", acmeRoot,
		"-allow-private")
	link := bridge.waitOutput(t, linkRE, 20*time.Second)
	bridge.waitOutput(t, regexp.MustCompile(`certificate ready.*name=`+regexp.QuoteMeta(acmeDomain)+`.*expires=(\S+)`), 60*time.Second)
	// Only TLS-ALPN-01 can have passed: nothing listens on pebble's
	// httpPort (HTTP-01) and the DNS server has no TXT records (DNS-01).
	if n := strings.Count(pebble.out.String(), validatedLog); n != 1 {
		t.Fatalf("pebble's log shows %d validated challenges, want 1:\n%s", n, tail(pebble.out.String(), 30))
	}

	// A browser-like client that trusts pebble's root and nothing else.
	root, rootFile := fetchPebbleRoot(t, pb.mgmtAddr, acmeRoot)
	first := fetchFace(t, bridgeAddr, root)
	t.Logf("first certificate: serial %x, %v to %v", first.SerialNumber, first.NotBefore, first.NotAfter)

	// A Mirage client on the same port, same certificate. The link
	// names the domain as its host, so that a client finds the bridge by
	// DNS as a browser does; only pebble's DNS knows the name, so the
	// test does the lookup and gives the client the address.
	if !strings.Contains(link, "@"+acmeDomain+":") || !strings.Contains(link, "sni="+acmeDomain) {
		t.Fatalf("link %s does not carry the domain as host and SNI", link)
	}
	link = strings.Replace(link, "@"+acmeDomain+":"+portOf(t, bridgeAddr), "@"+bridgeAddr, 1)
	_, proxy := startClientEnv(t, []string{"SSL_CERT_FILE=" + rootFile}, link)
	o := startOrigin(t, 1<<20)
	curlFetch(t, curl, o, "through the ACME bridge", proxy.curlSOCKS()...)

	// Renewal: keep visiting the site until it shows a new certificate.
	// Every visit meanwhile must succeed.
	deadline := time.Now().Add(time.Duration(acmeCertLifetime)*time.Second + 30*time.Second)
	var renewed *x509.Certificate
	for visits := 0; renewed == nil; visits++ {
		if time.Now().After(deadline) {
			t.Fatalf("no renewed certificate after %d visits: the first, serial %x, expires %v\npebble:\n%s",
				visits, first.SerialNumber, first.NotAfter, tail(pebble.out.String(), 30))
		}
		if c := fetchFace(t, bridgeAddr, root); c.SerialNumber.Cmp(first.SerialNumber) != 0 {
			renewed = c
		} else {
			time.Sleep(time.Second)
		}
	}
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewed certificate expires %v, not after the first's %v", renewed.NotAfter, first.NotAfter)
	}
	t.Logf("renewed certificate: serial %x, %v to %v", renewed.SerialNumber, renewed.NotBefore, renewed.NotAfter)
	if n := strings.Count(pebble.out.String(), validatedLog); n < 2 {
		// Pebble 2.4 reuses a valid authorization when rand.Intn(100) >
		// PEBBLE_AUTHZREUSE is false, so even at 0 one order in a hundred
		// gets the old one and nothing is validated. Only then may the
		// renewal have passed no challenge: its order made no new
		// authorization.
		if strings.Contains(pebble.out.String(), newAuthzLog(2)) {
			t.Fatalf("pebble's log shows %d validated challenges, want one for the first certificate and one for the renewal", n)
		}
		t.Logf("pebble reused the first authorization for the renewal (it does so 1 time in 100 even with PEBBLE_AUTHZREUSE=0): no second challenge to see")
	}
	// The session from before may have ended or not: either way streams
	// still go through.
	curlFetch(t, curl, o, "through the ACME bridge after renewal", proxy.curlSOCKS()...)
	_, proxy2 := startClientEnv(t, []string{"SSL_CERT_FILE=" + rootFile}, link)
	curlFetch(t, curl, o, "a new client after renewal", proxy2.curlSOCKS()...)
}

// TestACMEManagedMode: under tor, ServerTransportOptions domain=,
// acme-directory= and acme-root= give the same face: the bridge line names
// the domain, a visitor who trusts pebble's root sees the site with the
// certificate pebble issued after TLS-ALPN-01 on the bind port, and tor's
// client PT tunnels through the same port to the ORPort.
func TestACMEManagedMode(t *testing.T) {
	ext := startFakeExtORPort(t)
	port := freePort(t)
	bridgeAddr := fmt.Sprintf("127.0.0.1:%d", port)
	pb := startPebble(t, bridgeAddr)
	// Values escape ':', ';', '=' and '\' with a backslash, as the PT spec says.
	esc := strings.NewReplacer(`\`, `\\`, ":", `\:`, ";", `\;`, "=", `\=`).Replace
	server := startManaged(t, "mirage-server", serverBin, serverEnv(t, ext, port,
		"TOR_PT_SERVER_TRANSPORT_OPTIONS=mirage:domain="+acmeDomain+
			";mirage:acme-directory="+esc(pb.directory)+
			";mirage:acme-root="+esc(pb.rootFile)))
	server.waitOutput(t, regexp.MustCompile(`(?m)^SMETHODS DONE$`), 20*time.Second)
	m := smethodRE.FindStringSubmatch(server.stdout.String())
	if m == nil {
		t.Fatalf("no SMETHOD line with ARGS:\n%s", server.stdout.String())
	}
	args := m[2]
	if !strings.Contains(args, "sni="+acmeDomain) {
		t.Fatalf("SMETHOD ARGS %s do not send the domain as SNI", args)
	}

	// Under tor the first visitor's handshake waits for the certificate.
	root, rootFile := fetchPebbleRoot(t, pb.mgmtAddr, pb.rootFile)
	cert := fetchFace(t, bridgeAddr, root)
	if n := strings.Count(pb.proc.out.String(), validatedLog); n != 1 {
		t.Fatalf("pebble's log shows %d validated challenges, want 1", n)
	}
	t.Logf("certificate: serial %x, %v to %v", cert.SerialNumber, cert.NotBefore, cert.NotAfter)

	if strings.Contains(args, "pin=") {
		t.Fatalf("SMETHOD ARGS %s pin the ACME certificate, which is renewed with new keys", args)
	}
	client := startManaged(t, "mirage-client", clientBin, clientEnv(t, "SSL_CERT_FILE="+rootFile))
	client.waitOutput(t, regexp.MustCompile(`(?m)^CMETHODS DONE$`), 20*time.Second)
	cm := cmethodRE.FindStringSubmatch(client.stdout.String())
	if cm == nil {
		t.Fatalf("no CMETHOD line:\n%s", client.stdout.String())
	}
	c, rep := socksConnectWithArgs(t, cm[1], bridgeAddr, smethodArgsToSOCKS(args))
	if rep != 0 {
		t.Fatalf("SOCKS reply %d through the ACME bridge", rep)
	}
	defer c.Close()
	data := []byte("through the ACME bridge to tor")
	go c.Write(data)
	got := make([]byte, len(data))
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(data) {
		t.Fatalf("echo from the ORPort through the bridge: %q, %v", got, err)
	}
}

// pebbleServer is a running pebble.
type pebbleServer struct {
	proc      *proc
	directory string // ACME directory URL
	mgmtAddr  string // management interface: /roots/0
	rootFile  string // PEM of the CA of pebble's own HTTPS, for -acme-root
}

// startPebble runs pebble on loopback, validating TLS-ALPN-01 challenges
// on bridgeAddr's port and resolving acmeDomain to 127.0.0.1 with a DNS
// server of the test's own. Its certificates last acmeCertLifetime seconds.
func startPebble(t *testing.T, bridgeAddr string) *pebbleServer {
	t.Helper()
	pebbleBin := requirePeer(t, "pebble")
	dir := t.TempDir()

	// Pebble's own HTTPS (ACME API and management) uses a certificate from
	// a CA made here; the bridge is told to trust it with -acme-root, as an
	// operator of a private ACME server would.
	rootFile := filepath.Join(dir, "acme-root.pem")
	pebbleCert, pebbleKey := writeLoopbackCA(t, dir, rootFile)

	dnsAddr := startDNS(t, acmeDomain)
	_, bridgePort, _ := net.SplitHostPort(bridgeAddr)
	acmeAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	mgmtAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	config := map[string]any{"pebble": map[string]any{
		"listenAddress":           acmeAddr,
		"managementListenAddress": mgmtAddr,
		"certificate":             pebbleCert,
		"privateKey":              pebbleKey,
		"httpPort":                freePort(t), // HTTP-01: nothing listens there
		"tlsPort":                 mustAtoi(t, bridgePort),
		"ocspResponderURL":        "",
		// Seconds; pebble 2.4 reads this field.
		"certificateValidityPeriod":      acmeCertLifetime,
		"externalAccountBindingRequired": false,
	}}
	configFile := filepath.Join(dir, "pebble.json")
	b, _ := json.Marshal(config)
	if err := os.WriteFile(configFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "pebble", pebbleBin, []string{
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after up to 15 s
		"PEBBLE_WFE_NONCEREJECT=0", // no random badNonce errors
		"PEBBLE_AUTHZREUSE=0",      // every order, renewals too, is validated afresh
	}, "-config", configFile, "-dnsserver", dnsAddr, "-strict=false")
	waitListening(t, acmeAddr, 20*time.Second)
	waitListening(t, mgmtAddr, 20*time.Second)
	p.waitOutput(t, regexp.MustCompile(`validity period of (\d+) seconds`), 10*time.Second)
	return &pebbleServer{proc: p, directory: "https://" + acmeAddr + "/dir", mgmtAddr: mgmtAddr, rootFile: rootFile}
}

// portOf returns the port of addr ("host:port").
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// fetchFace visits the bridge as https://acmeDomain/ trusting only root,
// checks it gets the site's page, and returns the certificate it was shown.
func fetchFace(t *testing.T, bridgeAddr string, root *x509.CertPool) *x509.Certificate {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: root, ServerName: acmeDomain},
		// The name resolves nowhere but in pebble's DNS: dial the bridge.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 10 * time.Second}
			return d.DialContext(ctx, "tcp", bridgeAddr)
		},
		TLSHandshakeTimeout: 15 * time.Second,
		DisableKeepAlives:   true,
		ForceAttemptHTTP2:   true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := client.Get("https://" + acmeDomain + "/")
	if err != nil {
		t.Fatalf("visiting the site with a client that trusts pebble's root: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	// No content was given: the site has no page, and answers as a Go
	// server with no handler does.
	if resp.StatusCode != http.StatusNotFound || string(body) != "404 page not found\n" {
		t.Fatalf("the site answered %s %q, want Go's bare 404", resp.Status, body)
	}
	leaf := resp.TLS.PeerCertificates[0]
	if err := leaf.VerifyHostname(acmeDomain); err != nil {
		t.Fatal(err)
	}
	return leaf
}

// fetchPebbleRoot gets the root pebble issues under (made afresh at every
// start) from its management interface. It also writes it to a PEM file,
// for a Mirage client's SSL_CERT_FILE: the client checks an ACME bridge's
// certificate against the system's roots, as a browser does, and Go reads
// them from there.
func fetchPebbleRoot(t *testing.T, mgmtAddr, trustFile string) (*x509.CertPool, string) {
	t.Helper()
	trust := x509.NewCertPool()
	pemBytes, err := os.ReadFile(trustFile)
	if err != nil {
		t.Fatal(err)
	}
	trust.AppendCertsFromPEM(pemBytes)
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: trust}},
		Timeout:   15 * time.Second,
	}
	resp, err := client.Get("https://" + mgmtAddr + "/roots/0")
	if err != nil {
		t.Fatalf("fetching pebble's root: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	root := x509.NewCertPool()
	if resp.StatusCode != http.StatusOK || !root.AppendCertsFromPEM(body) {
		t.Fatalf("pebble's /roots/0 answered %s %q, want a PEM certificate", resp.Status, body)
	}
	file := filepath.Join(t.TempDir(), "pebble-root.pem")
	if err := os.WriteFile(file, body, 0o644); err != nil {
		t.Fatal(err)
	}
	return root, file
}

// writeLoopbackCA makes a CA (written to caFile) and a certificate it signs
// for 127.0.0.1 and localhost, and returns the files of the latter.
func writeLoopbackCA(t *testing.T, dir, caFile string) (certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mirage test ACME server CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "pebble-cert.pem"), filepath.Join(dir, "pebble-key.pem")
	for file, block := range map[string]*pem.Block{
		caFile:   {Type: "CERTIFICATE", Bytes: caDER},
		certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile:  {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// startDNS answers DNS queries over UDP on loopback: A 127.0.0.1 for name,
// no records of other types for it, NXDOMAIN for every other name. It is
// all the resolver pebble needs to find the bridge for its challenge.
func startDNS(t *testing.T, name string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed by the cleanup
			}
			if resp := dnsAnswer(buf[:n], name); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

// dnsAnswer builds the reply to one query (RFC 1035 §4.1), or nil for a
// message it cannot parse.
func dnsAnswer(q []byte, name string) []byte {
	const headerLen = 12
	if len(q) < headerLen || binary.BigEndian.Uint16(q[4:]) != 1 || q[2]&0x80 != 0 {
		return nil // a reply, or not exactly one question
	}
	// The question name: labels up to the root label.
	var labels []string
	i := headerLen
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i:i+l]))
		i += l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype, qclass := binary.BigEndian.Uint16(q[i:]), binary.BigEndian.Uint16(q[i+2:])
	question := q[headerLen : i+4]
	known := strings.EqualFold(strings.Join(labels, "."), name)

	resp := make([]byte, headerLen, headerLen+len(question)+16)
	copy(resp, q[:2])                       // id
	resp[2] = 0x84 | q[2]&0x01              // response, authoritative, recursion desired as asked
	resp[3] = 0x80                          // recursion available, no error
	binary.BigEndian.PutUint16(resp[4:], 1) // one question
	if !known {
		resp[3] |= 3 // NXDOMAIN
	}
	const typeA, classIN = 1, 1
	answer := known && qtype == typeA && qclass == classIN
	if answer {
		binary.BigEndian.PutUint16(resp[6:], 1)
	}
	resp = append(resp, question...)
	if answer {
		resp = append(resp,
			0xc0, headerLen, // the name: a pointer to the question's
			0, typeA, 0, classIN,
			0, 0, 0, 60, // TTL
			0, 4, 127, 0, 0, 1)
	}
	return resp
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
