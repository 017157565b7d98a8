//go:build linux

package integration_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// managedProc is a PT process started the way tor starts one: environment,
// stdin pipe (closing it must end the process), stdout read as protocol.
type managedProc struct {
	*proc
	stdin   io.WriteCloser
	stdout  *syncBuffer
	logFile string // where -log sends the process's log
}

func startManaged(t *testing.T, name, bin string, env []string) *managedProc {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "pt.log")
	cmd := exec.Command(bin, "-log-level", "debug", "-log", logFile)
	// Only what tor sets, plus PATH and HOME: nothing leaks from the test's environment.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := &syncBuffer{}
	stderr := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, out: stdout, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		stdin.Close()
		p.stop()
		if t.Failed() {
			t.Logf("---- %s stdout ----\n%s\n---- stderr ----\n%s", name, stdout.String(), stderr.String())
		}
		if s := stderr.String(); s != "" {
			// Tor does not read a PT's stderr: nothing may be written there.
			t.Errorf("%s wrote to stderr in managed mode:\n%s", name, s)
		}
		// Stdout is tor's: every line must be a line of the PT protocol.
		for _, line := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
			if line != "" && !ptLineRE.MatchString(line) {
				t.Errorf("%s wrote a non-protocol line to stdout: %q", name, line)
			}
		}
	})
	return &managedProc{proc: p, stdin: stdin, stdout: stdout, logFile: logFile}
}

// fakeExtORPort is tor's Extended ORPort as the PT sees it: it checks
// SAFE_COOKIE authentication, records USERADDR and TRANSPORT, and then
// behaves as an ORPort that echoes.
type fakeExtORPort struct {
	ln     net.Listener
	cookie []byte
	path   string

	mu        sync.Mutex
	userAddrs []string
	transport []string
	authFails int
}

const cookieHeader = "! Extended ORPort Auth Cookie !\x0a"

func startFakeExtORPort(t *testing.T) *fakeExtORPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeExtORPort{ln: ln, cookie: make([]byte, 32), path: filepath.Join(t.TempDir(), "extended_orport_auth_cookie")}
	rand.Read(f.cookie)
	if err := os.WriteFile(f.path, append([]byte(cookieHeader), f.cookie...), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return f
}

func (f *fakeExtORPort) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := f.handshake(c); err != nil {
		f.mu.Lock()
		f.authFails++
		f.mu.Unlock()
		return
	}
	c.SetDeadline(time.Time{})
	io.Copy(c, c) // the "ORPort": echo
}

func (f *fakeExtORPort) handshake(c net.Conn) error {
	c.Write([]byte{1, 0}) // auth types: SAFE_COOKIE, end
	var typ [1]byte
	if _, err := io.ReadFull(c, typ[:]); err != nil || typ[0] != 1 {
		return errors.New("bad auth type")
	}
	clientNonce := make([]byte, 32)
	if _, err := io.ReadFull(c, clientNonce); err != nil {
		return err
	}
	serverNonce := make([]byte, 32)
	rand.Read(serverNonce)
	mac := func(label string) []byte {
		h := hmac.New(sha256.New, f.cookie)
		h.Write([]byte(label))
		h.Write(clientNonce)
		h.Write(serverNonce)
		return h.Sum(nil)
	}
	c.Write(append(mac("ExtORPort authentication server-to-client hash"), serverNonce...))
	clientHash := make([]byte, 32)
	if _, err := io.ReadFull(c, clientHash); err != nil {
		return err
	}
	if !hmac.Equal(clientHash, mac("ExtORPort authentication client-to-server hash")) {
		c.Write([]byte{0})
		return errors.New("bad client hash")
	}
	c.Write([]byte{1})
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return err
		}
		cmd, n := binary.BigEndian.Uint16(hdr[:2]), binary.BigEndian.Uint16(hdr[2:])
		body := make([]byte, n)
		if _, err := io.ReadFull(c, body); err != nil {
			return err
		}
		f.mu.Lock()
		switch cmd {
		case 0x0001:
			f.userAddrs = append(f.userAddrs, string(body))
		case 0x0002:
			f.transport = append(f.transport, string(body))
		}
		f.mu.Unlock()
		if cmd == 0x0000 { // DONE
			c.Write([]byte{0x10, 0x00, 0, 0}) // OKAY
			return nil
		}
	}
}

// serverEnv is the environment tor gives a server PT: one mirage
// bindaddr on port, an ExtORPort (ext) with its cookie, exit on stdin
// close, plus extra.
func serverEnv(t *testing.T, ext *fakeExtORPort, port int, extra ...string) []string {
	return append([]string{
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION=" + t.TempDir(),
		"TOR_PT_SERVER_TRANSPORTS=mirage",
		fmt.Sprintf("TOR_PT_SERVER_BINDADDR=mirage-127.0.0.1:%d", port),
		"TOR_PT_EXTENDED_SERVER_PORT=" + ext.ln.Addr().String(),
		"TOR_PT_AUTH_COOKIE_FILE=" + ext.path,
		"TOR_PT_EXIT_ON_STDIN_CLOSE=1",
	}, extra...)
}

// clientEnv is the environment tor gives a client PT asking for mirage,
// plus extra.
func clientEnv(t *testing.T, extra ...string) []string {
	return append([]string{
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION=" + t.TempDir(),
		"TOR_PT_CLIENT_TRANSPORTS=mirage",
		"TOR_PT_EXIT_ON_STDIN_CLOSE=1",
	}, extra...)
}

var (
	ptLineRE  = regexp.MustCompile(`^(VERSION|VERSION-ERROR|ENV-ERROR|CMETHOD|CMETHOD-ERROR|CMETHODS|SMETHOD|SMETHOD-ERROR|SMETHODS|PROXY|PROXY-ERROR|LOG|STATUS) `)
	smethodRE = regexp.MustCompile(`(?m)^SMETHOD mirage (127\.0\.0\.1:\d+) ARGS:(\S+)$`)
	cmethodRE = regexp.MustCompile(`(?m)^CMETHOD mirage socks5 (127\.0\.0\.1:\d+)$`)
)

// parseSmethodArgs turns "key=…,sni=…" (with goptlib's escaping) into the
// SOCKS username tor would send: "key=…;sni=…".
func smethodArgsToSOCKS(args string) string {
	return strings.ReplaceAll(args, ",", ";")
}

// socksConnectWithArgs is what tor does for a bridge: SOCKS5 with the
// bridge-line arguments as user name (and a NUL password when they fit).
func socksConnectWithArgs(t *testing.T, socksAddr, target, args string) (net.Conn, byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", socksAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	c.Write([]byte{5, 1, 2})
	var r [2]byte
	if _, err := io.ReadFull(c, r[:]); err != nil || r[1] != 2 {
		t.Fatalf("SOCKS method: %v % x", err, r)
	}
	user, pass := args, "\x00"
	if len(user) > 255 {
		user, pass = args[:255], args[255:]
	}
	auth := append([]byte{1, byte(len(user))}, user...)
	auth = append(append(auth, byte(len(pass))), pass...)
	c.Write(auth)
	if _, err := io.ReadFull(c, r[:]); err != nil || r[1] != 0 {
		t.Fatalf("SOCKS auth: %v % x", err, r)
	}
	host, portStr, _ := net.SplitHostPort(target)
	var port uint16
	fmt.Sscan(portStr, &port)
	req := append([]byte{5, 1, 0, 1}, net.ParseIP(host).To4()...)
	req = binary.BigEndian.AppendUint16(req, port)
	c.Write(req)
	rep := make([]byte, 10)
	if _, err := io.ReadFull(c, rep); err != nil {
		t.Fatalf("SOCKS reply: %v", err)
	}
	c.SetDeadline(time.Time{})
	return c, rep[1]
}

// TestManagedMode proves both binaries speak tor's managed-proxy protocol:
// the stdout lines tor expects (VERSION, SMETHOD … ARGS:, CMETHOD, DONE),
// data from a SOCKS connection carrying bridge-line args through the
// bridge to the ExtORPort (authenticated, with USERADDR and TRANSPORT),
// the bridge line file in obfs4's shape, nothing on stderr, and exit when
// stdin closes.
func TestManagedMode(t *testing.T) {
	ext := startFakeExtORPort(t)
	serverState := t.TempDir()
	bindPort := freePort(t)
	server := startManaged(t, "mirage-server", serverBin, []string{
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION=" + serverState,
		"TOR_PT_SERVER_TRANSPORTS=mirage",
		fmt.Sprintf("TOR_PT_SERVER_BINDADDR=mirage-127.0.0.1:%d", bindPort),
		"TOR_PT_ORPORT=127.0.0.1:1", // must not be used: the ExtORPort is given
		"TOR_PT_EXTENDED_SERVER_PORT=" + ext.ln.Addr().String(),
		"TOR_PT_AUTH_COOKIE_FILE=" + ext.path,
		"TOR_PT_EXIT_ON_STDIN_CLOSE=1",
		"TOR_PT_SERVER_TRANSPORT_OPTIONS=mirage:sni=www.example.com",
	})
	server.waitOutput(t, regexp.MustCompile(`(?m)^SMETHODS DONE$`), 20*time.Second)
	m := smethodRE.FindStringSubmatch(server.stdout.String())
	if m == nil {
		t.Fatalf("no SMETHOD line with ARGS:\n%s", server.stdout.String())
	}
	bridgeAddr, args := m[1], m[2]
	if !strings.Contains(args, "key=") || !strings.Contains(args, "sni=www.example.com") {
		t.Fatalf("SMETHOD ARGS lack key or sni: %s", args)
	}
	for _, want := range []string{"VERSION 1", `STATUS TYPE=version IMPLEMENTATION="mirage-server"`} {
		if !strings.Contains(server.stdout.String(), want) {
			t.Errorf("server stdout lacks %q", want)
		}
	}
	bl, err := os.ReadFile(filepath.Join(serverState, "mirage_bridgeline.txt"))
	if err != nil {
		t.Fatal(err)
	}
	blRE := regexp.MustCompile(fmt.Sprintf(`(?m)^Bridge mirage <IP ADDRESS>:%d <FINGERPRINT> key=\S+ sni=www\.example\.com`, bindPort))
	if !blRE.Match(bl) {
		t.Fatalf("bridge line file is not in obfs4's shape:\n%s", bl)
	}

	client := startManaged(t, "mirage-client", clientBin, []string{
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION=" + t.TempDir(),
		"TOR_PT_CLIENT_TRANSPORTS=mirage,obfs4",
		"TOR_PT_EXIT_ON_STDIN_CLOSE=1",
	})
	client.waitOutput(t, regexp.MustCompile(`(?m)^CMETHODS DONE$`), 20*time.Second)
	cm := cmethodRE.FindStringSubmatch(client.stdout.String())
	if cm == nil {
		t.Fatalf("no CMETHOD line:\n%s", client.stdout.String())
	}
	if !regexp.MustCompile(`(?m)^CMETHOD-ERROR obfs4 `).MatchString(client.stdout.String()) {
		t.Errorf("no CMETHOD-ERROR for the method we do not provide:\n%s", client.stdout.String())
	}

	// Two streams, as tor would open for two circuits' channels.
	for i := range 2 {
		c, rep := socksConnectWithArgs(t, cm[1], bridgeAddr, smethodArgsToSOCKS(args))
		if rep != 0 {
			t.Fatalf("SOCKS reply %d", rep)
		}
		data := bytes.Repeat([]byte{byte(i)}, 100000)
		go c.Write(data)
		got := make([]byte, len(data))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("echo through the bridge: %v", err)
		}
		c.Close()
	}
	ext.mu.Lock()
	users, transports, fails := ext.userAddrs, ext.transport, ext.authFails
	ext.mu.Unlock()
	if fails != 0 || len(users) != 2 || len(transports) != 2 || transports[0] != "mirage" {
		t.Fatalf("ExtORPort saw USERADDR %v TRANSPORT %v, %d auth failures", users, transports, fails)
	}
	if !strings.HasPrefix(users[0], "127.0.0.1:") {
		t.Fatalf("USERADDR %q is not the client's address", users[0])
	}

	// A bad bridge line: the SOCKS request fails and tor gets a LOG line.
	_, rep := socksConnectWithArgs(t, cm[1], bridgeAddr, "key=notakey;sni=www.example.com")
	if rep == 0 {
		t.Fatal("a bridge line with a bad key was granted")
	}
	client.waitOutput(t, regexp.MustCompile(`(?m)^LOG SEVERITY=error MESSAGE=".*key`), 5*time.Second)

	// Closing stdin ends both, as tor exiting would.
	for _, p := range []*managedProc{client, server} {
		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still running 10 s after stdin closed", p.name)
		}
	}
	// The debug logs name no address, though clients came and went.
	for _, p := range []*managedProc{client, server} {
		log, err := os.ReadFile(p.logFile)
		if err != nil || len(log) == 0 {
			t.Fatalf("%s wrote no log to -log: %v", p.name, err)
		}
		checkNoAddresses(t, string(log))
	}
}

// TestManagedBadOption proves a bad ServerTransportOptions value is
// reported to tor as SMETHOD-ERROR with a message that names it.
func TestManagedBadOption(t *testing.T) {
	ext := startFakeExtORPort(t)
	server := startManaged(t, "mirage-server", serverBin,
		serverEnv(t, ext, freePort(t), "TOR_PT_SERVER_TRANSPORT_OPTIONS=mirage:colour=blue"))
	line := server.waitOutput(t, regexp.MustCompile(`(?m)^(SMETHOD-ERROR mirage .*)$`), 20*time.Second)
	if !strings.Contains(line, "colour") {
		t.Fatalf("SMETHOD-ERROR does not name the bad option: %s", line)
	}
}

// startSOCKS5Proxy runs a minimal SOCKS5 proxy (no auth, CONNECT only) on
// loopback, standing in for the upstream proxy of a user behind one, and
// counts the connections it carried.
func startSOCKS5Proxy(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	var carried atomic.Int32
	addr := serveEach(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 262)
		if _, err := io.ReadFull(c, buf[:2]); err != nil {
			return
		}
		io.ReadFull(c, buf[:buf[1]])
		c.Write([]byte{5, 0})
		if _, err := io.ReadFull(c, buf[:4]); err != nil || buf[1] != 1 || buf[3] != 1 {
			return
		}
		io.ReadFull(c, buf[:6])
		target := net.JoinHostPort(net.IP(buf[:4]).String(), fmt.Sprint(binary.BigEndian.Uint16(buf[4:6])))
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
			return
		}
		defer up.Close()
		c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0})
		c.SetDeadline(time.Time{})
		carried.Add(1)
		go io.Copy(up, c)
		io.Copy(c, up)
	})
	return addr, &carried
}

// TestManagedUpstreamProxy proves the client honours TOR_PT_PROXY: it
// answers PROXY DONE and reaches the bridge through a SOCKS5 proxy; and a
// proxy scheme it does not support is a PROXY-ERROR, not a silent direct
// connection.
func TestManagedUpstreamProxy(t *testing.T) {
	ext := startFakeExtORPort(t)
	server := startManaged(t, "mirage-server", serverBin, serverEnv(t, ext, freePort(t)))
	server.waitOutput(t, regexp.MustCompile(`(?m)^SMETHODS DONE$`), 20*time.Second)
	m := smethodRE.FindStringSubmatch(server.stdout.String())
	if m == nil {
		t.Fatalf("no SMETHOD line:\n%s", server.stdout.String())
	}
	proxy, carried := startSOCKS5Proxy(t)
	client := startManaged(t, "mirage-client", clientBin, clientEnv(t, "TOR_PT_PROXY=socks5://"+proxy))
	client.waitOutput(t, regexp.MustCompile(`(?m)^CMETHODS DONE$`), 20*time.Second)
	if !strings.Contains(client.stdout.String(), "PROXY DONE") {
		t.Fatalf("no PROXY DONE:\n%s", client.stdout.String())
	}
	cm := cmethodRE.FindStringSubmatch(client.stdout.String())
	c, rep := socksConnectWithArgs(t, cm[1], m[1], smethodArgsToSOCKS(m[2]))
	if rep != 0 {
		t.Fatalf("SOCKS reply %d", rep)
	}
	defer c.Close()
	c.Write([]byte("through the upstream proxy"))
	got := make([]byte, 26)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "through the upstream proxy" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if carried.Load() == 0 {
		t.Fatal("the bridge was reached without the upstream proxy")
	}

	bad := startManaged(t, "mirage-client (bad proxy)", clientBin, clientEnv(t, "TOR_PT_PROXY=socks4a://"+proxy))
	bad.waitOutput(t, regexp.MustCompile(`(?m)^PROXY-ERROR .*socks4a`), 20*time.Second)
}

// TestManagedDefaultFace: a bridge under tor with no ServerTransportOptions
// (what most operators run) hands tor no server name and no "localhost"
// (older versions made every such bridge say sni=localhost, one DPI rule
// away from all of them), presents a certificate that names no localhost,
// tells the operator in tor's own log what a strong face needs, and tor's
// client PT reaches tor's ExtORPort through it with the arguments tor
// publishes.
func TestManagedDefaultFace(t *testing.T) {
	ext := startFakeExtORPort(t)
	port := freePort(t)
	env := serverEnv(t, ext, port)
	server := startManaged(t, "mirage-server", serverBin, env)
	server.waitOutput(t, regexp.MustCompile(`(?m)^SMETHODS DONE$`), 20*time.Second)
	m := smethodRE.FindStringSubmatch(server.stdout.String())
	if m == nil {
		t.Fatalf("no SMETHOD line with ARGS:\n%s", server.stdout.String())
	}
	if strings.Contains(m[2], "localhost") || regexp.MustCompile(`sni=[^,]`).MatchString(m[2]) {
		t.Fatalf("SMETHOD ARGS name a server name: %s", m[2])
	}
	if !regexp.MustCompile(`(?m)^LOG SEVERITY=warning MESSAGE=".*-domain NAME`).MatchString(server.stdout.String()) {
		t.Fatalf("tor's log is not told what a strong face needs:\n%s", server.stdout.String())
	}
	var state string
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "TOR_PT_STATE_LOCATION="); ok {
			state = v
		}
	}
	bl, err := os.ReadFile(filepath.Join(state, "mirage_bridgeline.txt"))
	if err != nil || strings.Contains(string(bl), "localhost") {
		t.Fatalf("bridge line file: %v\n%s", err, bl)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", m[1], &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if bytes.Contains(bytes.ToLower(leaf.Raw), []byte("localhost")) {
		t.Fatalf("the face's certificate names localhost: %s %v", leaf.Subject, leaf.DNSNames)
	}

	client := startManaged(t, "mirage-client", clientBin, clientEnv(t))
	client.waitOutput(t, regexp.MustCompile(`(?m)^CMETHODS DONE$`), 20*time.Second)
	cm := cmethodRE.FindStringSubmatch(client.stdout.String())
	c, rep := socksConnectWithArgs(t, cm[1], m[1], smethodArgsToSOCKS(m[2]))
	if rep != 0 {
		t.Fatalf("SOCKS reply %d", rep)
	}
	defer c.Close()
	c.Write([]byte("no server name"))
	got := make([]byte, 14)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "no server name" {
		t.Fatalf("echo: %q %v", got, err)
	}
}
